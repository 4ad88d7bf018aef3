"""Claims to protobuf, and WatchClaims responses encoded by hand from per-claim pieces.

A watch stream's response is registered with a pass-through serializer: the servicer yields bytes
made here, so a claim that many watchers stream is encoded once, not once per watcher.
"""

from __future__ import annotations

import itertools

from discount.v1 import discount_service_pb2 as pb

from .models import Claim


def claim_to_proto(claim: Claim) -> pb.Claim:
    message = pb.Claim(
        sequence=claim.sequence,
        brand_id=claim.brand_id,
        code=claim.code,
        user_id=claim.user_id,
        email=claim.email,
    )
    message.claimed_at.FromDatetime(claim.claimed_at)
    if claim.expires_at is not None:
        message.expires_at.FromDatetime(claim.expires_at)
    return message


def _length_delimited(field_tag: int, payload: bytes) -> bytes:
    """One protobuf length-delimited field: tag, varint length, bytes."""
    size, length = len(payload), bytearray()
    while size > 0x7F:
        length.append((size & 0x7F) | 0x80)
        size >>= 7
    length.append(size)
    return bytes((field_tag,)) + bytes(length) + payload


class EncodedClaims:
    """Each claim encoded once and shared as bytes by every watcher that streams it: the feed
    hands all watchers of a brand the same Claim objects, so fan-out costs one protobuf encoding
    per event instead of one per watcher (docs/performance.md).

    Per claim it keeps two ready-made pieces of a WatchClaimsResponse: field 1 (`claim`, a whole
    response on its own) and one element of field 2 (`claims`); a batched response is just the
    concatenation of its claims' elements."""

    _CLAIM_TAG = 0x0A  # field 1, wire type 2
    _CLAIMS_TAG = 0x12  # field 2, wire type 2

    def __init__(self, size: int = 8192) -> None:
        self._size = size
        # id(claim) -> (claim, single, element); holding the claim keeps its id from being reused.
        self._entries: dict[int, tuple[Claim, bytes, bytes]] = {}
        self._last_batch: tuple[list[Claim], bytes] | None = None

    def _get(self, claim: Claim) -> tuple[Claim, bytes, bytes]:
        entry = self._entries.get(id(claim))
        if entry is not None and entry[0] is claim:
            return entry
        body = claim_to_proto(claim).SerializeToString()
        entry = (claim, _length_delimited(self._CLAIM_TAG, body), _length_delimited(self._CLAIMS_TAG, body))
        if len(self._entries) >= self._size:  # drop the oldest quarter (dicts keep insertion order)
            for key in list(itertools.islice(self._entries, self._size // 4)):
                del self._entries[key]
        self._entries[id(claim)] = entry
        return entry

    def single(self, claim: Claim) -> bytes:
        """A WatchClaimsResponse with `claim` set."""
        return self._get(claim)[1]

    def batch(self, claims: list[Claim]) -> bytes:
        """A WatchClaimsResponse with `claims` set to these claims. The feed hands every caught-up
        watcher the same list, so the last one's encoding is kept and reused."""
        last = self._last_batch
        if last is not None and last[0] is claims:
            return last[1]
        encoded = b"".join([self._get(claim)[2] for claim in claims])
        self._last_batch = (claims, encoded)
        return encoded
