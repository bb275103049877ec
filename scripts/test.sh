#!/usr/bin/env bash
# Runs the whole test suite: lint, types, then pytest on SQLite and on PostgreSQL.
# Usage: bash scripts/test.sh   (from a checkout; creates .venv on first use)
set -euo pipefail
cd "$(dirname "$0")/.."

# The browser tests drive Debian's chromium (Playwright cannot download its own here).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== installing chromium for the browser tests"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
  else
    echo "chromium is missing: install it (apt-get install chromium) for the browser tests" >&2
  fi
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The versions CI tested, each file checked against its hash (requirements.lock, refreshed
# by scripts/lock.sh; tests/test_lock.py fails while it lags pyproject.toml), then the
# project itself without letting pip pick anything else.
python -m pip install -q --require-hashes -r requirements.lock
python -m pip install -q --no-deps -e .

ruff check .
ruff format --check .
mypy

run_pytest() {
  # Exit code 5 means "no tests collected": that is a failure here, not a pass.
  python -m pytest "$@"
}

echo "== pytest on SQLite"
DELIDEV_TEST_DATABASE=sqlite run_pytest -q
echo "== pytest on PostgreSQL"
DELIDEV_TEST_DATABASE=postgres run_pytest -q
