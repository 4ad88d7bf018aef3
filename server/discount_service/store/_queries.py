"""The named statements of sql/*.sql (schema.sql aside, which is there to be read): one dict by name."""

from __future__ import annotations

import re
from importlib import resources

_SQL_PACKAGE = "discount_service"
# What the migrations add up to, there to be read: it holds no named statements.
_NOT_QUERIES = {"schema.sql"}


def _blocks(text: str) -> dict[str, str]:
    """name -> statement, from the `-- name:` blocks of one file, without each block's leading
    description comment, final semicolon and any comment after it (a section heading before the
    next block), so a statement can be embedded, e.g. after `PREPARE name AS` or `EXPLAIN`."""
    queries: dict[str, str] = {}
    for block in re.split(r"^-- name: ", text, flags=re.MULTILINE)[1:]:
        name, _, body = block.partition("\n")
        lines = body.strip().splitlines()
        while lines and lines[0].startswith("--"):
            lines.pop(0)
        while lines and (lines[-1].startswith("--") or not lines[-1].strip()):
            lines.pop()
        queries[name.strip()] = "\n".join(lines).strip().rstrip(";")
    return queries


def _query_files() -> dict[str, str]:
    """file name -> text of every sql/*.sql that holds named statements."""
    folder = resources.files(_SQL_PACKAGE).joinpath("sql")
    names = sorted(f.name for f in folder.iterdir() if f.name.endswith(".sql") and f.name not in _NOT_QUERIES)
    return {name: folder.joinpath(name).read_text() for name in names}


def _load_queries() -> dict[str, str]:
    queries: dict[str, str] = {}
    for file, text in _query_files().items():
        for name, statement in _blocks(text).items():
            if name in queries:
                raise ValueError(f"the query {name!r} of sql/{file} is named twice")
            queries[name] = statement
    return queries


QUERIES = _load_queries()
