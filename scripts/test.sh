#!/usr/bin/env bash
# Installs PostgreSQL's server (Debian's `postgresql`, for the registry's tests) if it is missing, sets up .venv (if
# needed) with the project and its test extras, runs the static checks (scripts/lint.sh: ruff, the layer contract,
# mypy), then the whole test suite. Arguments go to pytest, e.g. -m "not integration and not deploy" for the unit tests
# alone.
set -euo pipefail
cd "$(dirname "$0")/.."
# tests/support/postgres.py looks for initdb on PATH and in /usr/lib/postgresql/<version>/bin.
if ! command -v initdb >/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -q
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
scripts/lint.sh
exec .venv/bin/python -m pytest -q "$@"
