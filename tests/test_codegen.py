"""The committed generated code matches proto/."""

from __future__ import annotations

import filecmp
import subprocess
from pathlib import Path


def test_generated_code_is_up_to_date(repo_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "gen"
    subprocess.run(
        ["bash", str(repo_root / "proto" / "generate.sh"), str(out)], check=True, cwd=repo_root
    )
    committed = repo_root / "delidev" / "connect" / "gen"
    fresh = sorted(p.relative_to(out) for p in out.rglob("*.py"))
    existing = sorted(p.relative_to(committed) for p in committed.rglob("*.py"))
    assert fresh == existing, "run: bash proto/generate.sh"
    for path in fresh:
        assert filecmp.cmp(out / path, committed / path, shallow=False), (
            f"{path} is stale: run bash proto/generate.sh"
        )
