"""The console's committed build (delidev/console_dist, what the server serves) is what its
source builds to: a change to console/ or proto/ without `npm run build` fails here, as a
stale protobuf generation fails test_codegen."""

from __future__ import annotations

import filecmp
import os
import shutil
import subprocess
from pathlib import Path

import pytest

NPM_CI_TIMEOUT_S = 300.0
BUILD_TIMEOUT_S = 180.0


def _npm() -> str:
    npm = shutil.which("npm")
    if npm is None:
        if os.environ.get("CI") == "true":
            pytest.fail("npm is not installed: the console build check needs Node.js and npm")
        pytest.skip("npm is not installed")
    return npm


def _run(args: list[str], cwd: Path, timeout: float) -> None:
    try:
        done = subprocess.run(
            args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"`{' '.join(args)}` timed out after {timeout:.0f} s")
    assert done.returncode == 0, f"`{' '.join(args)}` failed:\n{done.stdout}\n{done.stderr}"


def test_the_committed_console_build_is_up_to_date(repo_root: Path, tmp_path: Path) -> None:
    npm = _npm()
    source = repo_root / "console"
    installed = source / "node_modules" / ".package-lock.json"
    lock = source / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        _run([npm, "ci", "--no-audit", "--no-fund"], source, NPM_CI_TIMEOUT_S)
    out = tmp_path / "dist"
    _run(
        [npm, "run", "build", "--", "--outDir", str(out), "--emptyOutDir"],
        source,
        BUILD_TIMEOUT_S,
    )
    committed = repo_root / "delidev" / "console_dist"
    fresh = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    existing = sorted(p.relative_to(committed) for p in committed.rglob("*") if p.is_file())
    assert fresh == existing, "the console build is stale: run `npm run build` in console/"
    for path in fresh:
        assert filecmp.cmp(out / path, committed / path, shallow=False), (
            f"{path} is stale: run `npm run build` in console/"
        )
