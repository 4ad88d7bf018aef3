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


# Identifiers name one person or one brand, so two values that look the same must be the same value:
# they are compared and stored in Unicode NFC (composed) form, and what a person cannot see is
# refused rather than silently removed: surrounding whitespace, control characters (Cc), format
# characters (Cf: zero-width spaces, bidi overrides) and lone surrogates (Cs).
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs"})


def _describe(ch: str) -> str:
    name = unicodedata.name(ch, "")
    return f"U+{ord(ch):04X} {name}" if name else f"U+{ord(ch):04X}"


def _visible_text(field: str, value: str) -> None:
    """Refuses an empty or blank value, surrounding whitespace and invisible characters in `field`."""
    if not value:
        raise InvalidArgument(f"{field} is required", field=field)
    if not value.strip():
        raise InvalidArgument(f"{field} must not be only whitespace", field=field)
    if value[0].isspace() or value[-1].isspace():
        raise InvalidArgument(f"{field} must not start or end with whitespace", field=field)
    for ch in value:
        if unicodedata.category(ch) in _INVISIBLE_CATEGORIES:
            raise InvalidArgument(
                f"{field} must not contain control or invisible format characters (found {_describe(ch)})",
                field=field,
            )


def identifier(field: str, value: str, max_length: int) -> str:
    """A user_id or brand_id as it is compared and stored: NFC, visible, at most `max_length` characters."""
    _visible_text(field, value)
    value = unicodedata.normalize("NFC", value)
    if len(value) > max_length:
        raise InvalidArgument(f"{field} must be at most {max_length} characters", field=field)
    return value


def brand_id(value: str) -> str:
    """An existing brand's id, as sent by callers (see `identifier`); returns it in NFC."""
    return identifier("brand_id", value, MAX_BRAND_ID)


def new_brand_id(value: str) -> str:
    value = brand_id(value)
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
    """The user a claim is for (see `identifier`); returns it in NFC, the form it is stored in."""
    return identifier("user_id", value, MAX_USER_ID)


def email(value: str) -> str:
    _visible_text("email", value)
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
