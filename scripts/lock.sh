#!/usr/bin/env bash
# Refreshes requirements.lock from pyproject.toml: every package the server and its dev tools
# need (dependencies and the "dev" extra, with what they pull in), pinned, with the hashes of
# every file of each pinned version on the indexes pip uses here (pip.conf's included).
# Usage: bash scripts/lock.sh              keeps the versions already locked where they still fit
#        bash scripts/lock.sh --upgrade    takes the newest versions pyproject.toml allows
# tests/test_lock.py fails while the lock misses a dependency that pyproject.toml names.
set -euo pipefail
cd "$(dirname "$0")/.."

tools=.venv/lock-tools  # pip-tools of its own, beside (not in) the project's environment
if [ ! -x "$tools/bin/pip-compile" ]; then
  python3 -m venv "$tools"
  "$tools/bin/pip" install -q pip-tools==7.7.0
fi
CUSTOM_COMPILE_COMMAND="bash scripts/lock.sh" "$tools/bin/pip-compile" -q \
  --generate-hashes --extra dev --strip-extras --allow-unsafe \
  --no-emit-index-url --no-emit-find-links \
  --output-file requirements.lock "$@" pyproject.toml
