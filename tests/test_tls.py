"""TLS (DISCOUNT_TLS_CERT + DISCOUNT_TLS_KEY) and mTLS (DISCOUNT_TLS_CLIENT_CA), with a CA,
server and client certificates made here by the `cryptography` package."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from discount.v1 import discount_service_pb2 as pb
from discount.v1 import discount_service_pb2_grpc as pb_grpc
from tests.support import create_brand, create_key, in_process_server, start_server_process, stop_process


@dataclass
class Pem:
    cert: bytes
    key: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(common_name: str = "discount test CA") -> tuple[Pem, ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)), key, cert


def make_leaf(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, common_name: str, *, server: bool) -> Pem:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


@dataclass
class Pki:
    ca: Pem
    server: Pem
    client: Pem
    other_ca: Pem  # an unrelated CA, and a client certificate it signed
    stranger: Pem
    paths: dict[str, Path]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ca, ca_key, ca_cert = make_ca()
    other_ca, other_key, other_cert = make_ca("someone else's CA")
    server = make_leaf(ca_key, ca_cert, "localhost", server=True)
    client = make_leaf(ca_key, ca_cert, "billing-service", server=False)
    stranger = make_leaf(other_key, other_cert, "stranger", server=False)
    folder = tmp_path_factory.mktemp("pki")
    paths = {}
    for name, data in {"ca.pem": ca.cert, "server.pem": server.cert, "server.key": server.key}.items():
        paths[name] = folder / name
        paths[name].write_bytes(data)
    paths["server.key"].chmod(0o600)
    return Pki(ca, server, client, other_ca, stranger, paths)


def health(channel: grpc.Channel) -> int:
    return int(health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status)


def stats(channel: grpc.Channel, key: str) -> pb.GetBrandStatsResponse:
    return pb_grpc.DiscountServiceStub(channel).GetBrandStats(
        pb.GetBrandStatsRequest(brand_id="acme"), metadata=(("x-api-key", key),), timeout=5
    )


def refused(channel: grpc.Channel) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as raised:
        health(channel)
    return raised.value.code()  # type: ignore[attr-defined,no-any-return]


async def test_tls_serves_a_client_that_trusts_the_ca_and_refuses_plaintext(database_url: str, pki: Pki) -> None:
    create_brand(database_url, "acme")
    async with in_process_server(database_url, tls_cert=pki.paths["server.pem"], tls_key=pki.paths["server.key"]) as (
        _,
        handle,
    ):

        def check() -> None:
            secure = grpc.secure_channel(handle.address, grpc.ssl_channel_credentials(root_certificates=pki.ca.cert))
            with secure:
                assert health(secure) == health_pb2.HealthCheckResponse.SERVING
                assert stats(secure, handle.admin_key).brand_id == "acme"
            # The same port over plaintext: no TLS handshake, no service.
            with grpc.insecure_channel(handle.address) as plain:
                assert refused(plain) is grpc.StatusCode.UNAVAILABLE
            # A client that does not trust our CA refuses the server.
            untrusting = grpc.ssl_channel_credentials(root_certificates=pki.other_ca.cert)
            with grpc.secure_channel(handle.address, untrusting) as wrong_ca:
                assert refused(wrong_ca) is grpc.StatusCode.UNAVAILABLE

        await asyncio.to_thread(check)


async def test_mtls_from_the_environment_needs_a_client_certificate_signed_by_the_client_ca(
    database_url: str, pki: Pki, tmp_path: Path
) -> None:
    create_brand(database_url, "acme")
    admin_key = create_key(database_url, "admin")
    server = await asyncio.to_thread(
        start_server_process,
        database_url,
        log_path=tmp_path / "server.log",
        admin_key=admin_key,
        wait=False,
        extra_env={
            "DISCOUNT_TLS_CERT": str(pki.paths["server.pem"]),
            "DISCOUNT_TLS_KEY": str(pki.paths["server.key"]),
            "DISCOUNT_TLS_CLIENT_CA": str(pki.paths["ca.pem"]),
        },
    )

    def with_cert(client: Pem | None) -> grpc.ChannelCredentials:
        if client is None:
            return grpc.ssl_channel_credentials(root_certificates=pki.ca.cert)
        return grpc.ssl_channel_credentials(
            root_certificates=pki.ca.cert, private_key=client.key, certificate_chain=client.cert
        )

    def check() -> None:
        deadline = time.monotonic() + 30
        while True:  # wait until it serves, over mTLS
            try:
                with grpc.secure_channel(server.address, with_cert(pki.client)) as channel:
                    if health(channel) == health_pb2.HealthCheckResponse.SERVING:
                        break
            except grpc.RpcError:
                if time.monotonic() > deadline or (server.process and server.process.poll() is not None):
                    raise AssertionError(server.log_text()) from None
            time.sleep(0.2)
        with grpc.secure_channel(server.address, with_cert(pki.client)) as channel:
            assert stats(channel, admin_key).brand_id == "acme"
        with grpc.secure_channel(server.address, with_cert(None)) as no_cert:
            assert refused(no_cert) is grpc.StatusCode.UNAVAILABLE
        with grpc.secure_channel(server.address, with_cert(pki.stranger)) as stranger:
            assert refused(stranger) is grpc.StatusCode.UNAVAILABLE
        with grpc.insecure_channel(server.address) as plain:
            assert refused(plain) is grpc.StatusCode.UNAVAILABLE

    try:
        await asyncio.to_thread(check)
    finally:
        assert await asyncio.to_thread(stop_process, server) == 0
