"""Configuration from DISCOUNT_* variables (settings.py), as an operator sets it: every variable
reaches its setting, an empty one means the default, and a bad value stops the start with a
SettingsError that names the variable and says what is allowed."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from discount_service.settings import Settings, SettingsError

EXAMPLES = settings(database=None, max_examples=100, deadline=None)


def test_no_variables_means_the_documented_defaults() -> None:
    defaults = Settings.from_env({})
    assert defaults == Settings()
    assert (defaults.database_url, defaults.listen, defaults.workers) == (None, "127.0.0.1:50051", 1)
    assert (defaults.pool_min_size, defaults.pool_max_size, defaults.max_message_bytes) == (4, 24, 1024 * 1024)
    assert (defaults.jwt_algorithm, defaults.jwt_leeway_seconds, defaults.log_level) == ("HS256", 5.0, "INFO")
    assert defaults.data_dir == Path.home() / ".local/share/discount"


@pytest.mark.parametrize(
    ("variable", "raw", "attribute", "value"),
    [
        ("DISCOUNT_DATABASE_URL", "postgresql://db/discount", "database_url", "postgresql://db/discount"),
        ("DISCOUNT_LISTEN", "0.0.0.0:6000", "listen", "0.0.0.0:6000"),
        ("DISCOUNT_LISTEN", "[::]:6000", "listen", "[::]:6000"),
        ("DISCOUNT_DATA_DIR", "/var/lib/discount", "data_dir", Path("/var/lib/discount")),
        ("DISCOUNT_POOL_MIN_SIZE", "2", "pool_min_size", 2),
        ("DISCOUNT_POOL_MAX_SIZE", "64", "pool_max_size", 64),
        ("DISCOUNT_DB_TIMEOUT_SECONDS", "0.5", "db_timeout_seconds", 0.5),
        ("DISCOUNT_KEY_CACHE_SECONDS", "30", "key_cache_seconds", 30.0),
        ("DISCOUNT_SHUTDOWN_GRACE_SECONDS", "2.5", "shutdown_grace_seconds", 2.5),
        ("DISCOUNT_MAX_MESSAGE_BYTES", "4194304", "max_message_bytes", 4194304),
        ("DISCOUNT_DEFAULT_CALL_TIMEOUT_SECONDS", "5", "default_call_timeout_seconds", 5.0),
        ("DISCOUNT_FEED_POLL_SECONDS", "0.25", "feed_poll_seconds", 0.25),
        ("DISCOUNT_WORKERS", "4", "workers", 4),
        ("DISCOUNT_METRICS_LISTEN", "127.0.0.1:9100", "metrics_listen", "127.0.0.1:9100"),
        ("DISCOUNT_JWT_SECRET", "s" * 32, "jwt_secret", "s" * 32),
        ("DISCOUNT_JWT_PUBLIC_KEY", "/etc/discount/jwt.pem", "jwt_public_key", Path("/etc/discount/jwt.pem")),
        ("DISCOUNT_JWT_ALGORITHM", "RS256", "jwt_algorithm", "RS256"),
        ("DISCOUNT_JWT_ISSUER", "https://login.example", "jwt_issuer", "https://login.example"),
        ("DISCOUNT_JWT_AUDIENCE", "discount", "jwt_audience", "discount"),
        ("DISCOUNT_JWT_LEEWAY_SECONDS", "0", "jwt_leeway_seconds", 0.0),
        ("DISCOUNT_JWT_LEEWAY_SECONDS", "300", "jwt_leeway_seconds", 300.0),
        ("DISCOUNT_LOG_LEVEL", "debug", "log_level", "DEBUG"),
    ],
)
def test_each_variable_reaches_its_setting(variable: str, raw: str, attribute: str, value: Any) -> None:
    assert getattr(Settings.from_env({variable: raw}), attribute) == value


VARIABLES = [
    "DISCOUNT_DATABASE_URL",
    "DISCOUNT_LISTEN",
    "DISCOUNT_DATA_DIR",
    "DISCOUNT_POOL_MIN_SIZE",
    "DISCOUNT_POOL_MAX_SIZE",
    "DISCOUNT_DB_TIMEOUT_SECONDS",
    "DISCOUNT_KEY_CACHE_SECONDS",
    "DISCOUNT_SHUTDOWN_GRACE_SECONDS",
    "DISCOUNT_MAX_MESSAGE_BYTES",
    "DISCOUNT_DEFAULT_CALL_TIMEOUT_SECONDS",
    "DISCOUNT_FEED_POLL_SECONDS",
    "DISCOUNT_WORKERS",
    "DISCOUNT_METRICS_LISTEN",
    "DISCOUNT_TLS_CERT",
    "DISCOUNT_TLS_KEY",
    "DISCOUNT_TLS_CLIENT_CA",
    "DISCOUNT_JWT_SECRET",
    "DISCOUNT_JWT_PUBLIC_KEY",
    "DISCOUNT_JWT_ALGORITHM",
    "DISCOUNT_JWT_ISSUER",
    "DISCOUNT_JWT_AUDIENCE",
    "DISCOUNT_JWT_LEEWAY_SECONDS",
    "DISCOUNT_LOG_LEVEL",
]


def test_a_variable_set_to_nothing_means_its_default() -> None:
    assert Settings.from_env(dict.fromkeys(VARIABLES, "")) == Settings()


def test_the_process_environment_is_read_when_none_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DISCOUNT_WORKERS", "3")
    assert Settings.from_env().workers == 3


def test_tls_files_come_as_a_pair_with_an_optional_client_ca() -> None:
    tls = Settings.from_env(
        {"DISCOUNT_TLS_CERT": "/tls/c.pem", "DISCOUNT_TLS_KEY": "/tls/k.pem", "DISCOUNT_TLS_CLIENT_CA": "/tls/ca.pem"}
    )
    assert (tls.tls_cert, tls.tls_key, tls.tls_client_ca) == (
        Path("/tls/c.pem"),
        Path("/tls/k.pem"),
        Path("/tls/ca.pem"),
    )


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DISCOUNT_POOL_MIN_SIZE": "four"}, "DISCOUNT_POOL_MIN_SIZE='four' is not an integer"),
        ({"DISCOUNT_POOL_MIN_SIZE": "2.5"}, "DISCOUNT_POOL_MIN_SIZE='2.5' is not an integer"),
        ({"DISCOUNT_POOL_MIN_SIZE": "0"}, "DISCOUNT_POOL_MIN_SIZE=0 must be at least 1"),
        ({"DISCOUNT_POOL_MAX_SIZE": "-3"}, "DISCOUNT_POOL_MAX_SIZE=-3 must be at least 1"),
        (
            {"DISCOUNT_POOL_MIN_SIZE": "10", "DISCOUNT_POOL_MAX_SIZE": "5"},
            "DISCOUNT_POOL_MAX_SIZE must be >= DISCOUNT_POOL_MIN_SIZE",
        ),
        ({"DISCOUNT_POOL_MIN_SIZE": "30"}, "DISCOUNT_POOL_MAX_SIZE must be >= DISCOUNT_POOL_MIN_SIZE"),
        ({"DISCOUNT_WORKERS": "0"}, "DISCOUNT_WORKERS=0 must be at least 1"),
        ({"DISCOUNT_WORKERS": "many"}, "DISCOUNT_WORKERS='many' is not an integer"),
        ({"DISCOUNT_MAX_MESSAGE_BYTES": "1000"}, "DISCOUNT_MAX_MESSAGE_BYTES=1000 must be at least 1024"),
        ({"DISCOUNT_MAX_MESSAGE_BYTES": "1MB"}, "DISCOUNT_MAX_MESSAGE_BYTES='1MB' is not an integer"),
        ({"DISCOUNT_DB_TIMEOUT_SECONDS": "2s"}, "DISCOUNT_DB_TIMEOUT_SECONDS='2s' is not a number"),
        ({"DISCOUNT_DB_TIMEOUT_SECONDS": "0"}, "DISCOUNT_DB_TIMEOUT_SECONDS='0' must be a positive, finite number"),
        ({"DISCOUNT_DB_TIMEOUT_SECONDS": "nan"}, "DISCOUNT_DB_TIMEOUT_SECONDS='nan' must be a positive, finite number"),
        ({"DISCOUNT_DB_TIMEOUT_SECONDS": "inf"}, "DISCOUNT_DB_TIMEOUT_SECONDS='inf' must be a positive, finite number"),
        ({"DISCOUNT_KEY_CACHE_SECONDS": "-5"}, "DISCOUNT_KEY_CACHE_SECONDS='-5' must be a positive, finite number"),
        (
            {"DISCOUNT_LOG_LEVEL": "loud"},
            "DISCOUNT_LOG_LEVEL='loud' must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL",
        ),
        ({"DISCOUNT_SHUTDOWN_GRACE_SECONDS": "soon"}, "DISCOUNT_SHUTDOWN_GRACE_SECONDS='soon' is not a number"),
        (
            {"DISCOUNT_DEFAULT_CALL_TIMEOUT_SECONDS": "0"},
            "DISCOUNT_DEFAULT_CALL_TIMEOUT_SECONDS='0' must be a positive, finite number",
        ),
        ({"DISCOUNT_FEED_POLL_SECONDS": "-1"}, "DISCOUNT_FEED_POLL_SECONDS='-1' must be a positive, finite number"),
        ({"DISCOUNT_JWT_LEEWAY_SECONDS": "soon"}, "DISCOUNT_JWT_LEEWAY_SECONDS='soon' is not a number of seconds"),
        ({"DISCOUNT_JWT_LEEWAY_SECONDS": "-1"}, "DISCOUNT_JWT_LEEWAY_SECONDS=-1 must be between 0 and 300 seconds"),
        ({"DISCOUNT_JWT_LEEWAY_SECONDS": "301"}, "DISCOUNT_JWT_LEEWAY_SECONDS=301 must be between 0 and 300 seconds"),
        ({"DISCOUNT_JWT_LEEWAY_SECONDS": "nan"}, "DISCOUNT_JWT_LEEWAY_SECONDS=nan must be between 0 and 300 seconds"),
        ({"DISCOUNT_JWT_LEEWAY_SECONDS": "inf"}, "DISCOUNT_JWT_LEEWAY_SECONDS=inf must be between 0 and 300 seconds"),
        ({"DISCOUNT_LISTEN": "50051"}, "DISCOUNT_LISTEN='50051' must be HOST:PORT, e.g. 127.0.0.1:50051"),
        ({"DISCOUNT_TLS_CERT": "/tls/c.pem"}, "set both DISCOUNT_TLS_CERT and DISCOUNT_TLS_KEY, or neither"),
        ({"DISCOUNT_TLS_KEY": "/tls/k.pem"}, "set both DISCOUNT_TLS_CERT and DISCOUNT_TLS_KEY, or neither"),
        (
            {"DISCOUNT_TLS_CLIENT_CA": "/tls/ca.pem"},
            "DISCOUNT_TLS_CLIENT_CA needs DISCOUNT_TLS_CERT and DISCOUNT_TLS_KEY",
        ),
    ],
)
def test_a_bad_value_fails_fast_naming_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env(env)
    assert str(refused.value) == message


def _is_integer(raw: str) -> bool:
    try:
        int(raw)
    except ValueError:
        return False
    return True


def _is_number(raw: str) -> bool:
    try:
        float(raw)
    except ValueError:
        return False
    return True


INTEGERS = ["DISCOUNT_POOL_MIN_SIZE", "DISCOUNT_POOL_MAX_SIZE", "DISCOUNT_MAX_MESSAGE_BYTES", "DISCOUNT_WORKERS"]
DURATIONS = [
    "DISCOUNT_DB_TIMEOUT_SECONDS",
    "DISCOUNT_KEY_CACHE_SECONDS",
    "DISCOUNT_SHUTDOWN_GRACE_SECONDS",
    "DISCOUNT_DEFAULT_CALL_TIMEOUT_SECONDS",
    "DISCOUNT_FEED_POLL_SECONDS",
    "DISCOUNT_JWT_LEEWAY_SECONDS",
]


@EXAMPLES
@given(st.sampled_from(INTEGERS), st.text(min_size=1, max_size=12))
def test_any_text_that_is_not_an_integer_is_refused_naming_the_variable(variable: str, raw: str) -> None:
    assume(not _is_integer(raw))
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({variable: raw})
    assert str(refused.value) == f"{variable}={raw!r} is not an integer"


@EXAMPLES
@given(st.sampled_from(DURATIONS), st.text(min_size=1, max_size=12))
def test_any_text_that_is_not_a_number_is_refused_naming_the_variable(variable: str, raw: str) -> None:
    assume(not _is_number(raw))
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({variable: raw})
    assert str(refused.value).startswith(f"{variable}={raw!r} is not a number")


@EXAMPLES
@given(st.sampled_from(DURATIONS), st.floats(min_value=0.001, max_value=300, allow_nan=False))
def test_any_positive_duration_up_to_the_leeway_limit_is_taken(variable: str, seconds: float) -> None:
    attribute = variable.removeprefix("DISCOUNT_").lower()
    taken = getattr(Settings.from_env({variable: repr(seconds)}), attribute)
    assert math.isclose(taken, seconds)


def test_settings_cannot_be_changed_once_read() -> None:
    with pytest.raises(AttributeError):
        Settings.from_env({}).workers = 8  # type: ignore[misc]
