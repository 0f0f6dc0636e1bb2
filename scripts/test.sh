#!/usr/bin/env bash
# The test suite (CPU, no network), one pytest worker per core (pytest-xdist; a test file stays on
# one worker, so its module fixtures are built once). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -n auto --dist loadfile "$@"
