"""How the page looks, measured in a real headless Chromium: box widths, the connection pill, the
sparkline's label and scale, the favicon, and the layout at phone width (with a screenshot)."""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.browser.support import JWT_SECRET, Browser, Stack, token
from tests.browser.test_page import STATE, make_claims, open_live_view
from tests.support import create_brand, generate_codes_sql, start_server_process, stop_process

PHONE = {"width": 390, "height": 844}

RECT = "const r = document.querySelector(arg).getBoundingClientRect(); return [r.left, r.top, r.width, r.height];"
# Line boxes of an element's text: one rect per line it occupies.
LINES = "const range = document.createRange(); range.selectNodeContents(document.querySelector(arg));" \
        "return range.getClientRects().length;"  # fmt: skip
CONTENT_HEIGHT = (
    "const e = document.querySelector(arg), s = getComputedStyle(e);"
    "const edges = ['paddingTop', 'paddingBottom', 'borderTopWidth', 'borderBottomWidth'];"
    "return [e.getBoundingClientRect().height - edges.reduce((a, k) => a + parseFloat(s[k]), 0),"
    " parseFloat(s.fontSize)];"
)
# The element shows all of its text (nothing cut off by an ellipsis).
WHOLE_TEXT = "const e = document.querySelector(arg); return e.scrollWidth <= e.clientWidth;"
NO_OVERFLOW = "return [document.documentElement.scrollWidth, document.documentElement.clientWidth];"


def rect(browser: Browser, selector: str) -> tuple[float, float, float, float]:
    left, top, width, height = browser.evaluate(RECT, selector)
    return float(left), float(top), float(width), float(height)


def show_claim_result_and_error(stack: Stack, browser: Browser) -> None:
    url = stack.database_url
    create_brand(url, "acme")
    create_brand(url, "empty")
    generate_codes_sql(url, "acme", 5)
    browser.goto(stack.page_url + "#claim")
    browser.fill("#claim-token", token("shopper-1", "shopper1@example.com"))
    browser.fill("#claim-brand", "acme")
    browser.click("#claim-button")
    browser.wait_visible("#claim-result")


def assert_boxes_as_wide_as_the_form(browser: Browser) -> None:
    form = rect(browser, "#claim-form")
    result = rect(browser, "#claim-result")
    assert (result[0], result[2]) == (form[0], form[2]), f"form {form}, result {result}"
    browser.fill("#claim-brand", "empty")
    browser.click("#claim-button")
    browser.wait_visible("#claim-error")
    error = rect(browser, "#claim-error")
    assert (error[0], error[2]) == (form[0], form[2]), f"form {form}, error {error}"


def test_result_and_error_boxes_are_exactly_as_wide_as_the_form(stack: Stack, browser: Browser, output_dir: Path):
    show_claim_result_and_error(stack, browser)
    assert_boxes_as_wide_as_the_form(browser)
    browser.screenshot(output_dir / "claim-boxes.png")


def test_connection_lost_pill_is_words_on_one_line(stack: Stack, browser: Browser, output_dir: Path):
    url = stack.database_url
    create_brand(url, "acme")
    generate_codes_sql(url, "acme", 10)
    open_live_view(stack, browser, "acme")
    make_claims(stack, "acme", range(3))
    browser.wait_for("return document.querySelector('#live-last-seq').textContent === '3';")

    stack.envoy.stop()
    browser.wait_for(STATE, "reconnecting")
    text = browser.text("#live-status")
    assert text == "Connection lost; reconnecting from #3…", text
    for jargon in ("Unknown", "Failed to fetch", "network error", "Unavailable", "fetch"):
        assert jargon not in text
    assert browser.evaluate(LINES, "#live-status") == 1
    assert browser.evaluate(WHOLE_TEXT, "#live-status"), "the pill's text is cut off"
    # One line, and on the same row as the counters and the sparkline, not pushed onto a row of its own.
    pill, counter = rect(browser, "#live-status"), rect(browser, "#live-count")
    content_height, font_size = browser.evaluate(CONTENT_HEIGHT, "#live-status")
    assert content_height < 1.6 * font_size, (content_height, font_size)  # one line is ~1.2 em, two ~2.4 em
    assert pill[1] < counter[1] + counter[3] and counter[1] < pill[1] + pill[3], f"pill {pill}, counter {counter}"
    browser.screenshot(output_dir / "connection-lost.png")

    stack.envoy.start()
    browser.wait_for(STATE, "live", timeout=30)


# Every text the pill shows, in order, recorded in the page (some last only a few hundred ms).
RECORD_PILL = (
    "window.pillTexts = []; const pill = document.querySelector('#live-status');"
    "new MutationObserver(() => window.pillTexts.push(pill.textContent))"
    ".observe(pill, {childList: true, characterData: true, subtree: true}); return true;"
)


def test_pill_says_the_server_closed_the_feed_then_that_the_service_is_unavailable(
    stack: Stack, browser: Browser, output_dir: Path
):
    url = stack.database_url
    create_brand(url, "acme")
    generate_codes_sql(url, "acme", 10)
    open_live_view(stack, browser, "acme")
    make_claims(stack, "acme", range(2))
    browser.wait_for("return document.querySelector('#live-last-seq').textContent === '2';")
    browser.evaluate(RECORD_PILL)

    # SIGTERM: the server ends the stream on its way out, then Envoy has no server behind it.
    port = int(stack.server.address.rsplit(":", 1)[1])
    assert stop_process(stack.server) == 0
    browser.wait_for("return window.pillTexts.some(t => t.startsWith('Service unavailable'));")
    browser.screenshot(output_dir / "service-unavailable.png")
    stack.server = start_server_process(
        url, port, log_path=output_dir / "server-2.log", extra_env={"DISCOUNT_JWT_SECRET": JWT_SECRET}
    )
    browser.wait_for(STATE, "live", timeout=30)
    texts = [text for text in browser.evaluate("return window.pillTexts;") if "reconnecting" in text]
    assert texts[0] == "Server closed the feed; reconnecting from #2…", texts
    assert set(texts[1:]) == {"Service unavailable; reconnecting from #2…"}, texts


def test_sparkline_has_a_label_a_scale_and_says_when_there_are_no_claims(
    stack: Stack, browser: Browser, output_dir: Path
):
    url = stack.database_url
    create_brand(url, "acme")
    generate_codes_sql(url, "acme", 20)
    open_live_view(stack, browser, "acme")
    assert browser.text("#live-spark-label") == "claims/s, last 60 s"
    assert browser.call("visible", selector="#live-spark-empty")
    assert browser.text("#live-spark-empty") == "no claims yet"
    assert not browser.call("visible", selector="#live-spark-max")
    browser.screenshot(output_dir / "sparkline-idle.png")

    make_claims(stack, "acme", range(7))
    values = browser.wait_for(
        "const v = document.querySelector('#live-sparkline').dataset.values;"
        "return v && v.split(',').reduce((a, b) => a + Number(b), 0) === 7 ? v : false;"
    )
    peak = max(int(v) for v in values.split(","))
    browser.wait_for("return !document.querySelector('#live-spark-empty').checkVisibility();")
    assert browser.call("visible", selector="#live-spark-max")
    assert browser.text("#live-spark-max") == f"{peak}/s"
    assert browser.text("#live-spark-zero") == "0"
    browser.screenshot(output_dir / "sparkline-claims.png")


@contextlib.contextmanager
def recording_proxy(upstream: str) -> Iterator[tuple[str, list[tuple[str, int]]]]:
    """An HTTP proxy in front of the page server that records every (path, status) the browser asked for,
    including the requests Chromium makes on its own (the favicon), which the page's scripts never see."""
    seen: list[tuple[str, int]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            try:
                with urllib.request.urlopen(upstream + self.path, timeout=10) as reply:  # noqa: S310 - our page
                    status, headers, body = reply.status, reply.headers, reply.read()
            except urllib.error.HTTPError as exc:
                status, headers, body = exc.code, exc.headers, exc.read()
            seen.append((self.path, status))
            self.send_response(status)
            for name in ("Content-Type", "Cache-Control"):
                if headers.get(name):
                    self.send_header(name, headers[name])
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            del format, args

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_the_page_has_a_favicon_and_no_request_fails(stack: Stack, browser: Browser, output_dir: Path):
    with recording_proxy(stack.origin) as (proxy, seen):
        browser.goto(proxy + "/#claim")
        deadline = time.monotonic() + 15
        while not any("favicon" in path for path, _ in seen):
            assert time.monotonic() < deadline, f"the browser never asked for a favicon: {seen}"
            time.sleep(0.1)
        time.sleep(0.5)  # anything the page loads after its icon
    failed = [(path, status) for path, status in seen if status >= 400]
    assert failed == [], seen
    icons = [path for path, _ in seen if "favicon" in path]
    assert icons == ["/favicon.svg"], seen
    console = browser.console()
    assert not [line for line in console if "Failed to load resource" in line], console
    with urllib.request.urlopen(stack.origin + "/favicon.svg", timeout=5) as reply:  # noqa: S310
        assert reply.headers["Content-Type"] == "image/svg+xml"
        assert reply.read().lstrip().startswith(b"<svg")


def test_phone_width_live_form_keeps_its_buttons_together_and_nothing_overflows(
    stack: Stack, browser: Browser, output_dir: Path
):
    url = stack.database_url
    create_brand(url, "shop")
    generate_codes_sql(url, "shop", 20)
    browser.call("viewport", **PHONE)
    open_live_view(stack, browser, "shop")
    make_claims(stack, "shop", range(12))
    browser.wait_for("return document.querySelectorAll('#live-table tbody tr').length === 12;")
    time.sleep(1.6)  # the fresh-row highlight fades, for a clean screenshot
    browser.screenshot(output_dir / "phone-live.png")

    watch, stop = rect(browser, "#live-start"), rect(browser, "#live-stop")
    assert watch[1] == stop[1], f"Watch {watch}, Stop {stop}: not on one row"
    brand, key = rect(browser, "#live-brand"), rect(browser, "#live-key")
    assert brand[1] == key[1], f"Brand {brand}, Brand key {key}: not on one row"
    for control in (watch, stop, brand, key):
        assert control[0] >= 0 and control[0] + control[2] <= PHONE["width"], control
    scroll_width, client_width = browser.evaluate(NO_OVERFLOW)
    assert scroll_width <= PHONE["width"] and client_width == PHONE["width"], (scroll_width, client_width)
    assert browser.evaluate(LINES, "#live-status") == 1

    # Cut off from Envoy: the pill still fits on one line, whole, and nothing overflows.
    stack.envoy.stop()
    browser.wait_for(STATE, "reconnecting")
    assert browser.text("#live-status") == "Connection lost; reconnecting from #12…"
    assert browser.evaluate(LINES, "#live-status") == 1
    assert browser.evaluate(WHOLE_TEXT, "#live-status"), "the pill's text is cut off"
    assert browser.evaluate(NO_OVERFLOW)[0] <= PHONE["width"]
    browser.screenshot(output_dir / "phone-live-reconnecting.png")
    stack.envoy.start()
    browser.wait_for(STATE, "live", timeout=30)

    # The claim view at the same width: nothing sticks out either, and its boxes match the form.
    show_claim_result_and_error(stack, browser)
    assert_boxes_as_wide_as_the_form(browser)
    browser.screenshot(output_dir / "phone-claim.png")
    scroll_width, _ = browser.evaluate(NO_OVERFLOW)
    assert scroll_width <= PHONE["width"], scroll_width
