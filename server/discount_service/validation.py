"""Request validation shared by every entry point. Raises errors.InvalidArgument with a message
that says which field is wrong and what is allowed."""

from __future__ import annotations

import re
import unicodedata

from email_validator import EmailNotValidError, validate_email

from .errors import InvalidArgument

MAX_BRAND_ID = 64
MAX_USER_ID = 128
MAX_EMAIL = 254
MAX_REQUEST_ID = 128
MAX_BRAND_NAME = 200
# New brands: a conservative charset so ids are safe in URLs, logs and shell commands.
BRAND_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

# Identifiers name one person or one brand, so two values that look the same must be the same value:
# they are compared and stored in Unicode NFC (composed) form, and what a person cannot see is
# refused rather than silently removed: surrounding whitespace, control characters (Cc), format
# characters (Cf: zero-width spaces, bidi overrides), lone surrogates (Cs), line and paragraph
# separators (Zl, Zp), every Default_Ignorable_Code_Point (fillers and variation selectors that
# render as nothing), U+2800 BRAILLE PATTERN BLANK (a visible-width blank that is not whitespace),
# and a combining mark with no base character to sit on.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# Private-use (Co) and unassigned (Cn, including noncharacters such as U+FFFF) code points have no
# agreed look, so no person can check what they are reading. "Unassigned" is as of the Unicode
# version of this Python's unicodedata: a character assigned later is refused until Python knows it.
_UNKNOWN_CATEGORIES = frozenset({"Co", "Cn"})
# Default_Ignorable_Code_Point, from DerivedCoreProperties.txt of Unicode 15.0.0 (unicodedata has no
# such property). Inclusive ranges.
_DEFAULT_IGNORABLE_RANGES = (
    (0x00AD, 0x00AD),  # SOFT HYPHEN
    (0x034F, 0x034F),  # COMBINING GRAPHEME JOINER
    (0x061C, 0x061C),  # ARABIC LETTER MARK
    (0x115F, 0x1160),  # HANGUL CHOSEONG FILLER..HANGUL JUNGSEONG FILLER
    (0x17B4, 0x17B5),  # KHMER VOWEL INHERENT AQ..KHMER VOWEL INHERENT AA
    (0x180B, 0x180F),  # MONGOLIAN FREE VARIATION SELECTORS, MONGOLIAN VOWEL SEPARATOR
    (0x200B, 0x200F),  # ZERO WIDTH SPACE..RIGHT-TO-LEFT MARK
    (0x202A, 0x202E),  # LEFT-TO-RIGHT EMBEDDING..RIGHT-TO-LEFT OVERRIDE
    (0x2060, 0x206F),  # WORD JOINER..NOMINAL DIGIT SHAPES
    (0x3164, 0x3164),  # HANGUL FILLER
    (0xFE00, 0xFE0F),  # VARIATION SELECTOR-1..VARIATION SELECTOR-16
    (0xFEFF, 0xFEFF),  # ZERO WIDTH NO-BREAK SPACE
    (0xFFA0, 0xFFA0),  # HALFWIDTH HANGUL FILLER
    (0xFFF0, 0xFFF8),  # reserved
    (0x1BCA0, 0x1BCA3),  # SHORTHAND FORMAT LETTER OVERLAP..SHORTHAND FORMAT UP STEP
    (0x1D173, 0x1D17A),  # MUSICAL SYMBOL BEGIN BEAM..MUSICAL SYMBOL END PHRASE
    (0xE0000, 0xE0FFF),  # LANGUAGE TAG, TAG characters, VARIATION SELECTOR-17..256, reserved
)
_DEFAULT_IGNORABLE = frozenset(cp for first, last in _DEFAULT_IGNORABLE_RANGES for cp in range(first, last + 1))
_BLANK_SYMBOLS = frozenset({0x2800})  # BRAILLE PATTERN BLANK


def _describe(ch: str) -> str:
    name = unicodedata.name(ch, "")
    return f"U+{ord(ch):04X} {name}" if name else f"U+{ord(ch):04X}"


def _visible_text(field: str, value: str) -> None:
    """Refuses an empty or blank value, surrounding whitespace, invisible or unknown characters and
    a leading combining mark in `field`."""
    if not value:
        raise InvalidArgument(f"{field} is required", field=field)
    if not value.strip():
        raise InvalidArgument(f"{field} must not be only whitespace", field=field)
    if value[0].isspace() or value[-1].isspace():
        raise InvalidArgument(f"{field} must not start or end with whitespace", field=field)
    for ch in value:
        category = unicodedata.category(ch)
        if category in _INVISIBLE_CATEGORIES or ord(ch) in _DEFAULT_IGNORABLE or ord(ch) in _BLANK_SYMBOLS:
            raise InvalidArgument(
                f"{field} must not contain control or invisible format characters (found {_describe(ch)})",
                field=field,
            )
        if category in _UNKNOWN_CATEGORIES:
            raise InvalidArgument(
                f"{field} must not contain unassigned or private-use characters (found {_describe(ch)})",
                field=field,
            )
    if unicodedata.category(value[0]).startswith("M"):
        raise InvalidArgument(
            f"{field} must not start with a combining mark (found {_describe(value[0])})", field=field
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
    """A brand's display_name: what people read in lists, so it follows the identifier rules too."""
    return identifier("display_name", value, MAX_BRAND_NAME)


def user_id(value: str) -> str:
    """The user a claim is for (see `identifier`); returns it in NFC, the form it is stored in."""
    return identifier("user_id", value, MAX_USER_ID)


def email(value: str) -> str:
    """Returns the address as the caller sent it, not email-validator's normalized form: the email
    is contact data, not an identity (one user_id holds one code whatever address it gives), so
    rewriting it (lower-casing the domain, unquoting the local part, IDNA) would only make the
    stored claim and the feed differ from what the caller asked for."""
    _visible_text("email", value)
    if len(value) > MAX_EMAIL:
        raise InvalidArgument(f"email must be at most {MAX_EMAIL} characters", field="email")
    try:
        # strict: the 64-character limit on the local part (RFC 5321) that many mail servers enforce.
        validate_email(value, check_deliverability=False, allow_quoted_local=True, strict=True)
    except EmailNotValidError:
        raise InvalidArgument(
            f"email {value[:64]!r} is not a valid address (expected name@example.com)", field="email"
        ) from None
    return value


def request_id(value: str) -> str:
    """An optional idempotency key (empty: none). It is echoed in error messages and their metadata,
    so a non-empty one follows the identifier rules; returns it in NFC."""
    if not value:
        return value
    return identifier("request_id", value, MAX_REQUEST_ID)
