import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GenerateCodesRequest(_message.Message):
    __slots__ = ("brand_id", "count", "request_id", "code_length", "prefix", "expires_at")
    BRAND_ID_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    brand_id: str
    count: int
    request_id: str
    code_length: int
    prefix: str
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, brand_id: _Optional[str] = ..., count: _Optional[int] = ..., request_id: _Optional[str] = ..., code_length: _Optional[int] = ..., prefix: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GenerateCodesResponse(_message.Message):
    __slots__ = ("brand_id", "batch_id", "generated", "available")
    BRAND_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    GENERATED_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    brand_id: str
    batch_id: str
    generated: int
    available: int
    def __init__(self, brand_id: _Optional[str] = ..., batch_id: _Optional[str] = ..., generated: _Optional[int] = ..., available: _Optional[int] = ...) -> None: ...

class Claim(_message.Message):
    __slots__ = ("sequence", "brand_id", "code", "user_id", "email", "claimed_at", "expires_at")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    BRAND_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    CLAIMED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    brand_id: str
    code: str
    user_id: str
    email: str
    claimed_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, sequence: _Optional[int] = ..., brand_id: _Optional[str] = ..., code: _Optional[str] = ..., user_id: _Optional[str] = ..., email: _Optional[str] = ..., claimed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ClaimCodeRequest(_message.Message):
    __slots__ = ("brand_id", "user_id", "email")
    BRAND_ID_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    EMAIL_FIELD_NUMBER: _ClassVar[int]
    brand_id: str
    user_id: str
    email: str
    def __init__(self, brand_id: _Optional[str] = ..., user_id: _Optional[str] = ..., email: _Optional[str] = ...) -> None: ...

class ClaimCodeResponse(_message.Message):
    __slots__ = ("claim", "newly_claimed")
    CLAIM_FIELD_NUMBER: _ClassVar[int]
    NEWLY_CLAIMED_FIELD_NUMBER: _ClassVar[int]
    claim: Claim
    newly_claimed: bool
    def __init__(self, claim: _Optional[_Union[Claim, _Mapping]] = ..., newly_claimed: _Optional[bool] = ...) -> None: ...

class WatchClaimsRequest(_message.Message):
    __slots__ = ("brand_id", "after_sequence", "max_claims_per_response")
    BRAND_ID_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MAX_CLAIMS_PER_RESPONSE_FIELD_NUMBER: _ClassVar[int]
    brand_id: str
    after_sequence: int
    max_claims_per_response: int
    def __init__(self, brand_id: _Optional[str] = ..., after_sequence: _Optional[int] = ..., max_claims_per_response: _Optional[int] = ...) -> None: ...

class WatchClaimsResponse(_message.Message):
    __slots__ = ("claim", "claims")
    CLAIM_FIELD_NUMBER: _ClassVar[int]
    CLAIMS_FIELD_NUMBER: _ClassVar[int]
    claim: Claim
    claims: _containers.RepeatedCompositeFieldContainer[Claim]
    def __init__(self, claim: _Optional[_Union[Claim, _Mapping]] = ..., claims: _Optional[_Iterable[_Union[Claim, _Mapping]]] = ...) -> None: ...

class GetBrandStatsRequest(_message.Message):
    __slots__ = ("brand_id",)
    BRAND_ID_FIELD_NUMBER: _ClassVar[int]
    brand_id: str
    def __init__(self, brand_id: _Optional[str] = ...) -> None: ...

class GetBrandStatsResponse(_message.Message):
    __slots__ = ("brand_id", "total", "available", "claimed", "expired", "redeemed")
    BRAND_ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    CLAIMED_FIELD_NUMBER: _ClassVar[int]
    EXPIRED_FIELD_NUMBER: _ClassVar[int]
    REDEEMED_FIELD_NUMBER: _ClassVar[int]
    brand_id: str
    total: int
    available: int
    claimed: int
    expired: int
    redeemed: int
    def __init__(self, brand_id: _Optional[str] = ..., total: _Optional[int] = ..., available: _Optional[int] = ..., claimed: _Optional[int] = ..., expired: _Optional[int] = ..., redeemed: _Optional[int] = ...) -> None: ...

class Redemption(_message.Message):
    __slots__ = ("brand_id", "code", "user_id", "order_id", "redeemed_at", "cancelled_at")
    BRAND_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    REDEEMED_AT_FIELD_NUMBER: _ClassVar[int]
    CANCELLED_AT_FIELD_NUMBER: _ClassVar[int]
    brand_id: str
    code: str
    user_id: str
    order_id: str
    redeemed_at: _timestamp_pb2.Timestamp
    cancelled_at: _timestamp_pb2.Timestamp
    def __init__(self, brand_id: _Optional[str] = ..., code: _Optional[str] = ..., user_id: _Optional[str] = ..., order_id: _Optional[str] = ..., redeemed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., cancelled_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class RedeemCodeRequest(_message.Message):
    __slots__ = ("brand_id", "code", "user_id", "order_id")
    BRAND_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    brand_id: str
    code: str
    user_id: str
    order_id: str
    def __init__(self, brand_id: _Optional[str] = ..., code: _Optional[str] = ..., user_id: _Optional[str] = ..., order_id: _Optional[str] = ...) -> None: ...

class RedeemCodeResponse(_message.Message):
    __slots__ = ("redemption", "newly_redeemed")
    REDEMPTION_FIELD_NUMBER: _ClassVar[int]
    NEWLY_REDEEMED_FIELD_NUMBER: _ClassVar[int]
    redemption: Redemption
    newly_redeemed: bool
    def __init__(self, redemption: _Optional[_Union[Redemption, _Mapping]] = ..., newly_redeemed: _Optional[bool] = ...) -> None: ...

class CancelRedemptionRequest(_message.Message):
    __slots__ = ("brand_id", "code", "order_id")
    BRAND_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    brand_id: str
    code: str
    order_id: str
    def __init__(self, brand_id: _Optional[str] = ..., code: _Optional[str] = ..., order_id: _Optional[str] = ...) -> None: ...

class CancelRedemptionResponse(_message.Message):
    __slots__ = ("redemption",)
    REDEMPTION_FIELD_NUMBER: _ClassVar[int]
    redemption: Redemption
    def __init__(self, redemption: _Optional[_Union[Redemption, _Mapping]] = ...) -> None: ...
