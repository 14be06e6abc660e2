#!/usr/bin/env bash
# Create .venv (if missing) and install the project with its pinned
# development dependencies from constraints.txt. Idempotent.
#
# Environment: PYTHON, the interpreter for the virtualenv [python3.11, else python3].
set -euo pipefail

repo_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_dir"

python_bin="${PYTHON:-}"
if [[ -z "$python_bin" ]]; then
    python_bin="$(command -v python3.11 || command -v python3)"
fi

if [[ ! -x .venv/bin/python ]]; then
    echo "bootstrap: creating .venv with $python_bin"
    "$python_bin" -m venv .venv
fi

stamp=".venv/.installed-$(cat constraints.txt pyproject.toml | sha256sum | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
    echo "bootstrap: installing the project and its pinned dependencies"
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
    rm -f .venv/.installed-*
    touch "$stamp"
fi
