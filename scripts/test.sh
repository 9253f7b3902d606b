#!/usr/bin/env bash
# Sets up .venv (if needed) with the project and its test extras, runs the static checks (scripts/lint.sh: ruff, the
# layer contract, mypy), then the whole test suite. Arguments go to pytest, e.g. -m "not integration and not deploy"
# for the unit tests alone.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
scripts/lint.sh
exec .venv/bin/python -m pytest -q "$@"
