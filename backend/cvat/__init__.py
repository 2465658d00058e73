"""CVAT adapters: nuclio functions (interactor, one-frame tracker), native agent functions, and whole-video SDK
commands. They translate CVAT's payloads (base64 frames, mask RLE, signed tracker states, annotation models) to and
from the engines in `scribblebox.models`; no tracking or segmentation logic lives here.

`native` and `sdk_commands` need the `cvat` extra (cvat-sdk, cvat-cli); the nuclio side needs only the package.
"""
