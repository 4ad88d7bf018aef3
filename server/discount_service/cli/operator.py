"""`discount brand ...` and `discount key ...`: brands and API keys, for operators on the server's host.

They run AdminService's domain code (admin_service.py) on the database directly, as LOCAL_OPERATOR:
the same validation and the same errors as the RPCs, and they work with the server stopped, which is
how the first admin key is made. A domain error reaches `main` and is printed there as one line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..admin_service import MAX_PAGE_SIZE, AdminService
from ..models import Page, Principal, Role
from ..settings import Settings
from .common import with_store

T = TypeVar("T")

# Whoever can run these commands can reach the server's database, which is more than any key gives: they
# act as an admin, named so in the service's logs.
LOCAL_OPERATOR = Principal(role=Role.ADMIN, key_id="local-operator")

# The command-line option of each request field AdminService's errors may name (`field`), so `main`
# says `--brand: ...` where the RPC says brand_id.
KEY_CREATE_OPTIONS = {"role": "--role", "brand_id": "--brand"}
BRAND_CREATE_OPTIONS = {"display_name": "--name"}


def _as_operator(settings: Settings, action: Callable[[AdminService], Awaitable[T]]) -> T:
    result: T = with_store(settings, lambda store: action(AdminService(store)))
    return result


async def _every_item(list_page: Callable[[str], Awaitable[Page[T]]]) -> list[T]:
    """Every item of a listing, page by page, from its first page token ("") to its last page."""
    items: list[T] = []
    token = ""
    while True:
        page = await list_page(token)
        items.extend(page.items)
        if not (token := page.next_page_token):
            return items


def cmd_brand_create(args: argparse.Namespace, settings: Settings) -> None:
    brand = _as_operator(
        settings,
        lambda admin: admin.create_brand(LOCAL_OPERATOR, brand_id=args.brand_id, display_name=args.name or ""),
    )
    print(f"created brand {brand.brand_id} ({brand.name})")


def cmd_brand_list(args: argparse.Namespace, settings: Settings) -> None:
    brands = _as_operator(
        settings,
        lambda admin: _every_item(
            lambda token: admin.list_brands(LOCAL_OPERATOR, page_size=MAX_PAGE_SIZE, page_token=token)
        ),
    )
    print(f"{'BRAND':<24} {'TOTAL':>10} {'CLAIMED':>10}  NAME")
    for brand in brands:
        print(f"{brand.brand_id:<24} {brand.total_codes:>10} {brand.claimed:>10}  {brand.name}")


def cmd_key_create(args: argparse.Namespace, settings: Settings) -> None:
    role = Role(args.role)
    made = _as_operator(
        settings, lambda admin: admin.create_api_key(LOCAL_OPERATOR, role=role, brand_id=args.brand or "")
    )
    key_id = made.key.key_id
    scope = f" for brand {made.key.brand_id}" if made.key.brand_id else ""
    if sys.stdout.isatty():
        print(f"created {role.value} key {key_id}{scope}; store it now, it is not shown again:", file=sys.stderr)
    else:
        # Captured (`K=$(discount key create ...)`): this line is all the terminal shows, so it says where the key went.
        print(
            f"created {role.value} key {key_id}{scope}; the key was written to standard output and is not shown again",
            file=sys.stderr,
        )
    print(made.secret)


def cmd_key_revoke(args: argparse.Namespace, settings: Settings) -> None:
    key = _as_operator(settings, lambda admin: admin.revoke_api_key(LOCAL_OPERATOR, key_id=args.key_id))
    print(f"revoked key {key.key_id}; servers stop accepting it within {settings.key_cache_seconds:g}s")


def cmd_key_list(args: argparse.Namespace, settings: Settings) -> None:
    keys = _as_operator(
        settings,
        lambda admin: _every_item(
            lambda token: admin.list_api_keys(LOCAL_OPERATOR, brand_id="", page_size=MAX_PAGE_SIZE, page_token=token)
        ),
    )
    print(f"{'KEY ID':<14} {'ROLE':<8} {'BRAND':<24} STATUS")
    for key in sorted(keys, key=lambda key: key.created_at):  # oldest first
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
    create.set_defaults(func=cmd_brand_create, options=BRAND_CREATE_OPTIONS)
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
    key_create.set_defaults(func=cmd_key_create, options=KEY_CREATE_OPTIONS)
    revoke = keys.add_parser("revoke", help="revoke an API key by its id", description=f"Revoke an API key. {DIRECT}")
    revoke.add_argument("key_id", metavar="KEY_ID", help="the key's id, as `discount key list` shows it")
    revoke.set_defaults(func=cmd_key_revoke)
    keys.add_parser(
        "list",
        help="list API keys (ids and roles, never the keys)",
        description=f"List API keys (ids and roles, never the keys). {DIRECT}",
    ).set_defaults(func=cmd_key_list)
