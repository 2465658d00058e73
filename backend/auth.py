"""Optional HTTP basic auth (BASIC_AUTH_USER / BASIC_AUTH_PASS) on every route but /health, which LS polls without it."""
from __future__ import annotations

import hmac
import logging
import os
from collections.abc import Mapping

from flask import Flask, jsonify, request

logger = logging.getLogger(__name__)
OPEN_PATHS = frozenset({"/health"})


def register_basic_auth(app: Flask, env: Mapping[str, str] | None = None) -> bool:
    """Guard the app when both variables are set; returns whether auth is on."""
    env = os.environ if env is None else env
    user, password = env.get("BASIC_AUTH_USER", ""), env.get("BASIC_AUTH_PASS", "")
    if not (user and password):
        return False

    @app.before_request
    def _check():
        if request.path in OPEN_PATHS:
            return None
        given = request.authorization
        ok = (
            given is not None
            and given.type == "basic"
            and hmac.compare_digest((given.username or "").encode(), user.encode())
            and hmac.compare_digest((given.password or "").encode(), password.encode())
        )
        if ok:
            return None
        logger.warning("refused %s %s: missing or wrong basic auth", request.method, request.path)
        response = jsonify({"error": "unauthorized", "detail": "send HTTP basic auth (BASIC_AUTH_USER/BASIC_AUTH_PASS)"})
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Basic realm="scribblebox"'
        return response

    return True
