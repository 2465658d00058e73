"""Nuclio entry point of the ScribbleBox tracker for CVAT: rectangles, one frame per call, small JSON states.

The function image pip-installs the scribblebox package (function.yaml); this file only wires it to nuclio.
The engine's tracker factory is built once per worker in init_context (SCRIBBLEBOX_TRACKER picks csrt/kcf/nano);
the handler translates one request and never raises.
"""
from scribblebox.backend.cvat.nuclio_functions import FrameTracker, respond
from scribblebox.settings import load_settings


def init_context(context):
    context.user_data.function = FrameTracker.from_settings(load_settings())
    context.logger.info("ScribbleBox tracker ready")


def handler(context, event):
    return respond(context, context.user_data.function, event.body)
