"""Prints the part of ``requirements.lock`` the server needs at run time, hashes included.

The lock pins the server's dependencies and its development tools together (mypy, ruff,
grpcio-tools, pytest...), and pip-compile marks both kinds as coming from ``delidev
(pyproject.toml)``. The container image wants the first kind only, at the lock's versions and
checked against its hashes: a package is kept when ``[project].dependencies`` names it, or
when the lock says it comes from a package kept (its ``# via`` lines). That can keep a little
more than needed (an extra only a tool asked for), never less.

Standard library only: it runs in the image's build stage before anything is installed.
Usage: python3 deploy/runtime_lock.py [requirements.lock [pyproject.toml]] [--only NAME ...]
(``--only`` prints just those packages' entries, e.g. the build backend ``setuptools``.)
"""

from __future__ import annotations

import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==\S+")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass
class Entry:
    lines: list[str] = field(default_factory=list)
    """The pin and its ``--hash`` lines, as the lock writes them."""
    parents: set[str] = field(default_factory=set)


def parse_lock(text: str) -> dict[str, Entry]:
    entries: dict[str, Entry] = {}
    current: Entry | None = None
    in_via = False
    for line in text.splitlines():
        stripped = line.strip()
        pin = _PIN.match(line)
        if pin:
            current = entries.setdefault(normalize(pin.group(1)), Entry())
            current.lines.append(line)
            in_via = False
        elif current is None or not stripped:
            continue
        elif stripped.startswith("--hash"):
            current.lines.append(line)
        elif stripped.startswith("# via"):
            rest = stripped.removeprefix("# via").strip()
            if rest:  # "# via uvicorn": a single parent on the same line
                current.parents.add(normalize(rest.split()[0]))
            in_via = not rest
        elif in_via and stripped.startswith("#   "):
            current.parents.add(normalize(stripped[1:].split()[0]))
        elif stripped.startswith("#"):
            in_via = False
    return entries


def runtime_names(entries: dict[str, Entry], roots: set[str]) -> set[str]:
    kept = {name for name in roots if name in entries}
    if missing := roots - kept:
        raise SystemExit(f"requirements.lock lacks {', '.join(sorted(missing))}: run lock.sh")
    changed = True
    while changed:
        changed = False
        for name, entry in entries.items():
            if name not in kept and entry.parents & kept:
                kept.add(name)
                changed = True
    return kept


def project_roots(pyproject: str) -> set[str]:
    dependencies = tomllib.loads(pyproject)["project"]["dependencies"]
    return {normalize(m.group(1)) for d in dependencies if (m := _NAME.match(d))}


def render(entries: dict[str, Entry], names: set[str]) -> str:
    return "".join(
        "\n".join(entries[name].lines) + "\n" for name in sorted(names) if name in entries
    )


def main(argv: list[str]) -> int:
    only = [normalize(n) for n in argv[argv.index("--only") + 1 :]] if "--only" in argv else []
    paths = argv[: argv.index("--only")] if "--only" in argv else argv
    lock = Path(paths[0] if paths else "requirements.lock").read_text()
    pyproject = Path(paths[1] if len(paths) > 1 else "pyproject.toml").read_text()
    entries = parse_lock(lock)
    if only:
        missing = set(only) - entries.keys()
        if missing:
            raise SystemExit(f"requirements.lock lacks {', '.join(sorted(missing))}")
        names = set(only)
    else:
        names = runtime_names(entries, project_roots(pyproject))
    sys.stdout.write(render(entries, names))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
