#!/usr/bin/env bash
# The static checks the build runs before the tests: ruff (lint and format), the layer contract, mypy.
# Assumes .venv with the test extras (scripts/test.sh makes it).
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
echo "+ ruff check"; "$bin/ruff" check libsgde services tests benchmarks scripts
echo "+ ruff format --check"; "$bin/ruff" format --check libsgde services tests benchmarks scripts
echo "+ lint-imports"; "$bin/lint-imports"
echo "+ mypy"; "$bin/mypy"
