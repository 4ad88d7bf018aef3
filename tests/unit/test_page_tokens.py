"""Page tokens of the admin listings (admin.PageTokens), as a client paging through ListBrands and
ListApiKeys meets them: the token of one page continues the listing on any server of the database,
and anything it did not issue for that very listing is INVALID_ARGUMENT on page_token."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discount_service.admin_service import MAX_PAGE_SIZE, PageTokens, resolve_page_size
from discount_service.errors import InvalidArgument

EXAMPLES = settings(database=None, max_examples=200, deadline=None)
SECRET = b"\x07" * 32
NOT_ISSUED = (
    "page_token is not a token this service issued; send the next_page_token of the previous page, "
    "or none for the first page"
)
OTHER_LISTING = "page_token belongs to another listing; keep the request's other fields as they were for the first page"
# The token is JSON with non-ASCII escaped (up to 12 characters for one), under a 512-character cap:
# room for 20 characters of any kind, and for 64 of the brand and key id charset (below).
cursors = st.text(st.characters(codec="utf-8"), max_size=20)
# What the listings page by: brand ids (new ones in this charset) and key ids, at most 64 characters.
ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", fullmatch=True)
listings = st.sampled_from([("brands", ""), ("api_keys", "acme"), ("api_keys", "café")])


def refused(tokens: PageTokens, token: str, listing: str = "brands", scope: str = "") -> str:
    with pytest.raises(InvalidArgument) as error:
        tokens.cursor(token, listing, scope)
    assert (error.value.field, error.value.reason) == ("page_token", "INVALID_FIELD")
    return str(error.value)


@EXAMPLES
@given(cursors, listings)
def test_a_token_continues_its_listing_on_any_server_of_the_database(after: str, listing: tuple[str, str]) -> None:
    token = PageTokens(SECRET).issue(*listing, after)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)  # safe in a URL or a JSON body as it is
    assert PageTokens(SECRET).cursor(token, *listing) == after


@EXAMPLES
@given(ids, ids)
def test_the_token_after_any_brand_or_key_id_is_accepted_back(brand_id: str, after: str) -> None:
    tokens = PageTokens(SECRET)
    for listing, scope in [("brands", ""), ("api_keys", brand_id)]:
        token = tokens.issue(listing, scope, after)
        assert len(token) <= 512
        assert tokens.cursor(token, listing, scope) == after


def test_a_token_of_another_database_is_refused() -> None:
    token = PageTokens(b"\x08" * 32).issue("brands", "", "acme")
    assert refused(PageTokens(SECRET), token) == NOT_ISSUED


def test_a_token_is_bound_to_its_listing_and_filter() -> None:
    tokens = PageTokens(SECRET)
    keys_of_acme = tokens.issue("api_keys", "acme", "key-9")
    assert refused(tokens, keys_of_acme, "api_keys", "globex") == OTHER_LISTING
    assert refused(tokens, keys_of_acme, "brands", "") == OTHER_LISTING
    assert refused(tokens, tokens.issue("brands", "", "acme"), "api_keys", "acme") == OTHER_LISTING


@EXAMPLES
@given(cursors, st.data())
def test_a_token_with_any_character_changed_is_refused(after: str, data: st.DataObject) -> None:
    tokens = PageTokens(SECRET)
    token = tokens.issue("brands", "", after)
    position = data.draw(st.integers(0, len(token) - 1))
    replacement = data.draw(st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
    tampered = token[:position] + replacement + token[position + 1 :]
    if tampered != token:
        assert refused(tokens, tampered) == NOT_ISSUED


@pytest.mark.parametrize(
    "token",
    ["not a token", "abc=", "", "A", "eyJ2IjoxfQ", "x" * 513, "page\x00token", "ünïcode"],
)
def test_garbage_is_refused_as_not_issued(token: str) -> None:
    assert refused(PageTokens(SECRET), token) == NOT_ISSUED


def test_a_truncated_or_extended_token_is_refused() -> None:
    tokens = PageTokens(SECRET)
    token = tokens.issue("brands", "", "acme")
    for changed in (token[:-1], token[:-4], token + "A", token + "AAAA", token[1:]):
        assert refused(tokens, changed) == NOT_ISSUED


@pytest.mark.parametrize(("asked", "size"), [(0, 100), (1, 1), (250, 250), (MAX_PAGE_SIZE, 1000)])
def test_page_size_zero_means_the_default_and_the_rest_is_taken_as_asked(asked: int, size: int) -> None:
    assert resolve_page_size(asked) == size


@pytest.mark.parametrize("asked", [1001, 5000, -1])
def test_a_page_size_out_of_range_is_refused_on_page_size(asked: int) -> None:
    with pytest.raises(InvalidArgument) as error:
        resolve_page_size(asked)
    assert error.value.field == "page_size"
    assert str(error.value) == f"page_size must be at most 1,000 (0 means 100), got {asked:,}"
