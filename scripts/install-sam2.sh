#!/usr/bin/env bash
# Install SAM2 (sam2 1.1.0) into the repo's .venv for the optional `masks.engine: sam2`. Idempotent.
# sam2 ships as source only, and a plain `pip install sam2` pulls a multi-GB CUDA torch over the venv's CPU torch:
# so no build isolation, no dependencies (torch is already in the venv), and no CUDA extension (SAM2_BUILD_CUDA=0;
# SAM2 then skips its optional hole-filling kernel). No weights are downloaded: the checkpoint is a file you supply
# (masks.sam2_checkpoint / SCRIBBLEBOX_SAM2_CHECKPOINT).
set -euo pipefail
cd "$(dirname "$0")/.."
py=".venv/bin/python"
pip=".venv/bin/pip"
if [[ ! -x "$py" ]]; then
    echo "no .venv in $(pwd): create it first (see README)" >&2
    exit 1
fi
if "$py" -c "import sam2, hydra, iopath" >/dev/null 2>&1 \
        && [[ "$("$py" -c 'from importlib.metadata import version; print(version("sam2"))')" == "1.1.0" ]]; then
    echo "sam2 already installed: $("$py" -c 'from importlib.metadata import version; print(version("sam2"))')"
    exit 0
fi
"$py" -c "import torch" || { echo "torch is missing from .venv: install the CPU build first (torch==2.13.0)" >&2; exit 1; }
"$pip" install -q hydra-core iopath
SAM2_BUILD_CUDA=0 "$pip" install -q --no-build-isolation --no-deps sam2==1.1.0
"$py" -c "from importlib.metadata import version; import sam2; print('sam2', version('sam2'))"
