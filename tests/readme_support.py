"""README parsing shared by the README tests: the commands they run are the README's own."""

from __future__ import annotations

import re
import shlex

from tests.support import ROOT

README_ADDRESS = "127.0.0.1:50051"


def readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, f"README.md has no section '## {title}'"
    return match.group(1)


def code_blocks(section: str, language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", section, flags=re.S | re.M)


def shell_commands(block: str) -> list[str]:
    """The commands of a shell block: comments dropped, backslash continuations joined."""
    joined = re.sub(r"\\\n\s*", " ", block)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def words(command: str) -> list[str]:
    return shlex.split(command)
