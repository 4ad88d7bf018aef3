"""The page in a real browser: headless Chromium -> Envoy (gRPC-Web) -> discount serve -> PostgreSQL."""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import grpc
import pytest

from discount.v1 import discount_service_pb2_grpc as pb_grpc
from discount_dev.stack import serve_page
from tests.browser.support import JWT_SECRET, Browser, Stack, table_codes, table_sequences, token
from tests.support import (
    claim_request,
    create_brand,
    create_key,
    generate_codes_sql,
    sql,
    start_server_process,
    stop_process,
)

ROWS = "return document.querySelectorAll('#live-table tbody tr').length >= arg;"
STATE = "return document.querySelector('#live-status').dataset.state === arg;"


def record(output_dir: Path, name: str, seconds: float) -> None:
    """Keeps a measured time next to the screenshots (test-output/<test>/timings.json)."""
    path = output_dir / "timings.json"
    timings = json.loads(path.read_text()) if path.exists() else {}
    timings[name] = round(seconds, 3)
    path.write_text(json.dumps(timings, indent=2) + "\n")


def claims_in_db(url: str, brand: str) -> list[tuple[int, str, str]]:
    return sql(
        url,
        "SELECT c.sequence, c.code, c.user_id FROM claims c JOIN brands b USING (brand_key) "
        "WHERE b.brand_id = %s ORDER BY c.sequence",
        (brand,),
    )


def make_claims(stack: Stack, brand: str, users: range) -> None:
    """Claims straight on the gRPC port, 8 at a time, as internal services would."""
    key = stack.service_key()
    with grpc.insecure_channel(stack.server.address) as channel:
        stub = pb_grpc.DiscountServiceStub(channel)
        with ThreadPoolExecutor(8) as pool:
            replies = list(
                pool.map(
                    lambda i: stub.ClaimCode(claim_request(brand, f"user-{i}"), metadata=(("x-api-key", key),)),
                    users,
                )
            )
    assert all(reply.newly_claimed for reply in replies)


def open_live_view(stack: Stack, browser: Browser, brand: str) -> None:
    brand_key = create_key(stack.database_url, "brand", brand)
    browser.goto(stack.page_url + "#live")
    browser.fill("#live-brand", brand)
    browser.fill("#live-key", brand_key)
    browser.click("#live-start")
    browser.wait_for(STATE, "live")


def test_claim_from_page_shows_the_code_recorded_in_the_database(stack: Stack, browser: Browser, output_dir: Path):
    url = stack.database_url
    create_brand(url, "acme")
    generate_codes_sql(url, "acme", 5, expires_sql="now() + interval '30 days'")
    browser.goto(stack.page_url + "#claim")
    browser.fill("#claim-token", token("shopper-1", "shopper1@example.com"))
    browser.fill("#claim-brand", "acme")
    assert browser.text("#claim-who") == "Signed in as shopper-1 (shopper1@example.com)."

    browser.click("#claim-button")
    browser.wait_visible("#claim-result")
    shown = browser.text("#claim-code")
    browser.screenshot(output_dir / "get-my-code.png")

    rows = sql(
        url,
        "SELECT c.code, c.email, c.expires_at FROM claims c JOIN brands b USING (brand_key) "
        "WHERE b.brand_id = 'acme' AND c.user_id = 'shopper-1'",
    )
    assert len(rows) == 1
    code, email, expires_at = rows[0]
    assert shown == code
    assert email == "shopper1@example.com"
    shown_expiry = browser.evaluate("return document.querySelector('#claim-expiry').dataset.expiresAt;")
    assert abs(datetime.fromisoformat(shown_expiry) - expires_at).total_seconds() < 0.001
    assert browser.text("#claim-expiry").startswith("Valid until ")
    assert browser.text("#claim-note").startswith("Claimed just now")

    # Pressing again shows the same code, never a second one.
    browser.click("#claim-button")
    browser.wait_for("return document.querySelector('#claim-note').textContent.startsWith('You already had');")
    assert browser.text("#claim-code") == code
    assert sql(url, "SELECT count(*) FROM claims") == [(1,)]


def test_claim_page_explains_no_codes_left_and_not_signed_in(stack: Stack, browser: Browser, output_dir: Path):
    url = stack.database_url
    create_brand(url, "empty")
    browser.goto(stack.page_url + "#claim")
    browser.fill("#claim-brand", "empty")

    # No token at all: the call goes out without credentials and the service says UNAUTHENTICATED.
    browser.fill("#claim-email", "someone@example.com")
    assert browser.text("#claim-who") == "Not signed in."
    browser.click("#claim-button")
    browser.wait_visible("#claim-error")
    assert browser.text("#claim-error").startswith("Not signed in")
    assert browser.evaluate("return document.querySelector('#claim-error').dataset.code;") == "Unauthenticated"
    browser.screenshot(output_dir / "not-signed-in.png")

    # An expired token is "not signed in" too.
    browser.fill("#claim-token", token("shopper-2", "s2@example.com", ttl=-120))
    browser.click("#claim-button")
    browser.wait_for("return document.querySelector('#claim-error').textContent.includes('expired');")
    assert browser.text("#claim-error").startswith("Not signed in")

    # Signed in, but the brand has no codes: RESOURCE_EXHAUSTED, in words.
    browser.fill("#claim-token", token("shopper-2", "s2@example.com"))
    browser.click("#claim-button")
    browser.wait_for("return document.querySelector('#claim-error').dataset.code === 'ResourceExhausted';")
    assert browser.text("#claim-error").startswith("No codes left")
    # The page reads the service's reason from the error details (through Envoy), not the status alone.
    assert browser.evaluate("return document.querySelector('#claim-error').dataset.reason;") == "NO_CODES_LEFT"
    assert not browser.call("visible", selector="#claim-result")
    browser.screenshot(output_dir / "no-codes-left.png")
    assert sql(url, "SELECT count(*) FROM claims") == [(0,)]


def test_live_view_shows_50_claims_made_from_python(stack: Stack, browser: Browser, output_dir: Path):
    url = stack.database_url
    create_brand(url, "acme")
    generate_codes_sql(url, "acme", 100)
    open_live_view(stack, browser, "acme")

    make_claims(stack, "acme", range(50))
    claimed_at = time.monotonic()
    browser.wait_for(ROWS, 50)
    record(output_dir, "last_claim_to_50_rows_shown_s", time.monotonic() - claimed_at)
    time.sleep(0.5)  # anything extra would show up now

    assert table_sequences(browser) == list(range(1, 51))
    in_db = claims_in_db(url, "acme")
    assert table_codes(browser) == [code for _, code, _ in in_db]
    assert browser.text("#live-count") == "50"
    assert browser.text("#live-last-seq") == "50"
    # The sparkline counts the same 50 claims, per second of the last minute.
    values = browser.wait_for(
        "const v = document.querySelector('#live-sparkline').dataset.values;"
        "return v && v.split(',').reduce((a, b) => a + Number(b), 0) === 50 ? v : false;"
    )
    assert sum(int(v) for v in values.split(",")) == 50
    browser.screenshot(output_dir / "live-claims.png")


def test_live_view_catches_up_to_exactly_60_after_envoy_restarts(stack: Stack, browser: Browser, output_dir: Path):
    url = stack.database_url
    create_brand(url, "acme")
    generate_codes_sql(url, "acme", 100)
    open_live_view(stack, browser, "acme")
    make_claims(stack, "acme", range(50))
    browser.wait_for(ROWS, 50)
    assert table_sequences(browser) == list(range(1, 51))

    # Envoy goes away under the open stream; 10 claims happen while the page is cut off.
    stack.envoy.stop()
    browser.wait_for(STATE, "reconnecting")
    make_claims(stack, "acme", range(50, 60))
    browser.screenshot(output_dir / "live-claims-disconnected.png")
    assert len(table_sequences(browser)) == 50
    stack.envoy.start()
    envoy_back_at = time.monotonic()

    browser.wait_for(ROWS, 60, timeout=30)
    record(output_dir, "envoy_back_to_60_rows_shown_s", time.monotonic() - envoy_back_at)
    browser.wait_for(STATE, "live")
    time.sleep(1.0)  # a duplicate or a stray replay would arrive now
    assert table_sequences(browser) == list(range(1, 61))
    assert table_codes(browser) == [code for _, code, _ in claims_in_db(url, "acme")]
    assert browser.text("#live-count") == "60"
    assert int(browser.text("#live-reconnects")) >= 1
    browser.screenshot(output_dir / "live-claims-after-reconnect.png")


def test_page_from_another_origin_is_refused_by_cors(stack: Stack, browser: Browser, output_dir: Path):
    """The same page served from an origin Envoy does not allow: Chromium refuses the call, nothing is claimed."""
    url = stack.database_url
    create_brand(url, "acme")
    generate_codes_sql(url, "acme", 5)
    with serve_page(0, stack.envoy_url) as (_, other_port):
        assert f"http://127.0.0.1:{other_port}" != stack.origin
        browser.goto(f"http://127.0.0.1:{other_port}/#claim")
        browser.fill("#claim-token", token("shopper-x", "x@example.com"))
        browser.fill("#claim-brand", "acme")
        browser.click("#claim-button")
        browser.wait_visible("#claim-error")
        assert browser.text("#claim-error").startswith("The discount service cannot be reached")
        console = "\n".join(browser.console())
        assert "CORS policy" in console, console
        browser.screenshot(output_dir / "refused-origin.png")
    assert sql(url, "SELECT count(*) FROM claims") == [(0,)]


def test_live_view_resumes_after_the_server_restarts(stack: Stack, browser: Browser, output_dir: Path):
    """The server ends the stream cleanly on SIGTERM; the page resumes from its last sequence on the new one."""
    url = stack.database_url
    create_brand(url, "acme")
    generate_codes_sql(url, "acme", 100)
    open_live_view(stack, browser, "acme")
    make_claims(stack, "acme", range(30))
    browser.wait_for(ROWS, 30)

    port = int(stack.server.address.rsplit(":", 1)[1])
    assert stop_process(stack.server) == 0
    browser.wait_for(STATE, "reconnecting")
    stack.server = start_server_process(
        url, port, log_path=output_dir / "server-2.log", extra_env={"DISCOUNT_JWT_SECRET": JWT_SECRET}
    )
    make_claims(stack, "acme", range(30, 40))
    browser.wait_for(ROWS, 40, timeout=30)
    time.sleep(1.0)
    assert table_sequences(browser) == list(range(1, 41))
    assert table_codes(browser) == [code for _, code, _ in claims_in_db(url, "acme")]
    browser.screenshot(output_dir / "live-claims-after-server-restart.png")


def test_a_missing_browser_fails_loudly(output_dir: Path):
    """CI must fail, not skip, without Chromium: starting the driver raises with the reason."""
    with pytest.raises(RuntimeError, match="could not start Chromium: cannot launch /nonexistent/chromium"):
        Browser(output_dir / "browser.log", chromium="/nonexistent/chromium")
