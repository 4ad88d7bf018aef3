"""Claims (and the timestamps every servicer sends) to protobuf, and WatchClaims responses encoded by
hand from per-claim pieces.

A watch stream's response is registered with a pass-through serializer: the servicer yields bytes
made here, so a claim that many watchers stream is encoded once, not once per watcher.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import datetime

from google.protobuf.timestamp_pb2 import Timestamp

from discount.v1 import discount_service_pb2 as pb

from .models import Claim


def cut_runs(
    sizes: Sequence[int], *, max_items: int, max_bytes: int, envelope: int = 0, separator: int = 0
) -> list[tuple[int, int]]:
    """Cuts items of these encoded sizes, in order, into consecutive runs `(start, stop)` of at most
    `max_items` items whose message stays within `max_bytes`: `envelope` bytes every message carries
    (a JSON array's brackets), plus the items, plus `separator` bytes between two of them (its
    commas). Every item is in exactly one run; an item too big for any message gets a run of its
    own, for the caller to refuse or send apart.

    Anything that batches claims into a message with a size limit cuts it here, so a run of large
    claims becomes more messages rather than one that the transport refuses."""
    runs: list[tuple[int, int]] = []
    start, size = 0, envelope
    for index, item in enumerate(sizes):
        count = index - start
        added = item + (separator if count else 0)
        if count and (count >= max_items or size + added > max_bytes):
            runs.append((start, index))
            start, size, added = index, envelope, item
        size += added
    if start < len(sizes):
        runs.append((start, len(sizes)))
    return runs


def timestamp_proto(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


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
        self._last_responses: tuple[list[Claim], tuple[int, int], list[bytes]] | None = None

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

    def responses(self, claims: list[Claim], per_response: int, max_bytes: int) -> list[bytes]:
        """The WatchClaimsResponse messages that carry `claims` in order: one claim each (`claim`)
        when `per_response` <= 1, otherwise up to `per_response` claims each (`claims`) and at most
        `max_bytes` bytes each. The largest valid claim encodes to under 1 KiB, the smallest limit
        settings allow, so every message fits. The feed hands every caught-up watcher the same
        list, so the last one's messages are kept and reused."""
        last = self._last_responses
        if last is not None and last[0] is claims and last[1] == (per_response, max_bytes):
            return last[2]
        if per_response <= 1:
            messages = [self.single(claim) for claim in claims]
        else:
            elements = [self._get(claim)[2] for claim in claims]
            cuts = cut_runs([len(e) for e in elements], max_items=per_response, max_bytes=max_bytes)
            messages = [b"".join(elements[start:stop]) for start, stop in cuts]
        self._last_responses = (claims, (per_response, max_bytes), messages)
        return messages
