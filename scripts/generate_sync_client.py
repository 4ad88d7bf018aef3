#!/usr/bin/env python3
"""Writes clients/discount_client/client.py, the synchronous `DiscountClient`, from aio.py, the
asyncio `AsyncDiscountClient`: the two clients have one source.

    scripts/generate_sync_client.py [--output PATH]    (default: clients/discount_client/client.py)

scripts/generate.sh runs it; scripts/check.d/25-sync-client.sh fails when the committed client.py
is not what it writes.

How: aio.py is parsed with `ast`, transformed, written back with `ast.unparse`, then passed through
ruff with the project's configuration (import sorting, then `ruff format`, then `ruff check`, which
must pass), so the output depends only on aio.py and this script. The transformation:

- `async def`, `async for` and `async with` lose `async`; `await x` becomes `x`;
- identifiers in NAMES (names, attributes, imported names, definitions) become their sync twin;
- dotted names in DOTTED (grpc.aio's channels, asyncio.sleep, ...) become theirs, modules in MODULES
  theirs (`import asyncio` becomes `import time`);
- `except` clauses for an exception in ASYNC_ONLY_EXCEPTIONS are left out (only an asyncio task is
  cancelled that way);
- calls in WITHOUT_ARGUMENTS lose their arguments (grpc.aio's `Channel.close(grace)` is grpc's
  `Channel.close()`);
- `for x in xs: yield x` becomes `yield from xs` (an async generator cannot say `yield from`);
- docstrings: NAMES and DOC_TEXT are applied (`async with` -> `with`, `await ` -> ``, ...) and a
  paragraph that starts with "Asyncio only:" is left out; the module docstring is this script's.

Comments do not survive `ast`: client.py has none, so aio.py must not need a comment to be correct
(no `# type: ignore` or `# noqa`; this script refuses them). The output must not mention asyncio or
grpc.aio, nor keep an `Async...` name or an async docstring word: this script names any leftover,
which then needs an entry in one of the tables.

Adding a method (e.g. RedeemCode) to both clients:

1. Write it once, in aio.py, as an `async def` of `AsyncDiscountClient`. A unary call is
   `await self._call("RedeemCode", request, timeout)`; a call of another service passes that
   service's stub as the fourth argument (`self._admin_stub` for AdminService). A server stream
   follows `watch_claims`.
2. Build requests and convert responses in plain functions of _common.py or _admin.py (or a new
   `_<service>.py`), which both clients import as they are.
3. A new service (e.g. WebhookService) needs its stub made in `__init__` by a function like
   `_common.discount_stub`, which holds the `# type: ignore` the untyped generated stub needs.
4. Give the method its full docstring, written for asyncio: examples with `await` and `async for`,
   `aclose()` for an iterator. Only what has no sync meaning goes in an "Asyncio only:" paragraph.
5. Run scripts/generate.sh (or this script) and commit client.py with aio.py. If it stops at an
   asyncio or grpc.aio name with no sync twin, add the twin to NAMES or DOTTED here. Test the
   method on both clients.
"""

from __future__ import annotations

import argparse
import ast
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "clients" / "discount_client"
SOURCE = PACKAGE / "aio.py"
TARGET = PACKAGE / "client.py"

HEADER = (
    "# Generated from aio.py by scripts/generate_sync_client.py; do not edit.\n"
    "# Change aio.py, then run scripts/generate.sh (scripts/check.d/25-sync-client.sh checks it).\n"
)
MODULE_DOCSTRING = "`DiscountClient`: the synchronous client (grpc), generated from aio.py."

# Identifiers of the async source and their sync twins.
NAMES = {
    "AsyncDiscountClient": "DiscountClient",
    "AsyncChannelReadiness": "ChannelReadiness",
    "AsyncIterator": "Iterator",
    "__aenter__": "__enter__",
    "__aexit__": "__exit__",
}
# Dotted names of asyncio and grpc.aio and their sync twins.
DOTTED = {
    "grpc.aio.insecure_channel": "grpc.insecure_channel",
    "grpc.aio.secure_channel": "grpc.secure_channel",
    "grpc.aio.UsageError": "ValueError",  # what starting a call on a closed channel raises
    "asyncio.sleep": "time.sleep",
}
MODULES = {"asyncio": "time"}
ASYNC_ONLY_EXCEPTIONS = {"asyncio.CancelledError"}
WITHOUT_ARGUMENTS = {"self._channel.close"}
DOC_TEXT = {
    "async with ": "with ",
    "async for ": "for ",
    "await ": "",
    "aclose()": "close()",
    "asyncio client": "synchronous client",
}
ASYNC_ONLY_PARAGRAPH = "Asyncio only:"

# What must not be left in the output: the async names that no table mapped.
_ASYNC_NAME = re.compile(r"^(asyncio|aio|Async\w*|__a\w+__)$")
_ASYNC_DOC_WORD = re.compile(r"\b(async|await|asyncio|Async\w+|aclose|aiter|anext)\b")
_PARAGRAPHS = re.compile(r"(\n[ \t]*\n)")
# Stands for a blank line of the source while the tree is unparsed (ast keeps no blank lines).
_BLANK = "_generate_sync_client_blank_line_"


class GeneratorError(Exception):
    """The async source uses something this script cannot map; the message says what."""


def dotted(node: ast.AST) -> str | None:
    """`a.b.c` for an attribute chain on a name, else None."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = dotted(node.value)
        return f"{base}.{node.attr}" if base is not None else None
    return None


def sync_docstring(text: str) -> str:
    closing = text[len(text.rstrip()) :]  # what stands before the closing quotes
    paragraphs = _PARAGRAPHS.split(text.rstrip())
    kept: list[str] = []
    for index in range(0, len(paragraphs), 2):  # odd indexes are the separators
        if paragraphs[index].lstrip().startswith(ASYNC_ONLY_PARAGRAPH):
            continue
        if kept:
            kept.append(paragraphs[index - 1])
        kept.append(paragraphs[index])
    text = "".join(kept) + closing
    for name, twin in NAMES.items():
        text = re.sub(rf"\b{re.escape(name)}\b", twin, text)
    for words, twin in DOC_TEXT.items():
        text = text.replace(words, twin)
    return text


def docstring_node(node: ast.AST) -> ast.Constant | None:
    body = getattr(node, "body", None)
    if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and body:
        first = body[0]
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            return first.value
    return None


class AsyncToSync(ast.NodeTransformer):
    def _twin(self, node: ast.AST, kind: type[ast.AST]) -> ast.AST:
        twin = kind(**{field: getattr(node, field) for field in node._fields})
        visited: ast.AST = self.visit(ast.copy_location(twin, node))
        return visited

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> ast.AST:
        return self._twin(node, ast.FunctionDef)

    def visit_AsyncFor(self, node: ast.AsyncFor) -> ast.AST:
        return self._twin(node, ast.For)

    def visit_AsyncWith(self, node: ast.AsyncWith) -> ast.AST:
        return self._twin(node, ast.With)

    def visit_Await(self, node: ast.Await) -> ast.AST:
        visited: ast.AST = self.visit(node.value)
        return visited

    def _definition(self, node: ast.FunctionDef | ast.ClassDef) -> ast.AST:
        node.name = NAMES.get(node.name, node.name)
        docstring = docstring_node(node)
        if docstring is not None:
            docstring.value = sync_docstring(str(docstring.value))
        return self.generic_visit(node)

    def visit_FunctionDef(self, node: ast.FunctionDef) -> ast.AST:
        return self._definition(node)

    def visit_ClassDef(self, node: ast.ClassDef) -> ast.AST:
        return self._definition(node)

    def visit_For(self, node: ast.For) -> ast.AST:
        self.generic_visit(node)
        match node:
            case ast.For(target=ast.Name(id=name), body=[ast.Expr(value=ast.Yield(value=ast.Name(id=yielded)))]):
                if name == yielded and not node.orelse:
                    return ast.copy_location(ast.Expr(ast.YieldFrom(node.iter)), node)
        return node

    def visit_Try(self, node: ast.Try) -> ast.AST:
        node.handlers = [
            handler
            for handler in node.handlers
            if handler.type is None or dotted(handler.type) not in ASYNC_ONLY_EXCEPTIONS
        ]
        return self.generic_visit(node)

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if dotted(node.func) in WITHOUT_ARGUMENTS:
            node.args, node.keywords = [], []
        return self.generic_visit(node)

    def visit_Attribute(self, node: ast.Attribute) -> ast.AST:
        name = dotted(node)
        if name in DOTTED:
            return ast.copy_location(ast.parse(DOTTED[name], mode="eval").body, node)
        node.attr = NAMES.get(node.attr, node.attr)
        return self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> ast.AST:
        node.id = NAMES.get(node.id, node.id)
        return node

    def visit_Import(self, node: ast.Import) -> ast.AST:
        for alias in node.names:
            alias.name = MODULES.get(alias.name, alias.name)
        return node

    def visit_ImportFrom(self, node: ast.ImportFrom) -> ast.AST:
        for alias in node.names:
            alias.name = NAMES.get(alias.name, alias.name)
        return node


def mark_blank_lines(tree: ast.Module, lines: list[str]) -> None:
    """Puts a `_BLANK` statement where the source has a blank line between two statements of a
    block (ruff format spaces definitions by itself)."""
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            block = getattr(node, field, None)
            if not isinstance(block, list) or not block or not isinstance(block[0], ast.stmt):
                continue
            spaced: list[ast.stmt] = [block[0]]
            for before, after in zip(block, block[1:], strict=False):
                between = lines[(before.end_lineno or before.lineno) : after.lineno - 1]
                if not isinstance(after, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and any(
                    not line.strip() for line in between
                ):
                    spaced.append(ast.Expr(ast.Name(_BLANK)))
                spaced.append(after)
            setattr(node, field, spaced)


def leftovers(tree: ast.Module) -> list[str]:
    found: list[str] = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Name):
            names = [node.id]
        elif isinstance(node, ast.Attribute):
            names = [node.attr]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [alias.name for alias in node.names] + [node.module or ""]
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            names = [node.name]
        found += [f"line {getattr(node, 'lineno', '?')}: {name}" for name in names if _ASYNC_NAME.match(name)]
        docstring = docstring_node(node) if not isinstance(node, ast.Module) else None
        if docstring is not None and (word := _ASYNC_DOC_WORD.search(str(docstring.value))):
            found.append(f"line {docstring.lineno}: {word.group()!r} in a docstring")
    return found


def sync_tree(source: str) -> ast.Module:
    if found := re.findall(r"#\s*(?:type:\s*ignore|noqa)\b.*", source):
        raise GeneratorError(f"aio.py has comments the generated client would lose: {found}")
    parsed = ast.parse(source, filename=str(SOURCE))
    mark_blank_lines(parsed, source.splitlines())
    tree: ast.Module = AsyncToSync().visit(parsed)
    docstring = docstring_node(tree)
    if docstring is None:
        raise GeneratorError("aio.py has no module docstring")
    docstring.value = MODULE_DOCSTRING
    if found := leftovers(tree):
        raise GeneratorError(
            "aio.py uses async names with no sync twin (add them to the tables of "
            "scripts/generate_sync_client.py):\n  " + "\n  ".join(found)
        )
    return ast.fix_missing_locations(tree)


def ruff(*args: str, source: str) -> str:
    executable = Path(sys.executable).parent / "ruff"
    found = str(executable) if executable.exists() else shutil.which("ruff")
    if found is None:
        raise GeneratorError("ruff not found: `pip install -e '.[test]'` installs it")
    command = [found, *args, "--stdin-filename", str(TARGET.relative_to(ROOT)), "-"]
    done = subprocess.run(command, input=source, text=True, capture_output=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise GeneratorError(f"`ruff {' '.join(args)}` on the generated client:\n{done.stdout}{done.stderr}")
    return done.stdout


def generate(source: str) -> str:
    text = ast.unparse(sync_tree(source))
    text = re.sub(rf"^[ \t]*{_BLANK}$", "", text, flags=re.MULTILINE)
    text = ruff("check", "--fix-only", "--select", "I", source=HEADER + text + "\n")
    text = ruff("format", source=text)
    ruff("check", "--no-fix", "--quiet", source=text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", type=Path, default=TARGET, help="where to write (default: %(default)s)")
    output: Path = parser.parse_args().output
    try:
        text = generate(SOURCE.read_text())
    except GeneratorError as exc:
        print(f"generate_sync_client: {exc}", file=sys.stderr)
        return 1
    # Written beside the target and renamed into place, so an importer never reads half a file.
    fd, temporary = tempfile.mkstemp(dir=output.parent, prefix=".generate.", suffix=".py")
    with os.fdopen(fd, "w") as file:
        file.write(text)
    os.chmod(temporary, 0o644)
    os.replace(temporary, output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
