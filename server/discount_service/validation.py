"""Request validation shared by every entry point. Raises errors.InvalidArgument with a message
that says which field is wrong and what is allowed."""

from __future__ import annotations

import re
import unicodedata

from .errors import InvalidArgument

MAX_BRAND_ID = 64
MAX_USER_ID = 128
MAX_EMAIL = 254
MAX_REQUEST_ID = 128
MAX_BRAND_NAME = 200
# New brands: a conservative charset so ids are safe in URLs, logs and shell commands.
BRAND_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
# local@domain.tld: no spaces or control characters, one @, a dot in the domain.
EMAIL_PATTERN = re.compile(r"[^\s@\x00-\x1f\x7f]+@[^\s@\x00-\x1f\x7f.]+(\.[^\s@\x00-\x1f\x7f.]+)+")


def _has_control_characters(value: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cs") for ch in value)


def brand_id(value: str) -> str:
    """An existing brand's id, as sent by callers: 1..64 characters, no control characters."""
    if not value:
        raise InvalidArgument("brand_id is required", field="brand_id")
    if len(value) > MAX_BRAND_ID:
        raise InvalidArgument(f"brand_id must be at most {MAX_BRAND_ID} characters", field="brand_id")
    if _has_control_characters(value):
        raise InvalidArgument("brand_id must not contain control characters", field="brand_id")
    return value


def new_brand_id(value: str) -> str:
    if not BRAND_ID_PATTERN.fullmatch(value):
        raise InvalidArgument(
            "brand_id must be 1..64 characters of A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit",
            field="brand_id",
        )
    return value


def brand_name(value: str) -> str:
    if len(value) > MAX_BRAND_NAME or _has_control_characters(value):
        raise InvalidArgument(
            f"name must be at most {MAX_BRAND_NAME} characters with no control characters", field="display_name"
        )
    return value


def user_id(value: str) -> str:
    if not value:
        raise InvalidArgument("user_id is required", field="user_id")
    if len(value) > MAX_USER_ID:
        raise InvalidArgument(f"user_id must be at most {MAX_USER_ID} characters", field="user_id")
    if _has_control_characters(value):
        raise InvalidArgument("user_id must not contain control characters", field="user_id")
    return value


def email(value: str) -> str:
    if not value:
        raise InvalidArgument("email is required", field="email")
    if len(value) > MAX_EMAIL:
        raise InvalidArgument(f"email must be at most {MAX_EMAIL} characters", field="email")
    if not EMAIL_PATTERN.fullmatch(value):
        raise InvalidArgument(f"email {value[:64]!r} is not a valid address (expected name@example.com)", field="email")
    return value


def request_id(value: str) -> str:
    if len(value) > MAX_REQUEST_ID:
        raise InvalidArgument(f"request_id must be at most {MAX_REQUEST_ID} characters", field="request_id")
    if _has_control_characters(value):
        raise InvalidArgument("request_id must not contain control characters", field="request_id")
    return value
