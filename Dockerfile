# ScribbleBox ML backend for Label Studio. Steps, env and what was not tested: docs/deploy.md.
#   GPU (default): docker build -t scribblebox .
#   CPU:           docker build -t scribblebox:cpu --build-arg BASE_IMAGE=python:3.11-slim .
# Both variants end with the same package and a torch for the learned networks:
# - the CUDA base image brings its CUDA torch; pip keeps it, since the `learned` extra only asks for torch>=2.1;
# - a base image without torch first gets the CPU wheel of TORCH_VERSION from TORCH_INDEX_URL (a bare
#   `pip install torch` from PyPI would pull the multi-GB CUDA build onto a CPU image).
# TORCH_VERSION matches the CUDA image's torch, so both variants run the same torch. Python is 3.11 in both.
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.5.1
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# No apt packages: opencv-contrib-python-headless and av (PyAV) are manylinux wheels that bundle their libraries
# (FFmpeg included); outside them they link only glibc, libstdc++, libgcc_s and zlib (checked with ldd), which both
# base images have. Headless OpenCV needs no libGL. The import check below fails the build if that ever changes.
RUN python -c "import torch" 2>/dev/null \
 || python -m pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX_URL}"

# Only what setup.py packages (it maps models/, backend/, config/ into `scribblebox`); installed as a wheel, not editable.
WORKDIR /tmp/scribblebox-src
COPY setup.py ./
COPY scribblebox ./scribblebox
COPY models ./models
COPY backend ./backend
COPY config ./config
RUN python -m pip install --no-cache-dir ".[learned,redis]" \
 && cd / && rm -rf /tmp/scribblebox-src \
 && python -c "import cv2, av, torch, scribblebox.backend.server; from importlib import resources; \
assert resources.files('scribblebox.config').joinpath('defaults.yaml').is_file(), 'config YAML missing'; \
print('torch', torch.__version__, 'CUDA build', torch.version.cuda, '| opencv', cv2.__version__, '| av', av.__version__)"

# Optional SAM2 engine (masks.engine sam2): a source-only package, installed without deps so the image's torch
# stays; no weights (mount your checkpoint, docs/deploy.md).
ARG WITH_SAM2=0
RUN if [ "$WITH_SAM2" = 1 ]; then python -m pip install --no-cache-dir hydra-core iopath \
 && SAM2_BUILD_CUDA=0 python -m pip install --no-cache-dir --no-build-isolation --no-deps sam2==1.1.0 \
 && python -c "import sam2; print('sam2 ok')"; fi

# State (SQLite WAL) and the media cache live in /data; the server runs as an unprivileged user.
RUN useradd --create-home --uid 10001 --user-group scribblebox \
 && mkdir -p /data && chown scribblebox:scribblebox /data
ENV SCRIBBLEBOX_DATA_DIR=/data \
    WORKERS=2
VOLUME ["/data"]
USER scribblebox
WORKDIR /home/scribblebox

EXPOSE 9090
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9090/health', timeout=4)"]
# `exec` so that the shell does not stay in between; WORKERS = gunicorn workers (each loads its own engine).
CMD ["sh", "-c", "exec scribblebox serve --host 0.0.0.0 --port 9090 --workers \"${WORKERS}\""]
