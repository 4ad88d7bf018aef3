"""`discount webhook create|get|list|replay|rotate|deliveries|delete`: a brand's webhooks, through a
running server (DISCOUNT_ADDRESS, DISCOUNT_API_KEY: the brand's key or an admin key)."""

from __future__ import annotations

import argparse
import json
from contextlib import AbstractContextManager
from typing import Any

from discount_client import DiscountClient, Webhook, WebhookDelivery

from ..settings import Settings
from .remote import iso, service_client


def _client() -> AbstractContextManager[DiscountClient]:
    return service_client(": use the brand's key or an admin key")


def _print(line: str) -> None:
    print(line, flush=True)


def _webhook_json(hook: Webhook) -> dict[str, Any]:
    return {
        "webhook_id": hook.webhook_id,
        "brand_id": hook.brand_id,
        "url": hook.url,
        "state": hook.state.value,
        "delivered_sequence": hook.delivered_sequence,
        "max_claims_per_delivery": hook.max_claims_per_delivery,
        "created_at": iso(hook.created_at),
        "last_error": hook.last_error,
        "next_attempt_at": iso(hook.next_attempt_at),
    }


def _webhook_line(hook: Webhook) -> str:
    line = f"{hook.webhook_id}  {hook.state.value:<8}  delivered {hook.delivered_sequence:<8}  {hook.url}"
    if hook.last_error:
        line += f"\n    last error: {hook.last_error}" + (
            f" (next attempt {iso(hook.next_attempt_at)})" if hook.next_attempt_at else ""
        )
    return line


def _delivery_line(d: WebhookDelivery) -> str:
    status = str(d.http_status) if d.http_status else "-"
    line = (
        f"{iso(d.attempted_at)}  {d.delivery_id}  claims {d.first_sequence}..{d.last_sequence}  "
        f"attempt {d.attempt}  HTTP {status}  {d.duration.total_seconds() * 1000:.0f} ms"
    )
    return line + (f"  {d.error}" if d.error else "")


def _show(args: argparse.Namespace, hook: Webhook, secret: str | None = None) -> None:
    if args.json:
        _print(json.dumps({**_webhook_json(hook), **({"secret": secret} if secret else {})}))
        return
    _print(_webhook_line(hook))
    if secret:
        _print(f"signing secret (shown once; verify requests with it): {secret}")


def cmd_create(args: argparse.Namespace, settings: Settings) -> None:
    with _client() as client:
        created = client.create_webhook(
            args.brand_id, args.url, after_sequence=args.after_sequence, max_claims_per_delivery=args.max_claims
        )
    _show(args, created.webhook, created.secret)


def cmd_get(args: argparse.Namespace, settings: Settings) -> None:
    with _client() as client:
        _show(args, client.get_webhook(args.webhook_id))


def cmd_list(args: argparse.Namespace, settings: Settings) -> None:
    with _client() as client:
        hooks = client.list_webhooks(args.brand_id)
    for hook in hooks:
        _show(args, hook)


def cmd_replay(args: argparse.Namespace, settings: Settings) -> None:
    with _client() as client:
        _show(args, client.replay_webhook(args.webhook_id, args.after_sequence))


def cmd_rotate(args: argparse.Namespace, settings: Settings) -> None:
    with _client() as client:
        rotated = client.rotate_webhook_secret(args.webhook_id)
    _show(args, rotated.webhook, rotated.secret)
    if not args.json:
        _print("the previous secret signs beside the new one for 24 hours")


def cmd_deliveries(args: argparse.Namespace, settings: Settings) -> None:
    shown = 0
    token = ""
    with _client() as client:
        while shown < args.limit:
            page = client.list_webhook_deliveries(args.webhook_id, min(args.limit - shown, 1000), token)
            for d in page.deliveries:
                if args.json:
                    _print(
                        json.dumps(
                            {
                                "delivery_id": d.delivery_id,
                                "first_sequence": d.first_sequence,
                                "last_sequence": d.last_sequence,
                                "attempt": d.attempt,
                                "attempted_at": iso(d.attempted_at),
                                "http_status": d.http_status,
                                "error": d.error,
                                "duration_seconds": d.duration.total_seconds(),
                            }
                        )
                    )
                else:
                    _print(_delivery_line(d))
            shown += len(page.deliveries)
            token = page.next_page_token
            if not token:
                break


def cmd_delete(args: argparse.Namespace, settings: Settings) -> None:
    with _client() as client:
        client.delete_webhook(args.webhook_id)
    _print(f"deleted {args.webhook_id}")


def add_webhook_commands(sub: Any) -> None:  # argparse's subparsers action has no public type
    """Adds `discount webhook ...` to the `discount` parser."""
    env = "Calls the server at DISCOUNT_ADDRESS with the brand's key or an admin key in DISCOUNT_API_KEY."
    webhook = sub.add_parser("webhook", help="a brand's webhooks (signed HTTPS callbacks of every claim)")
    commands = webhook.add_subparsers(dest="webhook_command", required=True, metavar="COMMAND")

    def command(name: str, helptext: str, func: Any) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = commands.add_parser(name, help=helptext, description=f"{helptext}. {env}")
        parser.add_argument("--json", action="store_true", help="print JSON, one object per line")
        parser.set_defaults(func=func)
        return parser

    create = command("create", "register an endpoint that receives the brand's claims", cmd_create)
    create.add_argument("brand_id", metavar="BRAND")
    create.add_argument("url", metavar="URL", help="https:// endpoint, at most 2,048 characters")
    create.add_argument(
        "--after-sequence",
        type=int,
        default=None,
        metavar="N",
        help="send claims with a greater sequence (default: only claims made from now on; 0: every claim)",
    )
    create.add_argument("--max-claims", type=int, default=0, metavar="N", help="claims per request, 1..1000 (100)")
    command("get", "show one endpoint and where its delivery stands", cmd_get).add_argument(
        "webhook_id", metavar="WEBHOOK_ID"
    )
    command("list", "list a brand's endpoints, oldest first", cmd_list).add_argument("brand_id", metavar="BRAND")
    replay = command("replay", "deliver the claims again from a sequence on, and re-enable the endpoint", cmd_replay)
    replay.add_argument("webhook_id", metavar="WEBHOOK_ID")
    replay.add_argument("--after-sequence", type=int, default=0, metavar="N", help="default 0: every claim")
    command("rotate", "issue a new signing secret", cmd_rotate).add_argument("webhook_id", metavar="WEBHOOK_ID")
    deliveries = command("deliveries", "list an endpoint's delivery attempts, newest first", cmd_deliveries)
    deliveries.add_argument("webhook_id", metavar="WEBHOOK_ID")
    deliveries.add_argument("--limit", type=int, default=20, metavar="N", help="how many attempts (default 20)")
    command("delete", "remove an endpoint; nothing more is sent to it", cmd_delete).add_argument(
        "webhook_id", metavar="WEBHOOK_ID"
    )
