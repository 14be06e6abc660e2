#!/usr/bin/env bash
# Install SAM CLI into .venv-sam, a virtualenv of its own, because SAM CLI pins
# boto3 and botocore to versions the project's .venv need not share.
# Usage: scripts/install-sam.sh   (idempotent: does nothing when SAM is already there)
set -euo pipefail

SAM_CLI_VERSION="${SAM_CLI_VERSION:-1.170.0}"
repo_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
sam_venv="$repo_dir/.venv-sam"

# The project's Python: the one .venv was made with, else python3 on PATH.
if [[ -x "$repo_dir/.venv/bin/python" ]]; then
    python="$repo_dir/.venv/bin/python"
else
    python="$(command -v python3)"
fi

if [[ -x "$sam_venv/bin/sam" ]] && "$sam_venv/bin/sam" --version >/dev/null 2>&1; then
    echo "SAM CLI already installed in $sam_venv"
else
    echo "Installing aws-sam-cli==$SAM_CLI_VERSION into $sam_venv"
    # A venv made from .venv's interpreter imports only from its own site-packages, not .venv's.
    "$python" -m venv --clear "$sam_venv"
    "$sam_venv/bin/python" -m pip install --quiet --upgrade pip
    "$sam_venv/bin/python" -m pip install --quiet "aws-sam-cli==$SAM_CLI_VERSION"
fi

# SAM CLI collects telemetry unless SAM_CLI_TELEMETRY=0, so tests and CI never send it.
SAM_CLI_TELEMETRY=0 "$sam_venv/bin/sam" --version
