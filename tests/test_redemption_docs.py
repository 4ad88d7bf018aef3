"""The redemption examples of the documentation (docs/redemptions.md, linked from the README's
"Redeeming a code"), run as written against a real server: grpcurl with the real binary, then the
Python example, with $SERVICE_KEY and $CODE as the page says (only the address is the test server's)."""

from __future__ import annotations

import asyncio
import json
import os
import sys

from discount.v1 import discount_service_pb2 as pb
from tests.readme_support import README, README_ADDRESS, code_blocks, readme_section, shell_commands, words
from tests.support import BIN, ServerHandle, claim_request, create_brand, create_key, generate_codes_sql, sql
from tests.test_client_cli import client_env, discount


async def run(command: list[str], env: dict[str, str]) -> str:
    proc = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, f"{command}\nexit {proc.returncode}: {err.decode()}"
    return out.decode()


def test_the_readme_section_links_the_page_and_the_auth_table_lists_the_calls() -> None:
    section = readme_section("Redeeming a code")
    assert "(docs/redemptions.md)" in section
    readme = README.read_text()
    assert "| `service` | `ClaimCode`, `RedeemCode`, `CancelRedemption` for any brand |" in readme
    for reason in ("CODE_NOT_FOUND", "REDEMPTION_NOT_FOUND"):
        assert reason in readme_section("Redemption errors")
    assert "`RedemptionCancelled`" in readme


def acme_with_codes(url: str) -> str:
    """Brand "acme" with 5 codes, as the README's examples expect; returns a service key."""
    create_brand(url, "acme")
    generate_codes_sql(url, "acme", 5)
    return create_key(url, "service")


async def test_the_grpcurl_and_python_examples_work_as_written(server: ServerHandle) -> None:
    url = server.database_url
    service_key = acme_with_codes(url)
    channel, stub = server.aio_stub()
    async with channel:
        claimed = await stub.ClaimCode(claim_request("acme", "user-42"), metadata=server.metadata(service_key))
    code = claimed.claim.code
    # Typed in lower case, as a shopper might: the examples still work.
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "SERVICE_KEY": service_key, "CODE": code.lower()}
    section = readme_section("Redeeming by hand (grpcurl)")
    (block,) = code_blocks(section, "sh")
    redeem, cancel = (c.replace(README_ADDRESS, server.address) for c in shell_commands(block))
    assert words(redeem)[-1].endswith("/RedeemCode") and words(cancel)[-1].endswith("/CancelRedemption")

    first = json.loads(await run(["bash", "-c", redeem], env))
    assert first["newly_redeemed"] is True
    redemption = first["redemption"]
    assert (redemption["brand_id"], redemption["code"], redemption["user_id"], redemption["order_id"]) == (
        "acme",
        code,
        "user-42",
        "1001",
    )
    assert "cancelled_at" not in redemption
    again = json.loads(await run(["bash", "-c", redeem], env))
    assert again == {"redemption": redemption}  # newly_redeemed false: left out
    cancelled = json.loads(await run(["bash", "-c", cancel], env))["redemption"]
    assert cancelled["redeemed_at"] == redemption["redeemed_at"] and "cancelled_at" in cancelled
    assert json.loads(await run(["bash", "-c", cancel], env))["redemption"] == cancelled

    (example,) = code_blocks(readme_section("Redeeming from Python"), "python")
    script = example.replace(README_ADDRESS, server.address)
    out = await run([sys.executable, "-c", script], env)
    assert out.strip().endswith("(new)"), out
    rows = sql(url, "SELECT order_id, cancelled_at IS NOT NULL FROM redemptions ORDER BY order_id")
    assert rows == [("1001", True), ("1002", True)]


async def test_discount_stats_shows_the_standing_redemptions(server: ServerHandle) -> None:
    url = server.database_url
    service_key = acme_with_codes(url)
    channel, stub = server.aio_stub()
    async with channel:
        for user in ("a", "b"):
            claimed = await stub.ClaimCode(claim_request("acme", user), metadata=server.metadata(service_key))
            request = pb.RedeemCodeRequest(brand_id="acme", code=claimed.claim.code, user_id=user, order_id=f"o-{user}")
            await stub.RedeemCode(request, metadata=server.metadata(service_key))
    code, out, err = await discount("stats", "acme", env=client_env(server.address, server.admin_key))
    assert code == 0, err
    assert out.splitlines()[-2:] == ["expired    0", "redeemed   2"]
    code, out, _ = await discount("stats", "acme", "--json", env=client_env(server.address, server.admin_key))
    assert json.loads(out)["redeemed"] == 2
