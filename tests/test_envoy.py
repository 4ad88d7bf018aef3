"""Envoy's gRPC-Web listener (deploy/envoy/envoy.yaml) with real HTTP requests: CORS, long streams, the
upstream health check, and the curl example of docs/browsers.md."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from discount.v1 import discount_service_pb2 as pb
from discount.v1 import discount_service_pb2_grpc as pb_grpc
from tests.browser.support import (
    JWT_SECRET,
    STATUS_NAMES,
    Stack,
    frame,
    grpc_web_call,
    module_stack,
    parse_frames,
    running_stack,
    token,
)
from tests.readme_support import readme_section
from tests.support import (
    BIN,
    ROOT,
    claim_request,
    create_brand,
    create_key,
    free_port,
    generate_codes_sql,
    sql,
    start_server_process,
    stop_process,
)

NEEDED_HEADERS = ["content-type", "x-grpc-web", "x-user-agent", "grpc-timeout", "x-api-key", "authorization"]


@pytest.fixture(scope="module")
def stack(databases: Any) -> Iterator[Stack]:
    with module_stack(databases, "test_envoy") as running:
        create_brand(running.database_url, "acme")
        generate_codes_sql(running.database_url, "acme", 100)
        yield running


def preflight(stack: Stack, origin: str) -> tuple[int, dict[str, str]]:
    request = urllib.request.Request(  # noqa: S310
        f"{stack.envoy_url}/discount.v1.DiscountService/ClaimCode",
        method="OPTIONS",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-grpc-web,x-user-agent,authorization,x-api-key",
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}


def header_list(value: str) -> set[str]:
    return {part.strip().lower() for part in value.split(",") if part.strip()}


def test_cors_preflight_from_the_page_origin_is_allowed(stack: Stack):
    status, headers = preflight(stack, stack.origin)
    assert status == 200
    assert headers["access-control-allow-origin"] == stack.origin
    assert "POST" in headers["access-control-allow-methods"]
    assert header_list(headers["access-control-allow-headers"]) >= set(NEEDED_HEADERS)
    assert header_list(headers["access-control-expose-headers"]) >= {"grpc-status", "grpc-message"}


@pytest.mark.parametrize(
    "origin",
    ["http://evil.example", "http://127.0.0.1:1", "http://127.0.0.1.evil.example", "null"],
)
def test_cors_preflight_from_another_origin_is_refused(stack: Stack, origin: str):
    status, headers = preflight(stack, origin)
    # No grant: a browser refuses to send the call. (Envoy answers the preflight itself, never the server.)
    assert "access-control-allow-origin" not in headers
    assert "access-control-expose-headers" not in headers
    assert status in (200, 403)


def test_the_answer_to_a_call_is_only_readable_by_the_allowed_origin(stack: Stack):
    headers = {"authorization": f"Bearer {token('cors-user', 'cors@example.com')}"}
    request = pb.ClaimCodeRequest(brand_id="acme", user_id="cors-user", email="cors@example.com")
    allowed = grpc_web_call(stack.envoy_url, "ClaimCode", request, headers={**headers, "origin": stack.origin})
    assert allowed.headers["access-control-allow-origin"] == stack.origin
    assert header_list(allowed.headers["access-control-expose-headers"]) >= {"grpc-status", "grpc-message"}
    other = grpc_web_call(stack.envoy_url, "ClaimCode", request, headers={**headers, "origin": "http://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_paths_other_than_the_service_are_404(stack: Stack):
    with pytest.raises(urllib.error.HTTPError) as raised:
        urllib.request.urlopen(f"{stack.envoy_url}/admin", timeout=10)  # noqa: S310
    assert raised.value.code == 404


def test_readme_grpc_web_curl_example_works(stack: Stack):
    section = readme_section("Browsers (gRPC-Web through Envoy)")
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    curl = next(block for block in blocks if "application/grpc-web+proto" in block)
    assert "http://127.0.0.1:8081" in curl
    script = curl.replace("http://127.0.0.1:8081", stack.envoy_url)
    # The example claims for alice at acme, as written.
    env = {**os.environ, "DISCOUNT_JWT_SECRET": JWT_SECRET, "PATH": f"{BIN}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    [(code,)] = sql(stack.database_url, "SELECT code FROM claims WHERE user_id = 'alice'")
    assert code in done.stdout
    assert "alice@example.com" in done.stdout
    assert "grpc-status:0" in done.stdout


def test_watch_stream_through_envoy_survives_a_quiet_spell_longer_than_15s(stack: Stack):
    """Envoy's default route timeout (15 s) would end a quiet WatchClaims stream; ours must not."""
    brand_key = create_key(stack.database_url, "brand", "acme")
    [(last,)] = sql(
        stack.database_url,
        "SELECT coalesce(max(sequence), 0) FROM claims JOIN brands USING (brand_key) WHERE brand_id = 'acme'",
    )
    port = int(stack.envoy_url.rsplit(":", 1)[1])
    received: dict[str, Any] = {}

    def watch() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request(
                "POST",
                "/discount.v1.DiscountService/WatchClaims",
                body=frame(pb.WatchClaimsRequest(brand_id="acme", after_sequence=last)),
                headers={"content-type": "application/grpc-web+proto", "x-grpc-web": "1", "x-api-key": brand_key},
            )
            response = conn.getresponse()
            received["status"] = response.status
            received["grpc-status"] = response.getheader("grpc-status")
            head = response.read(5)
            body = response.read(int.from_bytes(head[1:5], "big"))
            received["frames"] = parse_frames(head + body)
            received["at"] = time.monotonic()
        except Exception as exc:
            received["error"] = repr(exc)
        finally:
            conn.close()

    started = time.monotonic()
    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    time.sleep(17)
    assert reader.is_alive(), f"the stream ended during the quiet spell: {received}"
    service_key = create_key(stack.database_url, "service")
    with grpc.insecure_channel(stack.server.address) as channel:
        claimed = pb_grpc.DiscountServiceStub(channel).ClaimCode(
            claim_request("acme", "after-quiet-spell"), metadata=(("x-api-key", service_key),), timeout=10
        )
    reader.join(timeout=20)
    assert "error" not in received, received
    assert received["status"] == 200 and received["grpc-status"] is None
    messages, trailers = received["frames"]
    assert trailers == {}
    claim = pb.WatchClaimsResponse.FromString(messages[0]).claim
    assert (claim.sequence, claim.code) == (claimed.claim.sequence, claimed.claim.code)
    assert received["at"] - started > 17


def envoy_admin(stack: Stack, path: str) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{stack.envoy.admin_port}{path}", timeout=5) as reply:  # noqa: S310
        return reply.read().decode()


def host_health(stack: Stack) -> str:
    flags = [line for line in envoy_admin(stack, "/clusters").splitlines() if "::health_flags::" in line]
    assert len(flags) == 1, flags
    return flags[0].rsplit("::", 1)[1]


def wait_until(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.2)


def test_envoy_health_checks_the_server_with_grpc_health_v1(database_url: str, output_dir: Any):
    create_brand(database_url, "acme")
    generate_codes_sql(database_url, "acme", 10)
    with running_stack(database_url, output_dir) as stack:
        stats = envoy_admin(stack, "/stats?filter=discount_grpc.health_check")
        assert int(re.search(r"health_check\.success: (\d+)", stats).group(1)) >= 1
        assert host_health(stack) == "healthy"
        headers = {"authorization": f"Bearer {token('hc-user', 'hc@example.com')}"}
        request = pb.ClaimCodeRequest(brand_id="acme", user_id="hc-user", email="hc@example.com")

        # The server goes away: Envoy marks it failed and answers UNAVAILABLE itself.
        port = int(stack.server.address.rsplit(":", 1)[1])
        assert stop_process(stack.server) == 0
        wait_until(lambda: host_health(stack) != "healthy")
        down = grpc_web_call(stack.envoy_url, "ClaimCode", request, headers=headers)
        assert STATUS_NAMES[down.grpc_status] == "UNAVAILABLE", down

        # Back on the same port: healthy again, and calls go through.
        stack.server = start_server_process(
            database_url,
            port,
            log_path=output_dir / "server-2.log",
            extra_env={"DISCOUNT_JWT_SECRET": JWT_SECRET, "DISCOUNT_POOL_MIN_SIZE": "1", "DISCOUNT_POOL_MAX_SIZE": "4"},
        )
        wait_until(lambda: host_health(stack) == "healthy")
        up = grpc_web_call(stack.envoy_url, "ClaimCode", request, headers=headers)
        assert STATUS_NAMES[up.grpc_status] == "OK", up
        assert pb.ClaimCodeResponse.FromString(up.messages[0]).claim.user_id == "hc-user"


def test_dev_stack_prints_a_valid_envoy_config(tmp_path: Any):
    done = subprocess.run(
        [str(BIN / "discount"), "dev-stack", "--print-envoy-config", "--origin", "https://shop.example"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert '{exact: "https://shop.example"}' in done.stdout
    config = tmp_path / "envoy.yaml"
    config.write_text(done.stdout)
    envoy = BIN / "envoy"
    checked = subprocess.run(
        [str(envoy), "--mode", "validate", "-c", str(config), "--use-dynamic-base-id"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_dev_stack_runs_server_envoy_and_page_and_ctrl_c_stops_them(database_url: str, output_dir: Any):
    create_brand(database_url, "acme")
    generate_codes_sql(database_url, "acme", 7)
    admin_key = create_key(database_url, "admin")
    grpc_port, envoy_port, web_port, admin_port = (free_port() for _ in range(4))
    env = {**os.environ, "DISCOUNT_DATABASE_URL": database_url, "DISCOUNT_POOL_MIN_SIZE": "1"}
    env.pop("DISCOUNT_JWT_SECRET", None)
    log_path = output_dir / "dev-stack.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [str(BIN / "discount"), "dev-stack", "--grpc-port", str(grpc_port), "--envoy-port", str(envoy_port),
             "--web-port", str(web_port), "--admin-port", str(admin_port), "--brand", "acme"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        try:
            wait_until(lambda: "dev stack is up" in log_path.read_text() or process.poll() is not None, timeout=60)
            text = log_path.read_text()
            assert process.poll() is None, text
            assert f"http://127.0.0.1:{web_port}/" in text and f"http://127.0.0.1:{envoy_port}" in text
            # It made up a shopper-token secret for this run and says so.
            secret = re.search(r"export DISCOUNT_JWT_SECRET=(\S+)", text).group(1)

            with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/", timeout=5) as page:  # noqa: S310
                assert "Get my code" in page.read().decode()
            with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/config.json", timeout=5) as config:  # noqa: S310
                assert json.loads(config.read()) == {"envoyUrl": f"http://127.0.0.1:{envoy_port}", "brand": "acme"}

            envoy_url = f"http://127.0.0.1:{envoy_port}"
            stats = grpc_web_call(
                envoy_url, "GetBrandStats", pb.GetBrandStatsRequest(brand_id="acme"), headers={"x-api-key": admin_key}
            )
            assert pb.GetBrandStatsResponse.FromString(stats.messages[0]).total == 7
            shopper = token("dev-shopper", "dev@example.com", secret=secret)
            claimed = grpc_web_call(
                envoy_url,
                "ClaimCode",
                pb.ClaimCodeRequest(brand_id="acme", user_id="dev-shopper", email="dev@example.com"),
                headers={"authorization": f"Bearer {shopper}", "origin": f"http://127.0.0.1:{web_port}"},
            )
            assert claimed.grpc_status == 0, claimed
            assert claimed.headers["access-control-allow-origin"] == f"http://127.0.0.1:{web_port}"
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
            code = process.wait(timeout=30)
    assert code == 0, log_path.read_text()
    assert "dev stack stopped" in log_path.read_text()
    for port in (grpc_port, envoy_port, web_port, admin_port):
        with socket.socket() as probe:
            assert probe.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open after Ctrl-C"
