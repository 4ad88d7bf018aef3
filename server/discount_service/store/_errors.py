"""psycopg errors turned into the domain errors (errors.py) that say what happened, once, here."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import psycopg
import psycopg.errors
from psycopg_pool import PoolTimeout

from .. import errors


def is_connection_error(exc: BaseException) -> bool:
    """Whether `exc` says the connection (or the pool) failed, rather than the statement."""
    return isinstance(
        exc,
        psycopg.OperationalError | PoolTimeout | psycopg.errors.AdminShutdown | psycopg.errors.CannotConnectNow,
    ) and not isinstance(exc, psycopg.errors.QueryCanceled)


_UNIQUE_VIOLATION = re.compile(r'duplicate key value violates unique constraint "(.+)"')
# The detail of a unique violation on brand_id: `Key (brand_id)=(globex) already exists.`
_DUPLICATE_BRAND = re.compile(r"Key \(brand_id\)=\((.*)\) already exists\.")


def unique_violation(exc: BaseException) -> str | None:
    """The unique constraint `exc` violates ("" if it does not say), or None for another error.

    The same on plain PostgreSQL and Citus. Through Citus, the violation happens in a shard: the
    error names the shard's copy of the constraint (`brands_brand_id_key_102008`) in its message
    only, and a collision inside a COPY arrives as an internal error (XX000) with that message; the
    shard id is cut off, leaving the constraint's name."""
    if not isinstance(exc, psycopg.Error):
        return None
    if isinstance(exc, psycopg.errors.UniqueViolation) and exc.diag.constraint_name:
        return exc.diag.constraint_name
    if not isinstance(exc, psycopg.errors.UniqueViolation | psycopg.errors.InternalError_):
        return None
    found = _UNIQUE_VIOLATION.fullmatch(exc.diag.message_primary or "")
    if found is None:
        return "" if isinstance(exc, psycopg.errors.UniqueViolation) else None
    return re.sub(r"_\d+$", "", found.group(1))


def _duplicate_brand(exc: psycopg.Error) -> errors.AlreadyExists:
    """The brand's id comes from the error's detail, which names the duplicate key's value."""
    found = _DUPLICATE_BRAND.fullmatch(exc.diag.message_detail or "")
    if found is None:
        return errors.AlreadyExists("the brand already exists")
    brand_id = found.group(1)
    return errors.AlreadyExists(f"brand {brand_id!r} already exists", metadata={"brand_id": brand_id})


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turns a psycopg error into the domain error that says what happened."""
    try:
        yield
    except errors.DiscountError:
        raise
    except (psycopg.errors.UniqueViolation, psycopg.errors.InternalError_) as exc:
        constraint = unique_violation(exc)
        if constraint is None:  # an internal error of another kind
            raise
        if constraint == "brands_brand_id_key":
            raise _duplicate_brand(exc) from exc
        raise errors.FailedPrecondition(f"conflict on {constraint or 'a unique key'}; retry the call") from exc
    except (psycopg.DataError, psycopg.errors.CharacterNotInRepertoire, psycopg.errors.UntranslatableCharacter) as exc:
        raise errors.InvalidArgument("a field holds a value the database cannot store (e.g. a NUL byte)") from exc
    except psycopg.errors.QueryCanceled as exc:
        raise errors.Unavailable("the database call timed out; retry") from exc
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise errors.Unavailable("the database is unavailable; retry with backoff") from exc
