"""Client commands of the `discount` CLI (generate, claim, stats, watch): they call a running server.

They use `discount_client` (retries, deadlines, error mapping, resumable watch) and read
DISCOUNT_ADDRESS (default 127.0.0.1:50051) and DISCOUNT_API_KEY. Every failure becomes one line
on stderr and exit status 1 (through `CommandError`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import unicodedata
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import Any

import discount_client
from discount_client import Claim, DiscountClient

from .. import codes
from ..settings import Settings
from .common import CommandError
from .remote import iso, service_client

DEFAULT_CHUNK = 100_000
# One command creates at most this many codes: it bounds how long one run takes and what a mistyped
# N can write. More codes take several runs, each with its own --request-id.
MAX_CODES_PER_COMMAND = 100_000_000
MAX_REQUEST_ID = 128
# Each GenerateCodes chunk gets this long; the server caps a call at its own default timeout.
CHUNK_TIMEOUT_SECONDS = 120.0


def _client() -> AbstractContextManager[DiscountClient]:
    return service_client("; create a key with `discount key create --role ...`")


def _claim_json(claim: Claim) -> dict[str, Any]:
    return {
        "sequence": claim.sequence,
        "brand_id": claim.brand_id,
        "code": claim.code,
        "user_id": claim.user_id,
        "email": claim.email,
        "claimed_at": iso(claim.claimed_at),
        "expires_at": iso(claim.expires_at),
    }


def _print(line: str) -> None:
    print(line, flush=True)


# -- generate ------------------------------------------------------------------------------------


def _parse_expires(raw: str | None) -> datetime | None:
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise CommandError(f"--expires {raw!r} is not an ISO 8601 time, e.g. 2030-01-31T23:59:59Z") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def chunk_sizes(count: int, chunk: int) -> Iterator[int]:
    """How `count` codes are split into GenerateCodes calls; chunk i has request_id f"{rid}-{i}".
    Made one at a time, so the CLI's memory does not grow with N."""
    for start in range(0, count, chunk):
        yield min(chunk, count - start)


def check_total(count: int, length: int) -> None:
    """Refuses, before any call, a total one command must not create: over the ceiling, or more than
    the server's share of the code space at this length (codes.space_is_safe), saying what would do."""
    if count > MAX_CODES_PER_COMMAND:
        raise CommandError(
            f"N must be at most {MAX_CODES_PER_COMMAND:,} codes per command, got {count:,}: "
            f"generate more in several runs of at most {MAX_CODES_PER_COMMAND:,}, each with its own --request-id"
        )
    # A length the server does not take at all is its to refuse, on the first call, creating nothing.
    if codes.MIN_LENGTH <= length <= codes.MAX_LENGTH and not codes.space_is_safe(count, length):
        raise CommandError(
            f"{count:,} codes of length {length} would fill more than {codes.MAX_SPACE_FRACTION:.2%} of the "
            f"{codes.code_space(length):,} possible codes: use --length {codes.minimum_safe_length(count)} or more, "
            f"or at most {codes.max_safe_count(length):,} codes of length {length}"
        )


def cmd_generate(args: argparse.Namespace, settings: Settings) -> None:
    from tqdm import tqdm

    if args.count < 1:
        raise CommandError(f"N must be at least 1, got {args.count}")
    if not 1 <= args.chunk_size <= 1_000_000:
        raise CommandError(f"--chunk-size must be between 1 and 1,000,000, got {args.chunk_size}")
    check_total(args.count, args.length or codes.DEFAULT_LENGTH)
    expires_at = _parse_expires(args.expires)
    request_id = args.request_id or str(uuid.uuid4())
    chunk_count = -(-args.count // args.chunk_size)
    suffix = len(f"-{chunk_count - 1}")
    if len(request_id) + suffix > MAX_REQUEST_ID:
        raise CommandError(
            f"--request-id must be at most {MAX_REQUEST_ID - suffix} characters for {chunk_count} chunk(s)"
        )
    generated = 0
    available = 0
    with (
        _client() as client,
        tqdm(
            total=args.count,
            unit="codes",
            unit_scale=True,
            file=sys.stderr,
            disable=args.count < args.progress_threshold,
            desc=f"generating for {args.brand_id}",
            mininterval=0.2,
        ) as progress,
    ):
        rerun = f"re-run with --request-id {request_id} to finish without creating any code twice"
        index, chunk_id = 0, ""
        try:
            for index, size in enumerate(chunk_sizes(args.count, args.chunk_size)):
                chunk_id = f"{request_id}-{index}"
                result = client.generate_codes(
                    args.brand_id,
                    size,
                    request_id=chunk_id,
                    prefix=args.prefix,
                    code_length=args.length,
                    expires_at=expires_at,
                    timeout=CHUNK_TIMEOUT_SECONDS,
                )
                generated += result.generated
                available = result.available
                progress.update(size)
                if index == 0 and not args.request_id:
                    # Said once the first chunk worked, so a request that fails outright stays one line.
                    progress.write(
                        f"request id {request_id}: if this run is interrupted, re-run with --request-id {request_id}",
                        file=sys.stderr,
                    )
        except discount_client.DiscountError as exc:
            if generated == 0 and exc.code in {"INVALID_ARGUMENT", "NOT_FOUND", "PERMISSION_DENIED", "UNAUTHENTICATED"}:
                raise  # nothing was created: the plain error says it all
            if exc.code == "FAILED_PRECONDITION":
                # E.g. the chunk's request_id was used before with other parameters: running the
                # same command again cannot help, so no advice to re-run; the server names the field.
                done = f", after {generated:,} of {args.count:,} codes" if generated else ""
                raise CommandError(
                    f"GenerateCodes failed at chunk {index + 1} of {chunk_count} (request id {chunk_id}){done}: "
                    f"{exc.code}: {exc}"
                ) from None
            raise CommandError(
                f"GenerateCodes failed after {generated:,} of {args.count:,} codes: {exc.code}: {exc}; {rerun}"
            ) from None
        except KeyboardInterrupt:
            progress.close()
            print(f"discount: interrupted after {generated:,} of {args.count:,} codes; {rerun}", file=sys.stderr)
            raise
    _print(
        f"generated {generated:,} codes for {args.brand_id} in {chunk_count} chunk(s) "
        f"(request id {request_id}); {available:,} available"
    )


# -- claim, stats, watch -------------------------------------------------------------------------


def cmd_claim(args: argparse.Namespace, settings: Settings) -> None:
    # NFC, as the server stores it (validation.user_id): what the terminal sends in another form is the same user.
    user_id = unicodedata.normalize("NFC", args.user_id)
    with _client() as client:
        result = client.claim_code(args.brand_id, user_id, args.email)
    claim = result.claim
    if args.json:
        _print(json.dumps({**_claim_json(claim), "newly_claimed": result.newly_claimed}))
        return
    how = "claimed" if result.newly_claimed else "already held"
    expires = f", expires {iso(claim.expires_at)}" if claim.expires_at else ""
    _print(f"{claim.code}  ({how} by {claim.user_id} <{claim.email}>, sequence {claim.sequence}{expires})")


def cmd_stats(args: argparse.Namespace, settings: Settings) -> None:
    with _client() as client:
        stats = client.get_brand_stats(args.brand_id)
    if args.json:
        _print(json.dumps(stats.__dict__))
        return
    _print(f"{'brand':<10} {stats.brand_id}")
    for name in ("total", "available", "claimed", "expired", "redeemed"):
        _print(f"{name:<10} {getattr(stats, name):,}")


# gRPC's own details for a transport failure contain these words; anything else under UNAVAILABLE
# is the server's message (e.g. about its database), worth passing on.
_CANNOT_CONNECT = ("failed to connect", "connection refused", "connect failed", "dns resolution failed")
_CONNECTION_LOST = ("socket closed", "connection reset", "broken pipe", "goaway", "end of stream", "rst_stream")


class _DisconnectReport:
    """Says on stderr, in words, why the watch stream stopped and when it reconnects.

    The common cases (the server ended the stream because it is stopping, nothing listens at the
    address) get a sentence each, without gRPC status names; a failure that repeats while the
    server is down says "still"."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.previous = ""

    def __call__(self, error: discount_client.DiscountError, delay: float, cursor: int) -> None:
        what = self.describe(error)
        still = "still " if what == self.previous and not what.startswith("the server closed") else ""
        self.previous = what
        print(
            f"discount: watch: {still}{what}; reconnecting in {delay:.1f}s, resuming after sequence {cursor}…",
            file=sys.stderr,
            flush=True,
        )

    def describe(self, error: discount_client.DiscountError) -> str:
        message = str(error)
        if error.code == "OK":
            return "the server closed the stream (it may be restarting)"
        if any(words in message.lower() for words in _CANNOT_CONNECT):
            return f"cannot reach the server at {self.address}"
        if any(words in message.lower() for words in _CONNECTION_LOST):
            return f"lost the connection to the server at {self.address}"
        if error.code == "UNAVAILABLE":
            return f"the server at {self.address} is unavailable: {message}"
        if error.code == "DEADLINE_EXCEEDED":
            return f"the server at {self.address} did not answer in time"
        if error.code == "CANCELLED":
            return "the stream was cancelled on the way (by a proxy or the server)"
        if error.code == "RESOURCE_EXHAUSTED":
            return f"the server is overloaded: {message}"
        return f"the stream broke: {message}"


def cmd_watch(args: argparse.Namespace, settings: Settings) -> None:
    if args.after < 0:
        raise CommandError(f"--after must be at least 0, got {args.after}")
    render: Callable[[Claim], str]
    if args.json:
        render = lambda claim: json.dumps(_claim_json(claim))  # noqa: E731
    else:
        render = lambda claim: "\t".join(  # noqa: E731
            [str(claim.sequence), iso(claim.claimed_at) or "", claim.code, claim.user_id, claim.email]
        )
    address = os.environ.get("DISCOUNT_ADDRESS") or discount_client.DEFAULT_ADDRESS
    with _client() as client:
        # A reader that goes away (`| head`) ends the watch through main's BrokenPipeError, as for every command.
        for claim in client.watch_claims(args.brand_id, args.after, on_disconnect=_DisconnectReport(address)):
            _print(render(claim))


# -- parser --------------------------------------------------------------------------------------


def add_client_commands(sub: Any) -> None:  # argparse's subparsers action has no public type
    """Adds generate, claim, stats and watch to the `discount` parser."""
    env = "Calls the server at DISCOUNT_ADDRESS (default 127.0.0.1:50051) with the API key in DISCOUNT_API_KEY."

    generate = sub.add_parser(
        "generate",
        help="generate N codes for a brand, in idempotent chunks",
        description=(
            f"Generate N codes for a brand, in idempotent chunks. N is at most {MAX_CODES_PER_COMMAND:,} per "
            f"command, and at most {codes.MAX_SPACE_FRACTION:.2%} of the possible codes of the chosen --length "
            f"(e.g. {codes.max_safe_count(6):,} of length 6); both are checked before any call. {env}"
        ),
    )
    generate.add_argument("brand_id", metavar="BRAND")
    generate.add_argument("count", metavar="N", type=int, help=f"how many codes, 1..{MAX_CODES_PER_COMMAND:,}")
    generate.add_argument("--prefix", default="", help="fixed code prefix: up to 16 of A-Z, 0-9 and '-'")
    generate.add_argument("--length", type=int, default=0, help="random characters per code, 6..32 (default 12)")
    generate.add_argument(
        "--expires", metavar="ISO8601", help="expiry time, e.g. 2030-01-31T23:59:59Z (UTC if no zone)"
    )
    generate.add_argument(
        "--request-id",
        metavar="ID",
        help="idempotency key of the run: re-running with the same ID creates nothing twice (default: new, printed)",
    )
    generate.add_argument(
        "--chunk-size",
        type=int,
        default=DEFAULT_CHUNK,
        help=f"codes per GenerateCodes call (default {DEFAULT_CHUNK:,})",
    )
    generate.add_argument("--progress-threshold", type=int, default=10_000, help=argparse.SUPPRESS)
    generate.set_defaults(func=cmd_generate)

    claim = sub.add_parser(
        "claim", help="claim a code of a brand for a user", description=f"Claim a code of a brand for a user. {env}"
    )
    claim.add_argument("brand_id", metavar="BRAND")
    claim.add_argument("user_id", metavar="USER")
    claim.add_argument("email", metavar="EMAIL")
    claim.add_argument("--json", action="store_true", help="print the claim as one JSON object")
    claim.set_defaults(func=cmd_claim)

    stats = sub.add_parser("stats", help="count a brand's codes", description=f"Count a brand's codes. {env}")
    stats.add_argument("brand_id", metavar="BRAND")
    stats.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    stats.set_defaults(func=cmd_stats)

    watch = sub.add_parser(
        "watch",
        help="print a brand's claims live, one line each, across reconnects",
        description=f"Print a brand's claims live, one line each, across reconnects. {env}",
    )
    watch.add_argument("brand_id", metavar="BRAND")
    watch.add_argument("--after", metavar="SEQ", type=int, default=0, help="start after this sequence (default 0)")
    watch.add_argument("--json", action="store_true", help="one JSON object per line")
    watch.set_defaults(func=cmd_watch)
