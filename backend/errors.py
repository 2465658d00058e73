"""Client errors as one exception type, turned into JSON by the app; nothing else ever reaches a client as a traceback."""
from __future__ import annotations

import logging
from typing import Any

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

logger = logging.getLogger(__name__)


class BadRequest(ValueError):
    """A request we refuse: answered as ``{"error": message, "detail": detail}`` with a 4xx status (or 502 upstream)."""

    def __init__(self, message: str, detail: Any = None, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail
        self.status = status

    def to_dict(self) -> dict:
        return {"error": self.message, "detail": self.detail}


def register_error_handlers(app: Flask) -> None:
    """JSON for refusals, HTTP errors and crashes, so a worker never dies on a request and LS shows a readable error."""

    @app.errorhandler(BadRequest)
    def _refused(err: BadRequest):
        logger.warning("refused %s %s (%d): %s; detail=%r", request.method, request.path, err.status, err.message, err.detail)
        return jsonify(err.to_dict()), err.status

    @app.errorhandler(HTTPException)
    def _http(err: HTTPException):
        logger.warning("refused %s %s (%s): %s", request.method, request.path, err.code, err.description)
        return jsonify({"error": err.name, "detail": err.description}), err.code or 500

    @app.errorhandler(Exception)
    def _crash(err: Exception):
        logger.exception("unexpected error on %s %s", request.method, request.path)
        return jsonify({"error": "internal error", "detail": type(err).__name__}), 500
