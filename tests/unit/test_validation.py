"""The identity and field rules every entry point shares (validation.py), as a caller meets them: what
is accepted comes back in the form it is stored in (NFC), what is refused is an InvalidArgument
naming the field, with reason INVALID_FIELD."""

from __future__ import annotations

import string
import unicodedata
from collections.abc import Callable

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from discount_service import validation
from discount_service.errors import InvalidArgument

EXAMPLES = settings(database=None, max_examples=200, deadline=None)
NFC = unicodedata.normalize("NFC", "résumé")
NFD = unicodedata.normalize("NFD", "résumé")


def refusal(check: Callable[[str], str], value: str) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as refused:
        check(value)
    assert refused.value.reason == "INVALID_FIELD"
    return refused.value


def test_the_two_spellings_of_one_name_are_one_user_id() -> None:
    assert NFC != NFD
    assert validation.user_id(NFD) == validation.user_id(NFC) == NFC
    assert validation.brand_id(unicodedata.normalize("NFD", "café")) == "café"


@EXAMPLES
@given(st.text(st.characters(codec="utf-8", categories=("L", "M", "N", "P", "S", "Zs")), min_size=1, max_size=40))
def test_an_accepted_identifier_is_nfc_and_its_decomposed_spelling_is_the_same_user(text: str) -> None:
    try:
        stored = validation.user_id(text)
    except InvalidArgument as refused:
        assert refused.field == "user_id"
        assume(False)
    assert stored == unicodedata.normalize("NFC", text)
    assert validation.user_id(stored) == stored
    assert validation.user_id(unicodedata.normalize("NFD", text)) == stored


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "user_id is required"),
        ("   ", "user_id must not be only whitespace"),
        ("\t\n", "user_id must not be only whitespace"),
        (" alice", "user_id must not start or end with whitespace"),
        ("alice ", "user_id must not start or end with whitespace"),
        ("alice\u00a0", "user_id must not start or end with whitespace"),
        ("\u3000alice", "user_id must not start or end with whitespace"),
    ],
)
def test_blank_or_padded_user_ids_are_refused(value: str, message: str) -> None:
    refused = refusal(validation.user_id, value)
    assert (str(refused), refused.field) == (message, "user_id")


def test_inner_spaces_are_part_of_the_name() -> None:
    assert validation.user_id("Ada Lovelace") == "Ada Lovelace"


@EXAMPLES
@given(st.text(string.ascii_letters, max_size=30), st.text(string.ascii_letters, max_size=30))
def test_a_nul_anywhere_is_refused_naming_it(before: str, after: str) -> None:
    for check, field in [
        (validation.user_id, "user_id"),
        (validation.brand_id, "brand_id"),
        (validation.email, "email"),
    ]:
        refused = refusal(check, f"{before}\x00{after}")
        assert refused.field == field
        assert "U+0000" in str(refused)


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("ali\u200bce", "U+200B ZERO WIDTH SPACE"),
        ("\u202ealice", "U+202E RIGHT-TO-LEFT OVERRIDE"),
        ("acme\u200d", "U+200D ZERO WIDTH JOINER"),
        ("ali\nce", "U+000A"),
        ("ali\x7fce", "U+007F"),
    ],
)
def test_invisible_and_control_characters_are_refused_naming_the_character(value: str, named: str) -> None:
    refused = refusal(validation.user_id, value)
    assert refused.field == "user_id"
    assert named in str(refused)


def test_length_limits_count_characters_of_the_stored_form() -> None:
    assert validation.user_id("u" * 128) == "u" * 128
    refused = refusal(validation.user_id, "u" * 129)
    assert (str(refused), refused.field) == ("user_id must be at most 128 characters", "user_id")
    # 128 é typed decomposed is 256 code points, but 128 characters once stored.
    assert validation.user_id("e\u0301" * 128) == "é" * 128
    assert validation.brand_id("b" * 64) == "b" * 64
    refused = refusal(validation.brand_id, "b" * 65)
    assert (str(refused), refused.field) == ("brand_id must be at most 64 characters", "brand_id")


NEW_BRAND_RULE = "brand_id must be 1..64 characters of A-Z, a-z, 0-9, '.', '_' and '-', starting with a letter or digit"


@pytest.mark.parametrize("value", ["acme", "Acme.Shop_2-eu", "7eleven", "a" * 64])
def test_new_brand_ids_in_the_safe_charset_are_accepted(value: str) -> None:
    assert validation.new_brand_id(value) == value


@pytest.mark.parametrize("value", ["acmé", "-acme", ".acme", "acme shop", "acme/shop", "acme;drop"])
def test_new_brand_ids_outside_the_safe_charset_are_refused(value: str) -> None:
    refused = refusal(validation.new_brand_id, value)
    assert (str(refused), refused.field) == (NEW_BRAND_RULE, "brand_id")


def test_a_new_brand_id_gets_the_identity_rules_first() -> None:
    refused = refusal(validation.new_brand_id, " acme")
    assert (str(refused), refused.field) == ("brand_id must not start or end with whitespace", "brand_id")


@pytest.mark.parametrize("value", ["alice@example.com", "Alice.Smith+shop@mail.example.co.uk", "ü@exämple.de"])
def test_emails_are_accepted_as_given(value: str) -> None:
    assert validation.email(value) == value


@pytest.mark.parametrize("value", ["alice", "alice@example", "a@b@example.com", "alice@.com", "@example.com"])
def test_malformed_emails_are_refused_quoting_the_value(value: str) -> None:
    refused = refusal(validation.email, value)
    assert refused.field == "email"
    assert str(refused) == f"email {value!r} is not a valid address (expected name@example.com)"


def test_email_whitespace_and_length() -> None:
    refused = refusal(validation.email, " alice@example.com")
    assert (str(refused), refused.field) == ("email must not start or end with whitespace", "email")
    refused = refusal(validation.email, "alice @example.com")
    assert refused.field == "email"
    longest = "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 57 + ".com"
    assert len(longest) == 254 and validation.email(longest) == longest
    refused = refusal(validation.email, "a" + longest)
    assert (str(refused), refused.field) == ("email must be at most 254 characters", "email")


def test_request_ids_are_optional_bounded_and_printable() -> None:
    assert validation.request_id("") == ""
    assert validation.request_id("batch-2024-06-01.1") == "batch-2024-06-01.1"
    assert validation.request_id("r" * 128) == "r" * 128
    refused = refusal(validation.request_id, "r" * 129)
    assert (str(refused), refused.field) == ("request_id must be at most 128 characters", "request_id")
    for value in ("batch\x001", "batch\n1"):
        refused = refusal(validation.request_id, value)
        assert refused.field == "request_id"
        assert "must not contain control" in str(refused)


def test_brand_display_names_are_bounded_and_printable() -> None:
    assert validation.brand_name("Acme & Söhne, Ltd.") == "Acme & Söhne, Ltd."
    assert validation.brand_name("n" * 200) == "n" * 200
    refused = refusal(validation.brand_name, "n" * 201)
    assert refused.field == "display_name"
    assert "must be at most 200 characters" in str(refused)
    for value in ("Acme\nLtd", "Acme\x00"):
        refused = refusal(validation.brand_name, value)
        assert refused.field == "display_name"
        assert "control" in str(refused)
