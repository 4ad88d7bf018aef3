"""README parsing shared by the tests that run the documentation's examples: the commands they run
are the documentation's own.

The README keeps what a new user needs first and links the rest to pages under docs/, so a section an
example lives in is looked up in both: a `## title` section of README.md, or of a page under docs/, or a
whole page under docs/ whose `# title` it is."""

from __future__ import annotations

import re
import shlex
import textwrap
from pathlib import Path

from tests.support import ROOT

README_ADDRESS = "127.0.0.1:50051"
README = ROOT / "README.md"
DOCS = ROOT / "docs"


def documentation_pages() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def readme_section(title: str) -> str:
    """The text of the section (or docs page) titled `title`; it must exist exactly once, and a docs
    page that holds it must be linked from the README, so a reader finds what the tests run."""
    found: list[tuple[Path, str]] = []
    for page in documentation_pages():
        text = page.read_text()
        whole_page = re.match(rf"# {re.escape(title)}\n(.*)", text, flags=re.S)
        if whole_page and page != README:
            found.append((page, whole_page.group(1)))
        sections = re.findall(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
        found.extend((page, section) for section in sections)
    pages = [str(page.relative_to(ROOT)) for page, _ in found]
    assert len(found) == 1, f"'{title}' must title exactly one section or docs page, not {len(found)}: {pages}"
    page, section = found[0]
    if page != README:
        assert f"(docs/{page.name}" in README.read_text(), f"README.md does not link docs/{page.name}"
    return section


def code_blocks(section: str, language: str) -> list[str]:
    """The fenced blocks of `language`, those indented under a list item too (without the indent)."""
    blocks = re.findall(rf"^( *)```{language}\n(.*?)^\1```", section, flags=re.S | re.M)
    return [textwrap.dedent(block) if indent else block for indent, block in blocks]


def shell_commands(block: str) -> list[str]:
    """The commands of a shell block: comments dropped, backslash continuations joined."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def words(command: str) -> list[str]:
    return shlex.split(command)
