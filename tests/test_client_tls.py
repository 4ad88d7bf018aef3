"""discount_client over TLS: `credentials=` switches the channel to TLS, and the client then works
like over plaintext (certificates made by tests/test_tls.py's helpers)."""

from __future__ import annotations

import grpc
import pytest

from discount_client import AsyncDiscountClient, Unavailable
from tests.support import create_brand, generate_codes_sql, in_process_server
from tests.test_tls import make_ca, make_leaf


async def test_client_with_tls_credentials_claims_and_watches(
    database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    ca, ca_key, ca_cert = make_ca()
    server_pem = make_leaf(ca_key, ca_cert, "localhost", server=True)
    folder = tmp_path_factory.mktemp("client-tls")
    (folder / "server.pem").write_bytes(server_pem.cert)
    (folder / "server.key").write_bytes(server_pem.key)
    (folder / "server.key").chmod(0o600)
    create_brand(database_url, "acme")
    generate_codes_sql(database_url, "acme", 3)
    async with in_process_server(database_url, tls_cert=folder / "server.pem", tls_key=folder / "server.key") as (
        _,
        handle,
    ):
        trusted = grpc.ssl_channel_credentials(root_certificates=ca.cert)
        async with AsyncDiscountClient(handle.address, handle.admin_key, credentials=trusted) as client:
            claimed = await client.claim_code("acme", "alice", "alice@example.com")
            async for watched in client.watch_claims("acme"):
                assert watched == claimed.claim
                break
            assert (await client.get_brand_stats("acme")).claimed == 1
        # Without credentials the client speaks plaintext, which a TLS port does not answer.
        async with AsyncDiscountClient(handle.address, handle.admin_key, retry=None) as plain:
            with pytest.raises(Unavailable):
                await plain.get_brand_stats("acme", timeout=5)
