"""requirements.lock is in step with pyproject.toml: a fresh machine installs the versions
CI tested (scripts/test.sh installs from the lock with ``--require-hashes``)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REFRESH = "refresh it with: bash scripts/lock.sh"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)")


def _locked(root: Path) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) for each pin of the lock."""
    pins: dict[str, tuple[str, int]] = {}
    name = ""
    for line in (root / "requirements.lock").read_text().splitlines():
        pinned = PIN.match(line)
        if pinned:
            name = canonicalize_name(pinned[1])
            pins[name] = (pinned[2].rstrip("\\ ").strip(), 0)
        elif line.strip().startswith("--hash=sha256:") and name:
            version, hashes = pins[name]
            pins[name] = (version, hashes + 1)
    return pins


def _declared(root: Path) -> list[Requirement]:
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    return [
        Requirement(r) for r in [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    ]


def test_every_dependency_of_pyproject_is_locked_at_a_version_it_allows(repo_root: Path) -> None:
    locked = _locked(repo_root)
    for requirement in _declared(repo_root):
        name = canonicalize_name(requirement.name)
        assert name in locked, f"{requirement.name} is not in requirements.lock; {REFRESH}"
        version = locked[name][0]
        assert requirement.specifier.contains(version, prereleases=True), (
            f"requirements.lock pins {requirement.name}=={version}, pyproject.toml asks for "
            f"{requirement}; {REFRESH}"
        )


def test_every_locked_package_carries_its_hashes(repo_root: Path) -> None:
    locked = _locked(repo_root)
    assert locked, "requirements.lock pins nothing"
    unhashed = [name for name, (_, hashes) in locked.items() if hashes == 0]
    assert not unhashed, f"pins without --hash (pip --require-hashes refuses them): {unhashed}"
