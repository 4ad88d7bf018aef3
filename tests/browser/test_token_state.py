"""The "Get my code" page says what state the pasted token is in, never "Signed in as …" above "Not
signed in" for a token that is not: expired (seen by the page itself, also when it expires while open)
or not valid (a forged token, which only the service can tell). Headless Chromium -> Envoy -> server."""

from __future__ import annotations

from pathlib import Path

from tests.browser.support import Browser, Stack, token
from tests.support import create_brand, generate_codes_sql, sql

STATE = "return document.querySelector('#claim-who').dataset.state === arg;"


def who(browser: Browser) -> tuple[str, str]:
    state = browser.evaluate("return document.querySelector('#claim-who').dataset.state;")
    return str(state), browser.text("#claim-who")


def test_the_page_shows_an_expired_or_forged_token_for_what_it_is(stack: Stack, browser: Browser, output_dir: Path):
    url = stack.database_url
    create_brand(url, "acme")
    generate_codes_sql(url, "acme", 5)
    browser.goto(stack.page_url + "#claim")
    browser.fill("#claim-brand", "acme")
    assert who(browser) == ("none", "Not signed in.")

    # Expired two minutes ago: the page sees it before asking, and the service agrees.
    browser.fill("#claim-token", token("alice", "alice@example.com", ttl=-120))
    state, text = who(browser)
    assert state == "expired" and text.startswith("Token expired at ") and "Signed in" not in text, text
    assert text.endswith(": sign in again to get a new one.")
    browser.click("#claim-button")
    browser.wait_visible("#claim-error")
    assert browser.text("#claim-error") == (
        "Not signed in: your sign-in is no longer valid (the bearer token has expired; sign in again)."
    )
    assert who(browser) == (state, text)
    browser.screenshot(output_dir / "token-expired.png")

    # Forged (signed with another secret): it looks fine to the page until the service refuses it.
    browser.fill("#claim-token", token("alice", "alice@example.com", secret="not-the-server-secret-0123456789abcdef"))
    assert who(browser) == ("signed-in", "Signed in as alice (alice@example.com).")
    browser.click("#claim-button")
    browser.wait_for(STATE, "invalid")
    assert who(browser) == ("invalid", "Token not valid: the bearer token's signature is not valid.")
    assert browser.text("#claim-error") == (
        "Not signed in: your sign-in is not valid (the bearer token's signature is not valid)."
    )
    browser.screenshot(output_dir / "token-not-valid.png")

    # A token that expires while the page is open turns "expired" by itself.
    browser.fill("#claim-token", token("alice", "alice@example.com", ttl=2))
    assert who(browser)[0] == "signed-in"
    browser.wait_for(STATE, "expired", timeout=10)
    assert who(browser)[1].startswith("Token expired at ")

    # A good token again: signed in, and the claim works.
    browser.fill("#claim-token", token("alice", "alice@example.com"))
    assert who(browser) == ("signed-in", "Signed in as alice (alice@example.com).")
    browser.click("#claim-button")
    browser.wait_visible("#claim-result")
    assert who(browser)[0] == "signed-in"
    assert sql(url, "SELECT user_id FROM claims") == [("alice",)]
