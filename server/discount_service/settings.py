"""Configuration: read once from DISCOUNT_* environment variables into a frozen object."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

T = TypeVar("T", int, float)


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names the variable and what to do."""


def _parsed(env: Mapping[str, str], name: str, parse: Callable[[str], T], kind: str) -> tuple[str, T] | None:
    """The variable's text and its value, or None when it is unset or empty (the default applies)."""
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        return raw, parse(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not {kind}") from None


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    if (found := _parsed(env, name, int, "an integer")) is None:
        return default
    if found[1] < minimum:
        raise SettingsError(f"{name}={found[1]} must be at least {minimum}")
    return found[1]


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    if (found := _parsed(env, name, float, "a number")) is None:
        return default
    raw, value = found
    if not math.isfinite(value) or value <= 0:
        raise SettingsError(f"{name}={raw!r} must be a positive, finite number")
    return value


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


def _log_level(raw: str) -> str:
    level = raw.strip().upper()
    if level not in LOG_LEVELS:
        raise SettingsError(f"DISCOUNT_LOG_LEVEL={raw!r} must be one of {', '.join(LOG_LEVELS)}")
    return level


def _seconds(env: Mapping[str, str], name: str, default: float, maximum: float) -> float:
    """A duration in seconds that may be 0, up to `maximum`."""
    if (found := _parsed(env, name, float, "a number of seconds")) is None:
        return default
    raw, value = found
    if not (math.isfinite(value) and 0 <= value <= maximum):
        raise SettingsError(f"{name}={raw} must be between 0 and {maximum:g} seconds")
    return value


def _switch(env: Mapping[str, str], name: str) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{name}={raw!r} must be 1 (on) or 0 (off)")


def _nats_stream(name: str) -> str:
    if any(c in name for c in " \t\r\n.*>/\\") or not name.isprintable():
        raise SettingsError(
            f"DISCOUNT_NATS_STREAM={name!r} must be a JetStream stream name: no spaces, '.', '*', '>', '/'"
        )
    return name


def _nats_prefix(prefix: str) -> str:
    tokens = prefix.split(".")
    if any(not t or t in ("*", ">") or not t.isprintable() or any(c.isspace() for c in t) for t in tokens):
        raise SettingsError(
            f"DISCOUNT_NATS_SUBJECT_PREFIX={prefix!r} must be NATS subject tokens joined by '.', "
            "without spaces or wildcards, e.g. discount.claims"
        )
    return prefix


# More skew than this between a sign-in service and this server is a broken clock, not a setting.
MAX_JWT_LEEWAY_SECONDS = 300.0


@dataclass(frozen=True)
class Settings:
    """Everything the server needs to start. Build it with `Settings.from_env()`."""

    database_url: str | None = None
    listen: str = "127.0.0.1:50051"
    data_dir: Path = field(default_factory=lambda: Path.home() / ".local/share/discount")
    pool_min_size: int = 4
    pool_max_size: int = 24
    # How long a call waits for a database connection before it fails with UNAVAILABLE.
    db_timeout_seconds: float = 2.0
    # How long a verified API key stays cached; a revoked key stops working within this time.
    key_cache_seconds: float = 5.0
    # SIGTERM: in-flight calls get this long to finish.
    shutdown_grace_seconds: float = 10.0
    # Largest request or response message, in bytes.
    max_message_bytes: int = 1024 * 1024
    # Unary calls without a client deadline are cut off after this long.
    default_call_timeout_seconds: float = 30.0
    # Watchers also poll this often, so a lost notification delays an event, never loses it.
    feed_poll_seconds: float = 1.0
    # Past these, new calls are refused at once with RESOURCE_EXHAUSTED/OVERLOADED (docs/design.md#limits).
    max_inflight_calls: int = 1000
    max_open_streams: int = 10_000
    workers: int = 1
    metrics_listen: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    jwt_secret: str | None = None
    jwt_public_key: Path | None = None
    jwt_algorithm: str = "HS256"
    jwt_issuer: str | None = None
    jwt_audience: str | None = None
    # Clock skew tolerated on a shopper token's exp (and nbf/iat): it works this long after it expired.
    jwt_leeway_seconds: float = 5.0
    log_level: str = "INFO"
    # Webhooks (webhook_delivery.py; README, "Webhooks").
    webhook_secret_key: str | None = field(default=None, repr=False)
    webhook_allow_insecure: bool = False
    webhook_retry_base_seconds: float = 5.0
    webhook_retry_period_seconds: float = 259200.0
    webhook_timeout_seconds: float = 10.0
    # The NATS JetStream relay of every claim (relay.py; README, "NATS relay"); no URL, no relay.
    nats_url: str | None = None
    nats_stream: str = "DISCOUNT_CLAIMS"
    nats_subject_prefix: str = "discount.claims"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env

        def path(name: str) -> Path | None:
            raw = env.get(name)
            return Path(raw) if raw else None

        tls_cert, tls_key = path("DISCOUNT_TLS_CERT"), path("DISCOUNT_TLS_KEY")
        if (tls_cert is None) != (tls_key is None):
            raise SettingsError("set both DISCOUNT_TLS_CERT and DISCOUNT_TLS_KEY, or neither")
        if path("DISCOUNT_TLS_CLIENT_CA") and tls_cert is None:
            raise SettingsError("DISCOUNT_TLS_CLIENT_CA needs DISCOUNT_TLS_CERT and DISCOUNT_TLS_KEY")
        listen = env.get("DISCOUNT_LISTEN") or cls.listen
        if ":" not in listen:
            raise SettingsError(f"DISCOUNT_LISTEN={listen!r} must be HOST:PORT, e.g. 127.0.0.1:50051")
        data_dir = path("DISCOUNT_DATA_DIR") or Path.home() / ".local/share/discount"
        pool_min = _int(env, "DISCOUNT_POOL_MIN_SIZE", cls.pool_min_size, minimum=1)
        pool_max = _int(env, "DISCOUNT_POOL_MAX_SIZE", cls.pool_max_size, minimum=1)
        if pool_max < pool_min:
            raise SettingsError("DISCOUNT_POOL_MAX_SIZE must be >= DISCOUNT_POOL_MIN_SIZE")
        return cls(
            database_url=env.get("DISCOUNT_DATABASE_URL") or None,
            listen=listen,
            data_dir=data_dir,
            pool_min_size=pool_min,
            pool_max_size=pool_max,
            db_timeout_seconds=_float(env, "DISCOUNT_DB_TIMEOUT_SECONDS", cls.db_timeout_seconds),
            key_cache_seconds=_float(env, "DISCOUNT_KEY_CACHE_SECONDS", cls.key_cache_seconds),
            shutdown_grace_seconds=_float(env, "DISCOUNT_SHUTDOWN_GRACE_SECONDS", cls.shutdown_grace_seconds),
            max_message_bytes=_int(env, "DISCOUNT_MAX_MESSAGE_BYTES", cls.max_message_bytes, minimum=1024),
            default_call_timeout_seconds=_float(
                env, "DISCOUNT_DEFAULT_CALL_TIMEOUT_SECONDS", cls.default_call_timeout_seconds
            ),
            feed_poll_seconds=_float(env, "DISCOUNT_FEED_POLL_SECONDS", cls.feed_poll_seconds),
            max_inflight_calls=_int(env, "DISCOUNT_MAX_INFLIGHT_CALLS", cls.max_inflight_calls, minimum=1),
            max_open_streams=_int(env, "DISCOUNT_MAX_OPEN_STREAMS", cls.max_open_streams, minimum=1),
            workers=_int(env, "DISCOUNT_WORKERS", cls.workers, minimum=1),
            metrics_listen=env.get("DISCOUNT_METRICS_LISTEN") or None,
            tls_cert=tls_cert,
            tls_key=tls_key,
            tls_client_ca=path("DISCOUNT_TLS_CLIENT_CA"),
            jwt_secret=env.get("DISCOUNT_JWT_SECRET") or None,
            jwt_public_key=path("DISCOUNT_JWT_PUBLIC_KEY"),
            jwt_algorithm=env.get("DISCOUNT_JWT_ALGORITHM") or cls.jwt_algorithm,
            jwt_issuer=env.get("DISCOUNT_JWT_ISSUER") or None,
            jwt_audience=env.get("DISCOUNT_JWT_AUDIENCE") or None,
            jwt_leeway_seconds=_seconds(
                env, "DISCOUNT_JWT_LEEWAY_SECONDS", cls.jwt_leeway_seconds, MAX_JWT_LEEWAY_SECONDS
            ),
            log_level=_log_level(env.get("DISCOUNT_LOG_LEVEL") or cls.log_level),
            webhook_secret_key=env.get("DISCOUNT_WEBHOOK_SECRET_KEY") or None,
            webhook_allow_insecure=_switch(env, "DISCOUNT_WEBHOOK_ALLOW_INSECURE"),
            webhook_retry_base_seconds=_float(
                env, "DISCOUNT_WEBHOOK_RETRY_BASE_SECONDS", cls.webhook_retry_base_seconds
            ),
            webhook_retry_period_seconds=_float(
                env, "DISCOUNT_WEBHOOK_RETRY_PERIOD_SECONDS", cls.webhook_retry_period_seconds
            ),
            webhook_timeout_seconds=_float(env, "DISCOUNT_WEBHOOK_TIMEOUT_SECONDS", cls.webhook_timeout_seconds),
            nats_url=env.get("DISCOUNT_NATS_URL") or None,
            nats_stream=_nats_stream(env.get("DISCOUNT_NATS_STREAM") or cls.nats_stream),
            nats_subject_prefix=_nats_prefix(env.get("DISCOUNT_NATS_SUBJECT_PREFIX") or cls.nats_subject_prefix),
        )
