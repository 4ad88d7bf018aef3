"""Discount codes (codes.py) as a shopper and a brand see them: easy to read back and type, the
length and prefix asked for, every character equally likely, and batches too big for their code
space refused before any code is made."""

from __future__ import annotations

import collections
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from discount_service import codes

EXAMPLES = settings(database=None, max_examples=100, deadline=None)
prefixes = st.from_regex(r"[A-Z0-9-]{0,16}", fullmatch=True)


def test_the_alphabet_has_no_characters_people_misread() -> None:
    assert len(codes.ALPHABET) == len(set(codes.ALPHABET)) == 31
    assert set(codes.ALPHABET) <= set(string.ascii_uppercase + string.digits)
    assert not set(codes.ALPHABET) & set("0O1IL")
    assert set(codes.ALPHABET) == set(string.ascii_uppercase + string.digits) - set("0O1IL")


@EXAMPLES
@given(st.integers(0, 50), st.integers(codes.MIN_LENGTH, codes.MAX_LENGTH), prefixes)
def test_a_batch_has_the_count_length_and_prefix_asked_for(count: int, length: int, prefix: str) -> None:
    batch = codes.make_codes(count, length, prefix)
    assert len(batch) == count
    for code in batch:
        assert code.startswith(prefix)
        assert len(code) == len(prefix) + length
        assert set(code[len(prefix) :]) <= set(codes.ALPHABET)


def test_the_default_is_twelve_characters_with_no_prefix() -> None:
    [code] = codes.make_codes(1, codes.DEFAULT_LENGTH)
    assert len(code) == 12 and set(code) <= set(codes.ALPHABET)


def test_a_large_batch_of_default_codes_has_no_repeats() -> None:
    # 31**12 possible codes: a repeat among 50,000 has a probability below 1e-8.
    batch = codes.make_codes(50_000, codes.DEFAULT_LENGTH, "SALE-")
    assert len(set(batch)) == len(batch) == 50_000


def test_two_batches_are_different() -> None:
    assert codes.make_codes(100, 8) != codes.make_codes(100, 8)


@pytest.mark.parametrize("total", [0, 1, 7, 31, 1000, 100_003])
def test_random_characters_gives_exactly_what_was_asked(total: int) -> None:
    drawn = codes.random_characters(total)
    assert len(drawn) == total
    assert set(drawn) <= set(codes.ALPHABET)


def test_every_character_is_equally_likely() -> None:
    # 31,000 draws of each character expected, give or take 6 standard deviations (about 1,040). A
    # plain modulo of random bytes would give 8 characters about 33,800 draws and the rest 30,000.
    counts = collections.Counter(codes.random_characters(31 * 31_000))
    assert set(counts) == set(codes.ALPHABET)
    assert all(abs(n - 31_000) < 1_050 for n in counts.values()), counts


def test_a_batch_may_fill_at_most_one_ten_thousandth_of_its_code_space() -> None:
    assert codes.code_space(6) == 31**6 == 887_503_681
    assert codes.max_safe_count(6) == 88_750
    assert codes.space_is_safe(88_750, 6) and not codes.space_is_safe(88_751, 6)
    # The documented example: a million codes of length 6 are refused; length 7 is the shortest that fits.
    assert not codes.space_is_safe(1_000_000, 6)
    assert codes.minimum_safe_length(1_000_000) == 7
    assert codes.minimum_safe_length(1) == codes.MIN_LENGTH


@EXAMPLES
@given(st.integers(codes.MIN_LENGTH, codes.MAX_LENGTH))
def test_the_most_a_request_may_ask_is_safe_and_one_more_is_not(length: int) -> None:
    most = codes.max_safe_count(length)
    assert codes.space_is_safe(most, length)
    assert not codes.space_is_safe(most + 1, length)
    assert codes.minimum_safe_length(most) <= length


@EXAMPLES
@given(st.integers(1, 10_000_000))
def test_the_suggested_length_is_the_shortest_safe_one(count: int) -> None:
    length = codes.minimum_safe_length(count)
    assert codes.space_is_safe(count, length)
    assert length == codes.MIN_LENGTH or not codes.space_is_safe(count, length - 1)


@pytest.mark.parametrize("prefix", ["", "SALE-", "X", "2024-SUMMER", "A" * 16])
def test_prefixes_of_capitals_digits_and_dashes_up_to_16_are_allowed(prefix: str) -> None:
    assert codes.PREFIX_PATTERN.fullmatch(prefix)


@pytest.mark.parametrize("prefix", ["sale-", "SALE ", "SALE_", "A" * 17, "ÄKTION", "SALE\n"])
def test_other_prefixes_are_not(prefix: str) -> None:
    assert not codes.PREFIX_PATTERN.fullmatch(prefix)
