"""Every module of the service layer and the two front doors imports on its own, first in a
fresh process: a tool or script may start from any of them, and an import cycle shows only
in some orders (``services.usage`` importing the workers package once broke
``import delidev.services.sessions`` while the test suite, which imports the app first,
passed)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import delidev.services

ROOTS = ["delidev.app", "delidev.graphql.schema", "delidev.connect.routes", "delidev.cli"]


def _modules() -> list[str]:
    found = list(ROOTS)
    for info in pkgutil.walk_packages(delidev.services.__path__, "delidev.services."):
        found.append(info.name)
    return found


def _imports(module: str) -> tuple[str, str | None]:
    done = subprocess.run(
        [sys.executable, "-c", f"import {module}"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return module, None if done.returncode == 0 else done.stderr.strip().splitlines()[-1]


def test_each_module_imports_first_in_a_fresh_process() -> None:
    modules = _modules()
    assert "delidev.services.usage" in modules
    with ThreadPoolExecutor(max_workers=4) as pool:
        failed = {m: err for m, err in pool.map(_imports, modules) if err is not None}
    assert not failed, failed
