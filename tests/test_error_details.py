"""The standard rich error model (AIP-193): every error status carries a google.rpc.Status in the
`grpc-status-details-bin` trailer with an ErrorInfo (domain discount.v1, a stable reason), and a bad
request a BadRequest naming the field. Read as a user reads it, with the real grpcurl against a real
server; and through the real Python client, which picks its exception by that reason, so a message
over gRPC's size limit is RequestTooLarge and never "no codes left"."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from discount_client import AsyncDiscountClient, DiscountClient, InvalidArgument, NoCodesLeft, RequestTooLarge
from discount_dev.postgres import PrivatePostgres
from discount_service.store import Store
from tests.readme_support import README_ADDRESS, code_blocks, readme_section
from tests.support import BIN, ServerHandle, create_brand, create_key, generate_codes_sql, in_process_server, sql

SERVICE = "discount.v1.DiscountService"
ERROR_INFO = "type.googleapis.com/google.rpc.ErrorInfo"
BAD_REQUEST = "type.googleapis.com/google.rpc.BadRequest"


@dataclass
class GrpcurlError:
    """What grpcurl printed for a failed call: exit status, code, message and the decoded details."""

    exit_status: int
    code: str
    message: str
    details: list[dict[str, Any]]
    output: str

    def detail(self, type_url: str) -> dict[str, Any]:
        found = [d for d in self.details if d["@type"] == type_url]
        assert len(found) == 1, self.output
        return found[0]


async def grpcurl_error(address: str, method: str, body: dict[str, Any], key: str | None = None) -> GrpcurlError:
    """Runs `grpcurl -plaintext [-H x-api-key: KEY] -d BODY ADDRESS SERVICE/METHOD`, which must fail."""
    headers = ["-H", f"x-api-key: {key}"] if key else []
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "grpcurl"),
        "-plaintext",
        *headers,
        "-d",
        json.dumps(body),
        address,
        f"{SERVICE}/{method}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    text = out.decode()
    assert proc.returncode != 0, text
    # ERROR:
    #   Code: NotFound
    #   Message: brand 'nope' does not exist
    #   Details:
    #   1)	{"@type":"type.googleapis.com/google.rpc.ErrorInfo","domain":"discount.v1","reason":"BRAND_NOT_FOUND"}
    code = re.search(r"^  Code: (\w+)$", text, re.M)
    message = re.search(r"^  Message: (.*)$", text, re.M)
    assert code and message, text
    details = [json.loads(m) for m in re.findall(r"^  \d+\)\s+(\{.*\})$", text, re.M)]
    assert "  Details:" in text and details, f"grpcurl shows no details:\n{text}"
    assert proc.returncode is not None
    return GrpcurlError(proc.returncode, code.group(1), message.group(1), details, text)


def assert_error_info(error: GrpcurlError, reason: str) -> None:
    info = error.detail(ERROR_INFO)
    assert (info["domain"], info["reason"]) == ("discount.v1", reason), error.output


async def test_grpcurl_shows_the_reason_of_every_kind_of_error(server: ServerHandle) -> None:
    url, address = server.database_url, server.address
    create_brand(url, "acme")
    create_brand(url, "empty")
    generate_codes_sql(url, "acme", 5)
    service_key = create_key(url, "service")
    claim = {"brand_id": "acme", "user_id": "user-42", "email": "user42@example.com"}

    unknown = await grpcurl_error(address, "ClaimCode", {**claim, "brand_id": "nope"}, service_key)
    assert (unknown.code, unknown.message) == ("NotFound", "brand 'nope' does not exist")
    assert_error_info(unknown, "BRAND_NOT_FOUND")

    empty = await grpcurl_error(address, "ClaimCode", {**claim, "brand_id": "empty"}, service_key)
    assert (empty.code, empty.message) == (
        "ResourceExhausted",
        "brand 'empty' has no codes left; ask the brand to generate more",
    )
    assert_error_info(empty, "NO_CODES_LEFT")

    bad_email = await grpcurl_error(address, "ClaimCode", {**claim, "email": "not-an-address"}, service_key)
    assert bad_email.code == "InvalidArgument"
    assert bad_email.message == "email 'not-an-address' is not a valid address (expected name@example.com)"
    assert_error_info(bad_email, "INVALID_FIELD")
    (violation,) = bad_email.detail(BAD_REQUEST)["field_violations"]
    assert violation["field"] == "email"
    assert violation["description"] == bad_email.message

    bad_count = await grpcurl_error(address, "GenerateCodes", {"brand_id": "acme", "count": 0}, server.admin_key)
    assert_error_info(bad_count, "INVALID_FIELD")
    assert [v["field"] for v in bad_count.detail(BAD_REQUEST)["field_violations"]] == ["count"]

    no_key = await grpcurl_error(address, "GetBrandStats", {"brand_id": "acme"})
    assert (no_key.code, no_key.message) == (
        "Unauthenticated",
        "missing credentials: send your API key in the x-api-key metadata",
    )
    assert_error_info(no_key, "UNAUTHENTICATED")

    wrong_role = await grpcurl_error(address, "GetBrandStats", {"brand_id": "acme"}, service_key)
    assert (wrong_role.code, wrong_role.message) == (
        "PermissionDenied",
        "a service credential cannot do this; use a brand or admin key",
    )
    assert_error_info(wrong_role, "PERMISSION_DENIED")

    # A stream's errors carry the same details.
    watch = await grpcurl_error(address, "WatchClaims", {"brand_id": "nope"}, server.admin_key)
    assert watch.code == "NotFound"
    assert_error_info(watch, "BRAND_NOT_FOUND")

    # Only the ErrorInfo for errors that are not about one field.
    for error in (unknown, empty, no_key, wrong_role, watch):
        assert [d["@type"] for d in error.details] == [ERROR_INFO], error.output
    assert sql(url, "SELECT count(*) FROM claims") == [(0,)]


@pytest.fixture
def own_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL of the test's own, so it can be stopped without touching the shared one."""
    with PrivatePostgres(settings={"fsync": "off"}, prefix="discount-details-pg-") as pg:
        yield pg


async def test_grpcurl_shows_database_unavailable_when_the_database_is_down(own_postgres: PrivatePostgres) -> None:
    url = own_postgres.url
    await Store(url).migrate()
    create_brand(url, "acme")
    generate_codes_sql(url, "acme", 5)
    service_key = create_key(url, "service")
    async with in_process_server(url, db_timeout_seconds=1.0) as (_, handle):
        await asyncio.to_thread(own_postgres.stop, "immediate")
        claim = {"brand_id": "acme", "user_id": "user-42", "email": "user42@example.com"}
        down = await grpcurl_error(handle.address, "ClaimCode", claim, service_key)
        assert down.code == "Unavailable", down.output
        assert down.message in {
            "the database is unavailable; retry with backoff",
            "the database call timed out; retry",
        }, down.output
        assert_error_info(down, "DATABASE_UNAVAILABLE")


async def test_the_client_says_request_too_large_not_no_codes_left(server: ServerHandle) -> None:
    """The README's own example, with a 1 MiB email: gRPC refuses the message (RESOURCE_EXHAUSTED,
    no reason from the service). The caller must not be told the brand has no codes left."""
    create_brand(server.database_url, "acme")
    generate_codes_sql(server.database_url, "acme", 5)
    service_key = create_key(server.database_url, "service")

    def claim_sync() -> None:
        with DiscountClient(server.address, service_key) as client:
            client.claim_code("acme", user_id="user-42", email="a" * 2**20)

    with pytest.raises(RequestTooLarge) as raised:
        await asyncio.to_thread(claim_sync)
    assert not isinstance(raised.value, NoCodesLeft)
    assert raised.value.code == "RESOURCE_EXHAUSTED"
    assert (raised.value.reason, raised.value.field) == ("", "")
    assert "larger than max" in str(raised.value), str(raised.value)

    async with AsyncDiscountClient(server.address, service_key) as client:
        with pytest.raises(RequestTooLarge):
            await client.claim_code("acme", user_id="user-42", email="a" * 2**20)
    assert sql(server.database_url, "SELECT count(*) FROM claims") == [(0,)]


async def test_the_client_says_no_codes_left_from_the_reason(server: ServerHandle) -> None:
    create_brand(server.database_url, "acme")
    generate_codes_sql(server.database_url, "acme", 1)
    service_key = create_key(server.database_url, "service")
    async with AsyncDiscountClient(server.address, service_key) as client:
        await client.claim_code("acme", "first", "first@example.com")  # the last code
        with pytest.raises(NoCodesLeft) as raised:
            await client.claim_code("acme", "second", "second@example.com")
    assert (raised.value.code, raised.value.reason, raised.value.field) == ("RESOURCE_EXHAUSTED", "NO_CODES_LEFT", "")
    assert str(raised.value) == "brand 'acme' has no codes left; ask the brand to generate more"

    def claim_sync() -> None:
        with DiscountClient(server.address, service_key) as client:
            client.claim_code("acme", "third", "third@example.com")

    with pytest.raises(NoCodesLeft) as sync_raised:
        await asyncio.to_thread(claim_sync)
    assert sync_raised.value.reason == "NO_CODES_LEFT"


async def test_the_client_exposes_the_field_of_a_bad_request(server: ServerHandle) -> None:
    create_brand(server.database_url, "acme")
    async with AsyncDiscountClient(server.address, server.admin_key) as client:
        with pytest.raises(InvalidArgument) as raised:
            await client.claim_code("acme", "user-42", "not-an-address")
        assert (raised.value.reason, raised.value.field) == ("INVALID_FIELD", "email")
        assert str(raised.value) == "email 'not-an-address' is not a valid address (expected name@example.com)"
        with pytest.raises(InvalidArgument) as generate:
            await client.generate_codes("acme", 10, prefix="lower-case")
        assert (generate.value.reason, generate.value.field) == ("INVALID_FIELD", "prefix")


@pytest.mark.parametrize("index", [0, 1])
async def test_the_readme_error_examples_are_what_grpcurl_prints(server: ServerHandle, index: int) -> None:
    """The README's grpcurl error examples, run as written: grpcurl prints exactly the documented lines
    and exits with the documented status (64 + the gRPC status code)."""
    examples = [b for b in code_blocks(readme_section("Calling it by hand (grpcurl)"), "text") if "Details:" in b]
    assert len(examples) == 2, "update the parametrisation when the README's examples change"
    # The command is the "$ " line and its backslash continuations; the rest is the output, then an
    # optional "$ echo $?" and the exit status it prints.
    lines = examples[index].splitlines()
    end = next(i for i, line in enumerate(lines) if not line.endswith("\\"))
    command = " ".join(line.rstrip("\\").strip() for line in lines[: end + 1]).removeprefix("$ ")
    printed = lines[end + 1 :]
    documented_exit = None
    if "$ echo $?" in printed:
        at = printed.index("$ echo $?")
        documented_exit = int(printed[at + 1])
        printed = printed[:at]
    create_brand(server.database_url, "acme")
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ['PATH']}",
        "SERVICE_KEY": create_key(server.database_url, "service"),
        "ADMIN_KEY": server.admin_key,
    }
    proc = await asyncio.create_subprocess_exec(
        "bash",
        "-c",
        command.replace(README_ADDRESS, server.address),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert out.decode().splitlines() == printed
    code_line = next(line for line in printed if line.strip().startswith("Code: "))
    status = {"InvalidArgument": 3, "NotFound": 5}[code_line.split(": ", 1)[1]]
    assert proc.returncode == 64 + status
    if documented_exit is not None:
        assert proc.returncode == documented_exit
