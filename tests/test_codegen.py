"""The committed generated code matches proto/."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path


def test_generated_code_is_up_to_date(repo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "gen"
    # generate.sh runs the `python` first on PATH: the one running the tests (its venv has
    # the pinned plugins), however pytest was started.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    subprocess.run(
        ["bash", str(repo_root / "proto" / "generate.sh"), str(out)],
        check=True,
        cwd=repo_root,
        env={**os.environ, "PATH": path},
    )
    committed = repo_root / "delidev" / "connect" / "gen"
    fresh = sorted(p.relative_to(out) for p in out.rglob("*.py"))
    existing = sorted(p.relative_to(committed) for p in committed.rglob("*.py"))
    assert fresh == existing, "run: bash proto/generate.sh"
    for path in fresh:
        assert filecmp.cmp(out / path, committed / path, shallow=False), (
            f"{path} is stale: run bash proto/generate.sh"
        )
