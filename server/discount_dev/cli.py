"""The dev commands of `discount`: `dev-stack` runs the server, Envoy and the web page on localhost;
`dev-token USER [--email E]` mints a shopper token signed with DISCOUNT_JWT_SECRET.

`discount_service.cli` adds them to its parser when this package is installed. A failure is a
`DevStackError`, which the CLI prints as one line and exits 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from discount_service.settings import Settings

from .stack import (
    DEFAULT_ADMIN_PORT,
    DEFAULT_ENVOY_PORT,
    DEFAULT_GRPC_PORT,
    DEFAULT_WEB_PORT,
    WEB_DIST,
    DevStackError,
    EnvoyProcess,
    RestartLimit,
    find_envoy,
    process_ended,
    render_envoy_config,
    serve_page,
)

__all__ = ["DevStackError", "add_dev_commands"]


def _wait_for_server(address: str, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    from .processes import NotServingError, wait_until_serving

    try:
        wait_until_serving(address, timeout, process)
    except NotServingError:
        if process.poll() is not None:
            raise DevStackError(f"`discount serve` exited with {process.returncode}; see its output above") from None
        raise DevStackError(f"`discount serve` on {address} not SERVING after {timeout:g}s") from None


def _stop_child(process: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def cmd_dev_stack(args: argparse.Namespace, settings: Settings) -> None:
    web_origin = f"http://127.0.0.1:{args.web_port}"
    origins = args.origin or [web_origin, f"http://localhost:{args.web_port}"]
    upstream_host, _, upstream_port = (args.upstream or f"127.0.0.1:{args.grpc_port}").rpartition(":")
    config = render_envoy_config(
        listen_port=args.envoy_port,
        admin_port=args.admin_port,
        upstream_host=upstream_host,
        upstream_port=int(upstream_port),
        origins=origins,
    )
    if args.print_envoy_config:
        print(config, end="")
        return
    find_envoy()
    if not (WEB_DIST / "index.html").exists():
        raise DevStackError(f"{WEB_DIST} has no built page; build it with `cd web && npm ci && npm run build`")
    with tempfile.TemporaryDirectory(prefix="discount-dev-stack-") as run_dir:
        config_path = Path(run_dir) / "envoy.yaml"
        config_path.write_text(config)
        _run_stack(args, settings, config_path, upstream_host, int(upstream_port), web_origin)


def _run_stack(
    args: argparse.Namespace, settings: Settings, config_path: Path, upstream_host: str, upstream_port: int, origin: str
) -> None:
    env = dict(os.environ)
    jwt_note = ""
    if not (settings.jwt_secret or settings.jwt_public_key):
        # A fresh secret for this run, so the "Get my code" view works out of the box.
        env["DISCOUNT_JWT_SECRET"] = secrets.token_urlsafe(32)
        jwt_note = f"export DISCOUNT_JWT_SECRET={env['DISCOUNT_JWT_SECRET']}  # this run's shopper-token secret\n  "
    server: subprocess.Popen[bytes] | None = None
    envoy = EnvoyProcess(config_path, args.envoy_port, args.admin_port)
    stopping = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        del signum, frame
        stopping.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if not args.upstream:
            address = f"127.0.0.1:{args.grpc_port}"
            env["DISCOUNT_LISTEN"] = address
            # Its own session: Ctrl-C reaches only us, and we stop it gracefully.
            server = subprocess.Popen(
                [sys.executable, "-m", "discount_service.cli", "serve"], env=env, start_new_session=True
            )
            _wait_for_server(address, server)
        envoy.start()
        envoy_url = f"http://127.0.0.1:{args.envoy_port}"
        with serve_page(args.web_port, envoy_url, brand=args.brand or ""):
            print(
                "\ndiscount dev stack is up:\n"
                f"  page           {origin}/   (#claim: Get my code, #live: Live claims)\n"
                f"  gRPC-Web       {envoy_url}   (Envoy; CORS allows {', '.join(args.origin or [origin])})\n"
                f"  gRPC           {upstream_host}:{upstream_port}   (discount serve; grpcurl, Python clients)\n"
                f"  Envoy admin    http://127.0.0.1:{args.admin_port}/\n"
                "Shopper token for the page:\n"
                f"  {jwt_note}discount dev-token USER_ID --email EMAIL\n"
                "Brand key for the live view: discount key create --role brand --brand BRAND\n"
                "Ctrl-C stops everything.",
                flush=True,
            )
            envoy_restarts = RestartLimit()
            while not stopping.wait(0.5):
                if server is not None and server.poll() is not None:
                    raise DevStackError(
                        f"{process_ended('`discount serve`', server)} — without the server there is nothing to "
                        "bridge to, so the stack stops (Envoy and the page too); its output is above"
                    )
                if envoy.process is not None and envoy.process.poll() is not None:
                    _restart_envoy(envoy, envoy_restarts, envoy_url)
    finally:
        envoy.stop()
        if server is not None:
            _stop_child(server)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        print("dev stack stopped", flush=True)


def _restart_envoy(envoy: EnvoyProcess, restarts: RestartLimit, envoy_url: str) -> None:
    """Envoy is only the browser's bridge: when it ends, start it again on the same ports rather than
    take the server and its database down; the page reconnects by itself. One that keeps dying stops
    the stack."""
    assert envoy.process is not None
    ended = process_ended("envoy", envoy.process)
    if not restarts.allow():
        raise DevStackError(
            f"{ended} — it ended {restarts.times + 1} times within {restarts.window_seconds:g}s, so the stack "
            "stops rather than restart it again (the server and the page too); Envoy's output is above"
        )
    print(f"dev-stack: {ended} — the browser bridge is gone; restarting it on {envoy_url}…", flush=True)
    envoy.restart()
    assert envoy.process is not None
    print(f"dev-stack: envoy is back (pid {envoy.process.pid}); the page reconnects by itself", flush=True)


def cmd_dev_token(args: argparse.Namespace, settings: Settings) -> None:
    from discount_service.tokens import HMAC_ALGORITHMS, JwtVerifier, mint_token

    if not settings.jwt_secret:
        raise DevStackError("set DISCOUNT_JWT_SECRET (the server's HS256 secret) to mint a test token")
    algorithm = settings.jwt_algorithm.upper() if settings.jwt_algorithm.upper() in HMAC_ALGORITHMS else "HS256"
    # The secret is checked as `discount serve` checks it (same rules, same message), so no token is
    # minted with a secret that no server would verify with.
    JwtVerifier.from_settings(dataclasses.replace(settings, jwt_algorithm=algorithm, jwt_public_key=None))
    print(
        mint_token(
            settings.jwt_secret,
            args.user_id,
            email=args.email,
            ttl_seconds=args.ttl,
            algorithm=algorithm,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )
    )


def add_dev_commands(sub: Any) -> None:  # argparse's subparsers action has no public type
    """Adds dev-stack and dev-token to the `discount` parser."""
    stack = sub.add_parser(
        "dev-stack",
        help="run the server, Envoy (gRPC-Web) and the web page on localhost; Ctrl-C stops them",
        description="Starts `discount serve`, Envoy with deploy/envoy/envoy.yaml and a static server for web/dist.",
    )
    ports = {
        "--grpc-port": (DEFAULT_GRPC_PORT, "gRPC port of `discount serve`"),
        "--envoy-port": (DEFAULT_ENVOY_PORT, "Envoy's gRPC-Web port"),
        "--web-port": (DEFAULT_WEB_PORT, "port serving the page"),
        "--admin-port": (DEFAULT_ADMIN_PORT, "Envoy's admin port, on 127.0.0.1"),
    }
    for option, (default, what) in ports.items():
        stack.add_argument(option, type=int, metavar="PORT", default=default, help=f"{what} (default: %(default)s)")
    stack.add_argument(
        "--origin",
        action="append",
        help="browser origin allowed by CORS (repeatable; default: the page's own, on 127.0.0.1 and localhost)",
    )
    stack.add_argument(
        "--upstream",
        metavar="HOST:PORT",
        help="use this running gRPC server instead of starting one (default: start one on --grpc-port)",
    )
    stack.add_argument("--brand", help="brand to prefill on the page (default: none)")
    stack.add_argument("--print-envoy-config", action="store_true", help="print the rendered Envoy config and exit")
    stack.set_defaults(func=cmd_dev_stack)

    token = sub.add_parser(
        "dev-token",
        help="mint a shopper token (JWT) signed with DISCOUNT_JWT_SECRET, for local testing",
    )
    token.add_argument("user_id", help="the shopper's user_id (the token's sub)")
    token.add_argument("--email", help="the shopper's email (the token's email claim)")
    token.add_argument("--ttl", type=int, default=3600, help="seconds until the token expires (default 3600)")
    token.set_defaults(func=cmd_dev_token)
