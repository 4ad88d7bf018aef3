from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.browser.support import Browser, Stack, running_stack


@pytest.fixture
def stack(database_url: str, output_dir: Path) -> Iterator[Stack]:
    """A real `discount serve` + Envoy (gRPC-Web) + the built page, logs in the test's output folder."""
    with running_stack(database_url, output_dir) as running:
        yield running


@pytest.fixture
def browser(output_dir: Path) -> Iterator[Browser]:
    """Headless Debian Chromium. Missing browser or packages fail the test: they never skip it."""
    chromium = Browser(output_dir / "browser.log")
    yield chromium
    chromium.close()
