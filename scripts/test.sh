#!/usr/bin/env bash
# The whole test suite, as CI runs it: setup, lint, types, import contracts, then pytest
# against SQLite and a real PostgreSQL (started here), real haproxy, lab API server, Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

echo "== ruff" && .venv/bin/ruff check --no-cache . && .venv/bin/ruff format --check --no-cache .
echo "== mypy (strict on lbprovider/)" && .venv/bin/mypy
echo "== import contracts" && .venv/bin/lint-imports

LBP_TEST_PG_URL=$(bash scripts/postgres.sh)
export LBP_TEST_PG_URL
mkdir -p artifacts
echo "== pytest"
set +e
.venv/bin/pytest -m "not e2e" -p no:cacheprovider --junitxml=artifacts/junit.xml \
  --cov=lbprovider --cov-report=term:skip-covered "$@"
rc=$?
set -e
# 5 = no tests collected: a suite that ran nothing has failed.
exit $rc
