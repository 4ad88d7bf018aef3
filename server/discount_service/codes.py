"""Random discount codes from a CSPRNG over an alphabet with no look-alike characters."""

from __future__ import annotations

import math
import re
import secrets

# Upper case, without 0/O and 1/I/L, which people misread when typing a code.
ALPHABET = "ABCDEFGHJKMNPQRSTUVWXYZ23456789"
DEFAULT_LENGTH = 12
MIN_LENGTH, MAX_LENGTH = 6, 32
MAX_PREFIX = 16
PREFIX_PATTERN = re.compile(r"[A-Z0-9-]{0,16}")
# A batch may fill at most this share of its code space, so codes stay unguessable and unique
# codes stay cheap to find: 1M codes of length 6 (0.11% of 31**6) are refused.
MAX_SPACE_FRACTION = 1e-4

# Bytes >= 248 are dropped so that every character is equally likely (248 = 8 * 31).
_UNBIASED_LIMIT = 256 - 256 % len(ALPHABET)
_TRANSLATION = bytes(ord(ALPHABET[b % len(ALPHABET)]) for b in range(256))
_REJECTED = bytes(range(_UNBIASED_LIMIT, 256))


def code_space(length: int) -> int:
    return int(len(ALPHABET) ** length)


def minimum_safe_length(count: int) -> int:
    return next(n for n in range(MIN_LENGTH, MAX_LENGTH + 1) if count <= code_space(n) * MAX_SPACE_FRACTION)


def space_is_safe(count: int, length: int) -> bool:
    return count <= code_space(length) * MAX_SPACE_FRACTION


def max_safe_count(length: int) -> int:
    """The most codes of this length one request may ask for (the largest count space_is_safe allows)."""
    return int(code_space(length) * MAX_SPACE_FRACTION)


def random_characters(total: int) -> str:
    """`total` characters drawn uniformly from ALPHABET with `secrets`, in bulk."""
    out = b""
    while len(out) < total:
        want = total - len(out)
        raw = secrets.token_bytes(math.ceil(want * 256 / _UNBIASED_LIMIT * 1.02) + 16)
        out += raw.translate(_TRANSLATION, _REJECTED)
    return out[:total].decode("ascii")


def make_codes(count: int, length: int, prefix: str = "") -> list[str]:
    chars = random_characters(count * length)
    return [prefix + chars[i : i + length] for i in range(0, count * length, length)]
