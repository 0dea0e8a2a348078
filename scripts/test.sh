#!/usr/bin/env bash
# The test command: set up what is missing, then lint, type-check and run the whole suite.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh || exit 1

set -e
echo "== ruff"; .venv/bin/ruff check . && .venv/bin/ruff format --check --quiet .
echo "== mypy"; .venv/bin/mypy
set +e
echo "== pytest"
.venv/bin/pytest -q "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "pytest collected no tests: failing on purpose" >&2
  exit 1
fi
exit $rc
