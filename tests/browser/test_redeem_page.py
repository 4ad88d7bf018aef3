"""The page's "Use code" step in a real browser: headless Chromium -> Envoy (gRPC-Web) -> discount serve
-> PostgreSQL. After a claim, the code is redeemed on an order with the shop's key; a refusal shows the
service's reason in words."""

from __future__ import annotations

from pathlib import Path

from tests.browser.support import Browser, Stack, token
from tests.support import create_brand, create_key, generate_codes_sql, sql

SHOWN = "return !document.querySelector(arg).hidden;"
REASON = "return document.querySelector('#redeem-error').dataset.reason === arg;"


def claim_on_page(browser: Browser, user: str) -> str:
    browser.fill("#claim-token", token(user, f"{user}@example.com"))
    browser.fill("#claim-brand", "acme")
    browser.click("#claim-button")
    browser.wait_visible("#claim-result")
    return browser.text("#claim-code")


def test_use_code_after_a_claim_redeems_it_and_explains_a_refusal(
    stack: Stack, browser: Browser, output_dir: Path
) -> None:
    url = stack.database_url
    create_brand(url, "acme")
    generate_codes_sql(url, "acme", 5)
    browser.goto(stack.page_url + "#claim")
    browser.wait_for("return document.body.dataset.ready === 'true';")
    assert browser.evaluate(SHOWN, "#redeem-form") is False  # nothing to use before a claim
    code = claim_on_page(browser, "shopper-1")
    browser.wait_for(SHOWN, "#redeem-form")
    assert browser.evaluate("return document.querySelector('#redeem-code').value;") == code

    # The shopper types the code in lower case; the shop's backend redeems it with its service key.
    browser.fill("#redeem-code", code.lower())
    browser.fill("#redeem-order", "order-1")
    browser.fill("#redeem-key", create_key(url, "service"))
    browser.click("#redeem-button")
    browser.wait_visible("#redeem-result")
    assert browser.text("#redeem-note").startswith("Used on order order-1 at ")
    browser.screenshot(output_dir / "use-code.png")
    assert sql(url, "SELECT code, user_id, order_id, cancelled_at FROM redemptions") == [
        (code, "shopper-1", "order-1", None)
    ]

    # The same order again changes nothing.
    browser.click("#redeem-button")
    browser.wait_for("return document.querySelector('#redeem-result').dataset.newly === 'false';")
    assert browser.text("#redeem-note") == "Already used on order order-1: nothing changed."

    # Another order: the code is in use; the reason is shown in words, never as a bare status.
    browser.fill("#redeem-order", "order-2")
    browser.click("#redeem-button")
    browser.wait_for(REASON, "CODE_ALREADY_REDEEMED")
    assert browser.evaluate("return document.querySelector('#redeem-result').hidden;") is True
    assert browser.text("#redeem-error").startswith("This code is already used on another order.")
    browser.screenshot(output_dir / "use-code-refused.png")

    # Another shopper's code is not theirs to use; another brand's key may not redeem at all.
    browser.fill("#redeem-code", "T-NOSUCHCODE")
    browser.click("#redeem-button")
    browser.wait_for(REASON, "CODE_NOT_FOUND")
    assert browser.text("#redeem-error") == "This brand has no such code: check what you typed."
    create_brand(url, "globex")
    browser.fill("#redeem-key", create_key(url, "brand", "globex"))
    browser.click("#redeem-button")
    browser.wait_for(REASON, "PERMISSION_DENIED")
    assert browser.text("#redeem-error").startswith("Not allowed: ")
    assert sql(url, "SELECT count(*) FROM redemptions") == [(1,)]
