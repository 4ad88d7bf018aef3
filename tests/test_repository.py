"""The repository stays lean: every clone carries every committed byte, forever."""

from __future__ import annotations

import subprocess

from tests.support import ROOT

LIMIT = 250 * 1024  # bytes; raw benchmark samples go to the ignored bench/raw/, not here


def test_no_tracked_file_is_over_250_kb() -> None:
    listed = (
        subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    )
    paths = [ROOT / name for name in listed if name]
    assert len(paths) > 50, f"git ls-files listed only {len(paths)} files in {ROOT}"
    too_big = {str(p.relative_to(ROOT)): p.stat().st_size for p in paths if p.is_file() and p.stat().st_size > LIMIT}
    assert too_big == {}, f"tracked files over {LIMIT // 1024} KB: {too_big}"
