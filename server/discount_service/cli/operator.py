"""`discount brand ...` and `discount key ...`: administer brands and API keys.

They talk to the database directly: they are for operators on the server's host.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .. import validation
from ..auth import new_api_key
from ..models import ApiKeyInfo, Brand, Role
from ..settings import Settings
from .common import CommandError, with_store

_PAGE = 1000  # rows per statement when listing every brand or key


def cmd_brand_create(args: argparse.Namespace, settings: Settings) -> None:
    brand_id = validation.new_brand_id(args.brand_id)
    name = validation.brand_name(args.name or brand_id)
    brand = with_store(settings, lambda store: store.create_brand(brand_id, name))
    print(f"created brand {brand.brand_id} ({brand.name})")


async def _every_brand(store: Any) -> list[Brand]:
    brands: list[Brand] = []
    while page := await store.brands_after(brands[-1].brand_id if brands else "", _PAGE):
        brands.extend(page)
    return brands


async def _every_key(store: Any) -> list[ApiKeyInfo]:
    keys: list[ApiKeyInfo] = []
    while page := await store.api_keys_after(keys[-1].key_id if keys else "", _PAGE):
        keys.extend(page)
    return sorted(keys, key=lambda key: key.created_at)  # oldest first


def cmd_brand_list(args: argparse.Namespace, settings: Settings) -> None:
    brands = with_store(settings, _every_brand)
    print(f"{'BRAND':<24} {'TOTAL':>10} {'CLAIMED':>10}  NAME")
    for brand in brands:
        print(f"{brand.brand_id:<24} {brand.total_codes:>10} {brand.claimed:>10}  {brand.name}")


def cmd_key_create(args: argparse.Namespace, settings: Settings) -> None:
    role = Role(args.role)
    if role is Role.BRAND and not args.brand:
        raise CommandError("a brand key needs --brand BRAND_ID")
    if role is not Role.BRAND and args.brand:
        raise CommandError(f"--brand only applies to --role brand, not {role.value}")
    key_id, key, key_hash = new_api_key()
    if with_store(settings, lambda store: store.insert_api_key(key_id, key_hash, role, args.brand)) is None:
        raise CommandError(f"brand {args.brand!r} does not exist; create it with `discount brand create`")
    scope = f" for brand {args.brand}" if args.brand else ""
    if sys.stdout.isatty():
        print(f"created {role.value} key {key_id}{scope}; store it now, it is not shown again:", file=sys.stderr)
    else:
        # Captured (`K=$(discount key create ...)`): this line is all the terminal shows, so it says where the key went.
        print(
            f"created {role.value} key {key_id}{scope}; the key was written to standard output and is not shown again",
            file=sys.stderr,
        )
    print(key)


def cmd_key_revoke(args: argparse.Namespace, settings: Settings) -> None:
    if with_store(settings, lambda store: store.revoke_api_key_returning(args.key_id)) is None:
        raise CommandError(f"no key {args.key_id!r}; see `discount key list`")
    print(f"revoked key {args.key_id}; servers stop accepting it within {settings.key_cache_seconds:g}s")


def cmd_key_list(args: argparse.Namespace, settings: Settings) -> None:
    keys = with_store(settings, _every_key)
    print(f"{'KEY ID':<14} {'ROLE':<8} {'BRAND':<24} STATUS")
    for key in keys:
        status = f"revoked {key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "active"
        print(f"{key.key_id:<14} {key.role.value:<8} {key.brand_id or '-':<24} {status}")


# Said by `discount brand --help`, `discount key --help` and each of their subcommands.
DIRECT = (
    "Acts on the database directly (DISCOUNT_DATABASE_URL, or the embedded PostgreSQL in DISCOUNT_DATA_DIR), "
    "not through the server, so it works with the server stopped."
)


def add_operator_commands(sub: Any) -> None:  # argparse's subparsers action has no public type
    """Adds brand and key, each with its subcommands, to the `discount` parser."""
    brand = sub.add_parser(
        "brand", help="manage brands (on the database directly)", description=f"Manage brands. {DIRECT}"
    )
    brands = brand.add_subparsers(dest="brand_command", required=True)
    create = brands.add_parser("create", help="create a brand", description=f"Create a brand. {DIRECT}")
    create.add_argument("brand_id", metavar="BRAND_ID", help="the brand's id, used in every call (e.g. acme)")
    create.add_argument("--name", help="the brand's display name (default: BRAND_ID)")
    create.set_defaults(func=cmd_brand_create)
    brands.add_parser(
        "list", help="list brands with their code counts", description=f"List brands with their code counts. {DIRECT}"
    ).set_defaults(func=cmd_brand_list)

    key = sub.add_parser(
        "key", help="manage API keys (on the database directly)", description=f"Manage API keys. {DIRECT}"
    )
    keys = key.add_subparsers(dest="key_command", required=True)
    key_create = keys.add_parser(
        "create",
        help="create an API key; prints it as the last line",
        description=f"Create an API key; prints it as the last line. {DIRECT}",
    )
    key_create.add_argument("--role", required=True, choices=[r.value for r in Role if r is not Role.USER])
    key_create.add_argument("--brand", help="the brand a brand key is bound to")
    key_create.set_defaults(func=cmd_key_create)
    revoke = keys.add_parser("revoke", help="revoke an API key by its id", description=f"Revoke an API key. {DIRECT}")
    revoke.add_argument("key_id", metavar="KEY_ID", help="the key's id, as `discount key list` shows it")
    revoke.set_defaults(func=cmd_key_revoke)
    keys.add_parser(
        "list",
        help="list API keys (ids and roles, never the keys)",
        description=f"List API keys (ids and roles, never the keys). {DIRECT}",
    ).set_defaults(func=cmd_key_list)
