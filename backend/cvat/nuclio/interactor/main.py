"""Nuclio entry point of the ScribbleBox interactor for CVAT: a box and/or clicks -> a mask (GrabCut).

The function image pip-installs the scribblebox package (function.yaml); this file only wires it to nuclio.
The engine is built once per worker in init_context; the handler translates one request and never raises.
"""
from scribblebox.backend.cvat.nuclio_functions import Interactor, respond
from scribblebox.settings import load_settings


def init_context(context):
    context.user_data.function = Interactor.from_settings(load_settings())
    context.logger.info("ScribbleBox interactor ready")


def handler(context, event):
    return respond(context, context.user_data.function, event.body)
