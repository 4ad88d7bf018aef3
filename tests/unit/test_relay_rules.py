"""The NATS relay's pure rules: a brand's subject, whether a stream's subjects take the relay's, the
message a claim becomes, and the relay settings."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from google.protobuf.json_format import MessageToDict

from discount_service.encoding import claim_to_proto
from discount_service.jetstream import claim_message, covers, subject_for
from discount_service.models import Claim
from discount_service.settings import Settings, SettingsError


def test_a_brand_is_one_subject_token_with_its_dots_written_2e() -> None:
    assert subject_for("discount.claims", "acme") == "discount.claims.acme"
    assert subject_for("discount.claims", "shop.example.co") == "discount.claims.shop%2Eexample%2Eco"


@pytest.mark.parametrize(
    ("stream_subject", "taken"),
    [
        ("discount.claims.>", True),
        ("discount.>", True),
        (">", True),
        ("*.claims.>", True),
        ("discount.*.>", True),
        ("discount.claims.*", False),  # one token only: not a brand's subject with more after it
        ("discount.claims", False),
        ("discount.claims.acme", False),
        ("discount.other.>", False),
        ("discount.claims.x.>", False),
    ],
)
def test_which_stream_subjects_take_every_subject_of_the_relay(stream_subject: str, taken: bool) -> None:
    assert covers(stream_subject, "discount.claims.>") is taken


def test_a_message_is_the_claim_in_protobuf_json_with_the_sequence_as_a_string() -> None:
    at = datetime(2026, 12, 6, 1, 2, 3, tzinfo=UTC)
    claim = Claim(
        sequence=42, brand_id="acme", code="C-1", user_id="u", email="u@example.com", claimed_at=at, expires_at=None
    )
    assert json.loads(claim_message(claim)) == {
        "sequence": "42",
        "brand_id": "acme",
        "code": "C-1",
        "user_id": "u",
        "email": "u@example.com",
        "claimed_at": "2026-12-06T01:02:03Z",
    }


@pytest.mark.parametrize(
    "claim",
    [
        Claim(1, "acme", "C-1", "u", "u@example.com", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), None),
        Claim(2, "shop.example", "C-2", "ü-ser", "", datetime(2026, 1, 2, 3, 4, 5, 120000, tzinfo=UTC), None),
        Claim(
            3,
            "acme",
            "C-3",
            "u3",
            "x@example.com",
            datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=timezone(timedelta(hours=-5))),
            datetime(2027, 1, 1, tzinfo=UTC),
        ),
        Claim(2**63, "b", "C", "u", "e@example.com", datetime(2026, 1, 2, 3, 4, 5, 1000, tzinfo=UTC), None),
    ],
)
def test_a_message_is_what_protobuf_json_makes_of_the_claim(claim: Claim) -> None:
    expected = MessageToDict(claim_to_proto(claim), preserving_proto_field_name=True)
    assert json.loads(claim_message(claim)) == expected
    assert list(json.loads(claim_message(claim))) == list(expected)


def test_relay_settings_default_and_refuse_what_nats_would() -> None:
    settings = Settings.from_env({})
    assert (settings.nats_url, settings.nats_stream, settings.nats_subject_prefix) == (
        None,
        "DISCOUNT_CLAIMS",
        "discount.claims",
    )
    for prefix in ("a..b", "a.*", "a.>", "a b", ".a"):
        with pytest.raises(SettingsError, match="DISCOUNT_NATS_SUBJECT_PREFIX"):
            Settings.from_env({"DISCOUNT_NATS_SUBJECT_PREFIX": prefix})
    for stream in ("A.B", "A B", "A*", "A>", "A/B"):
        with pytest.raises(SettingsError, match="DISCOUNT_NATS_STREAM"):
            Settings.from_env({"DISCOUNT_NATS_STREAM": stream})
