#!/usr/bin/env bash
# Sets up .venv (if needed) with the project, then runs `sgde demo` on the embedded default.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
exec .venv/bin/sgde demo "$@"
