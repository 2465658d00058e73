"""Loopback stand-ins of Label Studio for the tests: a quiet request handler with one way to answer."""
from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler


class StubHandler(BaseHTTPRequestHandler):
    """Subclasses add do_GET/do_POST; `reply` sends a JSON object (or raw bytes of `kind`)."""

    def log_message(self, *args) -> None:  # keep pytest's output clean
        pass

    def read_json(self) -> dict:
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def reply(self, status: int, body: dict | list | bytes, kind: str = "application/json") -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
