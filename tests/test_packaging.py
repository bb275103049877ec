"""The container image's promises, checked without a container runtime (the image itself is
built and run by scripts/container_smoke.sh): the run-time part of the lock that the
Dockerfile installs holds everything the server imports, and the Dockerfile installs it with
hashes, as a non-root user, with ``delidev-server`` and a health check on ``/healthz``."""

from __future__ import annotations

import importlib.metadata
import json
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy"))
import runtime_lock  # noqa: E402  # deploy/ is no package: the image build runs it as a script

DEV_ONLY = {"pytest", "mypy", "ruff", "grpcio-tools", "hypothesis", "setuptools"}


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions with continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0].upper(), line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def closure(roots: list[str]) -> set[str]:
    """Names of the installed distributions the roots need, markers and extras evaluated."""
    seen: set[str] = set()
    pending = [r for r in map(Requirement, roots) if r.marker is None or r.marker.evaluate()]
    while pending:
        req = pending.pop()  # its marker held for the extras its parent asked for
        name = canonicalize_name(req.name)
        first = name not in seen
        seen.add(name)
        for spec in importlib.metadata.requires(req.name) or []:
            dep = Requirement(spec)
            wanted = dep.marker is None or any(
                dep.marker.evaluate({"extra": extra}) for extra in ("", *req.extras)
            )
            if wanted and (first or req.extras):
                pending.append(dep)
    return seen


def test_runtime_lock_holds_what_the_server_needs_and_no_dev_tools() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    entries = runtime_lock.parse_lock((ROOT / "requirements.lock").read_text())
    kept = runtime_lock.runtime_names(entries, runtime_lock.project_roots(pyproject))
    needed = closure(tomllib.loads(pyproject)["project"]["dependencies"])
    assert needed <= kept, f"missing from the image: {sorted(needed - kept)}"
    assert not DEV_ONLY & kept
    rendered = runtime_lock.render(entries, kept)
    assert rendered.count("==") == len(kept)
    assert "--hash=sha256:" in rendered


def test_dockerfile_installs_the_lock_with_hashes_and_runs_unprivileged() -> None:
    steps = instructions()
    runs = " ".join(arg for op, arg in steps if op == "RUN")
    assert "deploy/runtime_lock.py requirements.lock pyproject.toml > /tmp/runtime.lock" in runs
    assert "pip install --require-hashes -r /tmp/runtime.lock" in runs
    assert re.search(r"pip install --no-deps /tmp/dist/delidev-\S*\.whl", runs)
    final_stage = steps[max(i for i, (op, _) in enumerate(steps) if op == "FROM") :]
    users = [arg for op, arg in final_stage if op == "USER"]
    assert users
    assert users[-1].split(":")[0] not in ("root", "0")
    assert ("ENTRYPOINT", '["delidev-server"]') in steps
    assert ("CMD", '["serve"]') in steps
    (health,) = [arg for op, arg in steps if op == "HEALTHCHECK"]
    assert "/healthz" in health
    command = json.loads(health[health.index("CMD") + 3 :])
    assert command[0] == "python3"
    env = " ".join(arg for op, arg in steps if op == "ENV")
    assert "DELIDEV_SERVER_HOST=0.0.0.0" in env
    assert "HOME=/var/lib/delidev" in env
    assert ("VOLUME", '["/var/lib/delidev"]') in steps
