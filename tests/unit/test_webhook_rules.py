"""The webhook rules that are pure functions: the retry schedule, Retry-After, the Standard Webhooks
signature (checked against the `standardwebhooks` package), which addresses may be called, the
sealed secrets, and the webhook settings."""

from __future__ import annotations

import base64
import json
from collections import deque
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path

import pytest
from google.protobuf.json_format import MessageToDict
from hypothesis import given, settings
from hypothesis import strategies as st
from standardwebhooks import Webhook

from discount_service import errors
from discount_service.encoding import claim_to_proto
from discount_service.models import Claim
from discount_service.settings import Settings, SettingsError
from discount_service.webhook_http import (
    MAX_BODY_BYTES,
    MAX_WAIT_SECONDS,
    ClaimJson,
    body,
    claim_json,
    next_delivery,
    retry_after_seconds,
    retry_delay,
    signature,
)
from discount_service.webhooks import SecretBox, address_allowed, check_url, new_secret


@pytest.mark.parametrize("failures", [1, 2, 3, 8])
def test_retry_n_waits_base_times_2_to_the_n_minus_1_to_half_as_much_again(failures: int) -> None:
    low = 5.0 * 2 ** (failures - 1)
    waits = [retry_delay(failures, 5.0) for _ in range(200)]
    assert all(low <= w <= 1.5 * low for w in waits)
    assert max(waits) - min(waits) > 0.1 * low, "jitter"


def test_retries_wait_at_most_an_hour() -> None:
    assert retry_delay(30, 5.0) == MAX_WAIT_SECONDS and retry_delay(10_000, 0.5) == MAX_WAIT_SECONDS


def test_retry_after_in_seconds_or_as_an_http_date_capped_at_an_hour() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    assert retry_after_seconds("120", now) == 120
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=90), usegmt=True), now) == 90
    assert retry_after_seconds(format_datetime(now - timedelta(seconds=90), usegmt=True), now) == 0
    assert retry_after_seconds("99999", now) == MAX_WAIT_SECONDS
    assert retry_after_seconds(format_datetime(now + timedelta(days=2), usegmt=True), now) == MAX_WAIT_SECONDS
    assert retry_after_seconds("soon", now) is None and retry_after_seconds(None, now) is None


def test_the_signature_is_what_standardwebhooks_verifies_with_either_secret() -> None:
    (old, old_key), (new, new_key) = new_secret(), new_secret()
    assert old.startswith("whsec_") and len(base64.b64decode(old.removeprefix("whsec_"))) == 32
    body = b'{"type":"claims.created","brand_id":"acme","claims":[]}'
    timestamp = int(datetime.now(UTC).timestamp())
    header = signature("msg_1", timestamp, body, [new_key, old_key])
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(timestamp), "webhook-signature": header}
    for secret in (old, new):
        assert Webhook(secret).verify(body, headers)["brand_id"] == "acme"
    assert len(header.split(" ")) == 2 and all(part.startswith("v1,") for part in header.split(" "))


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("93.184.216.34", True),
        ("2606:2800:220:1:248:1893:25c8:1946", True),
        ("127.0.0.1", False),
        ("10.0.0.1", False),
        ("172.16.5.4", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),
        ("100.64.0.1", False),
        ("0.0.0.0", False),
        ("224.0.0.251", False),
        ("::1", False),
        ("fe80::1", False),
        ("fc00::1", False),
        ("::ffff:10.0.0.1", False),
        ("ff02::1", False),
    ],
)
def test_only_public_unicast_addresses(address: str, allowed: bool) -> None:
    assert address_allowed(address, allow_insecure=False) is allowed
    assert address_allowed(address, allow_insecure=True)


def test_urls_need_https_unless_the_switch_is_on() -> None:
    with pytest.raises(errors.InvalidArgument) as caught:
        check_url("http://example.com/", allow_insecure=False)
    assert caught.value.field == "url"
    assert check_url("http://example.com/", allow_insecure=True).port == 80
    assert check_url("https://example.com/", allow_insecure=False).port == 443


def test_sealed_secrets_open_only_with_the_same_key_and_webhook(tmp_path: Path) -> None:
    key = base64.b64encode(b"k" * 32).decode()
    box = SecretBox.from_settings(key, tmp_path)
    sealed = box.seal("wh_1", b"s" * 32)
    assert b"s" * 32 not in sealed and box.open("wh_1", sealed) == b"s" * 32
    with pytest.raises(errors.FailedPrecondition):
        box.open("wh_2", sealed)
    with pytest.raises(errors.FailedPrecondition, match="DISCOUNT_WEBHOOK_SECRET_KEY"):
        SecretBox.from_settings(base64.b64encode(b"o" * 32).decode(), tmp_path).open("wh_1", sealed)
    with pytest.raises(errors.FailedPrecondition, match="32 bytes"):
        SecretBox.from_settings("not base64 of 32 bytes", tmp_path)
    made = SecretBox.from_settings(None, tmp_path)  # no setting: a key file, made once, mode 0600
    again = SecretBox.from_settings(None, tmp_path)
    assert again.open("wh_1", made.seal("wh_1", b"x")) == b"x"
    assert (tmp_path / "webhook-secret-key").stat().st_mode & 0o777 == 0o600


def test_webhook_settings() -> None:
    defaults = Settings.from_env({})
    assert (defaults.webhook_allow_insecure, defaults.webhook_retry_base_seconds) == (False, 5.0)
    assert (defaults.webhook_retry_period_seconds, defaults.webhook_timeout_seconds) == (259200.0, 10.0)
    env = {"DISCOUNT_WEBHOOK_ALLOW_INSECURE": "1", "DISCOUNT_WEBHOOK_RETRY_BASE_SECONDS": "0.25"}
    configured = Settings.from_env(env)
    assert configured.webhook_allow_insecure and configured.webhook_retry_base_seconds == 0.25
    with pytest.raises(SettingsError, match="DISCOUNT_WEBHOOK_ALLOW_INSECURE"):
        Settings.from_env({"DISCOUNT_WEBHOOK_ALLOW_INSECURE": "maybe"})
    with pytest.raises(SettingsError, match="DISCOUNT_WEBHOOK_TIMEOUT_SECONDS"):
        Settings.from_env({"DISCOUNT_WEBHOOK_TIMEOUT_SECONDS": "0"})
    assert "KEY" not in repr(Settings.from_env({"DISCOUNT_WEBHOOK_SECRET_KEY": "KEY"}))


def test_a_delivery_holds_at_most_max_claims_and_about_a_mebibyte() -> None:
    claims = deque(
        Claim(sequence=i, brand_id="acme", code=f"C{i:04d}", user_id=f"u{i:04d}", email=f"u{i:04d}@example.com",
              claimed_at=datetime(2030, 1, 1, tzinfo=UTC), expires_at=None)
        for i in range(1, 2001)
    )  # fmt: skip
    encode = ClaimJson()
    assert [c.sequence for c in next_delivery(claims, 7, encode)] == list(range(1, 8))
    one = len(encode(claims[1000]))  # sequences of four digits, the rest of the same length
    assert len(next_delivery(deque(list(claims)[999:]), 1000, encode, max_bytes=10 * (one + 1) + 5)) == 10
    assert len(body("acme", [encode(c) for c in next_delivery(claims, 1000, encode)])) < MAX_BODY_BYTES + 200
    assert len(next_delivery(claims, 1000, encode, max_bytes=1)) == 1, "one claim at least"
    data = json.loads(body("acme", [encode(claims[0])]))
    assert data == {
        "type": "claims.created",
        "brand_id": "acme",
        "claims": [
            {
                "sequence": "1",
                "brand_id": "acme",
                "code": "C0001",
                "user_id": "u0001",
                "email": "u0001@example.com",
                "claimed_at": "2030-01-01T00:00:00Z",
            }
        ],
    }


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
_TIMES = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(9999, 12, 31), timezones=st.just(UTC)
) | st.datetimes(min_value=datetime(1970, 1, 1), max_value=datetime(2100, 1, 1)).map(
    lambda t: t.replace(microsecond=t.microsecond // 1000 * 1000, tzinfo=UTC)
)


@given(
    sequence=st.integers(min_value=0, max_value=2**63 - 1),
    brand_id=_TEXT,
    code=_TEXT,
    user_id=_TEXT,
    email=_TEXT,
    claimed_at=_TIMES,
    expires_at=st.none() | _TIMES,
)
@settings(max_examples=300, deadline=None)
def test_a_claims_json_is_what_message_to_dict_gives(
    sequence: int, brand_id: str, code: str, user_id: str, email: str, claimed_at: datetime, expires_at: datetime | None
) -> None:
    claim = Claim(sequence, brand_id, code, user_id, email, claimed_at, expires_at)
    expected = MessageToDict(claim_to_proto(claim), preserving_proto_field_name=True)
    assert json.loads(claim_json(claim)) == expected
    assert list(json.loads(claim_json(claim))) == list(expected), "the same field order"
