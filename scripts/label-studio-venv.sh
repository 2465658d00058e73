#!/usr/bin/env bash
# Create the separate Label Studio venv used by the end-to-end tests (tests/e2e).
# Label Studio pins its own Django/SDK stack, so it never shares the project's venv.
# Idempotent: does nothing when bin/label-studio already exists.
#   SCRIBBLEBOX_LS_VENV  venv path (default: <repo>/.cache/label-studio-venv)
#   PYTHON               interpreter that creates it (default: python3)
set -euo pipefail

LS_VERSION="1.23.2"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${SCRIBBLEBOX_LS_VENV:-$repo/.cache/label-studio-venv}"

if [[ -x "$venv/bin/label-studio" ]]; then
    echo "Label Studio venv already present: $venv"
    exit 0
fi

"${PYTHON:-python3}" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet "label-studio==$LS_VERSION"
"$venv/bin/label-studio" --help >/dev/null  # fails loudly if the install is broken (does not start a server)
echo "Label Studio $LS_VERSION installed in $venv"
