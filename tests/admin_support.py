"""What the AdminService tests share: grpcurl against AdminService, the parts of the error details
it prints, setup straight in the database, and the `discount` command."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
from typing import Any

import grpc

from tests.support import BIN, sql

JWT_SECRET = "an-hs256-secret-of-at-least-32-bytes!"
RPCS = ("CreateBrand", "ListBrands", "CreateApiKey", "RevokeApiKey", "ListApiKeys")


async def grpcurl(
    address: str, method: str, body: dict[str, Any] | None = None, *, key: str | None = None, bearer: str = ""
) -> tuple[int, dict[str, Any]]:
    """Calls `discount.v1.AdminService/<method>` with the real grpcurl (schema by reflection).
    Returns (gRPC status code, the reply, or the error status with its details as grpcurl prints it)."""
    args = [str(BIN / "grpcurl"), "-plaintext", "-format-error"]
    if key is not None:
        args += ["-H", f"x-api-key: {key}"]
    if bearer:
        args += ["-H", f"authorization: Bearer {bearer}"]
    args += ["-d", json.dumps(body or {}), address, f"discount.v1.AdminService/{method}"]
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    if proc.returncode == 0:
        return 0, dict(json.loads(out))
    error = dict(json.loads(err))  # -format-error: the status as JSON, exit status 64 + code
    assert proc.returncode == 64 + error["code"], (proc.returncode, error)
    return int(error["code"]), error


def violation_field(error: dict[str, Any]) -> str:
    """The field a grpcurl-printed INVALID_ARGUMENT names in its BadRequest detail."""
    (bad_request,) = [d for d in error["details"] if d["@type"].endswith("google.rpc.BadRequest")]
    (violation,) = bad_request["field_violations"]
    return str(violation["field"])


def reason(error: dict[str, Any]) -> str:
    (info,) = [d for d in error["details"] if d["@type"].endswith("google.rpc.ErrorInfo")]
    assert info["domain"] == "discount.v1"
    return str(info["reason"])


INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]
ALREADY_EXISTS = grpc.StatusCode.ALREADY_EXISTS.value[0]
PERMISSION_DENIED = grpc.StatusCode.PERMISSION_DENIED.value[0]
UNAUTHENTICATED = grpc.StatusCode.UNAUTHENTICATED.value[0]


def add_brands(url: str, count: int, prefix: str = "b-") -> list[str]:
    """`count` brands (with their feed heads) in one statement, as setup; returns their ids."""
    sql(
        url,
        """WITH b AS (
               INSERT INTO brands (brand_id, name)
               SELECT %(prefix)s || lpad(g::text, 5, '0'), 'Brand ' || g FROM generate_series(1, %(count)s) g
               RETURNING brand_key)
           INSERT INTO brand_feed_heads (brand_key) SELECT brand_key FROM b""",
        {"prefix": prefix, "count": count},
    )
    return [f"{prefix}{i:05d}" for i in range(1, count + 1)]


def brands_in_database_order(url: str) -> list[str]:
    return [row[0] for row in sql(url, "SELECT brand_id FROM brands ORDER BY brand_id")]


def key_id(secret: str) -> str:
    return secret.split("_")[1]


def key_material(secret: str) -> list[str]:
    """The key, its secret part, and both in the encodings a leak could use."""
    tail = secret.split("_", 2)[2]
    return [
        secret,
        tail,
        secret.encode().hex(),
        tail.encode().hex(),
        tail[:16],
        hashlib.sha256(secret.encode()).hexdigest(),
    ]


def counts(url: str) -> tuple[int, int, int]:
    """Brands, keys and revoked keys: what a refused call must leave unchanged."""
    (row,) = sql(url, "SELECT (SELECT count(*) FROM brands), count(*), count(revoked_at) FROM api_keys")
    return int(row[0]), int(row[1]), int(row[2])


def discount_cli(url: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`discount ARGS...` on the database at `url`, as an operator on the server's host runs it."""
    env = {**os.environ, "DISCOUNT_DATABASE_URL": url}
    return subprocess.run(
        [str(BIN / "discount"), *args], env=env, capture_output=True, text=True, timeout=60, check=check
    )
