"""A small client for the Label Studio 1.23.2 REST calls the end-to-end tests make.

Kept apart from the package on purpose: the tests must check the backend against what Label Studio
itself sends and stores, not against the package's own idea of the protocol.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import requests

TIMEOUT_S = 30.0
PREDICT_TIMEOUT_S = 150.0  # Label Studio waits up to 100 s for the backend's /predict


class LabelStudioError(AssertionError):
    """A Label Studio call failed; the message carries the method, URL, status and body."""


class LabelStudioClient:
    """Authenticated calls with the legacy token (`Authorization: Token ...`)."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {token}"

    def request(self, method: str, path: str, *, timeout: float = TIMEOUT_S, expect: tuple[int, ...] = (200, 201),
                **kwargs: Any) -> Any:
        """One call; raises with the response body when the status is not expected, returns the decoded JSON (or None)."""
        response = self.session.request(method, f"{self.url}{path}", timeout=timeout, **kwargs)
        if response.status_code not in expect:
            raise LabelStudioError(f"{method} {path} -> {response.status_code}: {response.text[:2000]}")
        return response.json() if response.content else None

    # -- projects and tasks -------------------------------------------------------------------------
    def create_project(self, title: str, label_config: str) -> dict:
        return self.request("POST", "/api/projects", json={"title": title, "label_config": label_config})

    def import_file(self, project_id: int, path: Path) -> list[int]:
        """Upload one media file as a new task (multipart import); returns the ids of the created tasks."""
        with open(path, "rb") as handle:
            answer = self.request(
                "POST",
                f"/api/projects/{project_id}/import",
                params={"return_task_ids": "true"},
                files={path.name: (path.name, handle, "video/mp4")},
                timeout=120.0,
            )
        task_ids = answer.get("task_ids") or []
        if not task_ids:
            raise LabelStudioError(f"import of {path} created no task: {answer}")
        return list(task_ids)

    def tasks(self, project_id: int) -> list[dict]:
        """The project's tasks from the list endpoint.

        Not `GET /api/tasks/{id}`: that is "opening" the task, and with a backend connected Label Studio then asks it
        for a prediction and stores it, after which "Retrieve predictions" skips the task (same model version).
        """
        answer = self.request("GET", "/api/tasks/", params={"project": project_id, "page_size": 1000})
        return answer["tasks"] if isinstance(answer, dict) else answer

    def set_task_data(self, project_id: int, task_id: int, **values: Any) -> dict:
        """Add/replace keys of a task's data (e.g. the frame rate for `frameRate="$fps"`), keeping the others."""
        (task,) = [t for t in self.tasks(project_id) if t["id"] == task_id]
        return self.request("PATCH", f"/api/tasks/{task_id}", json={"data": {**task["data"], **values}})

    def create_annotation(self, task_id: int, result: list[dict]) -> dict:
        return self.request("POST", f"/api/tasks/{task_id}/annotations", json={"result": result}, timeout=60.0)

    def predictions(self, task_id: int) -> list[dict]:
        return self.request("GET", "/api/predictions", params={"task": task_id})

    # -- ML backend ---------------------------------------------------------------------------------
    def register_ml_backend(self, project_id: int, url: str, title: str = "ScribbleBox") -> dict:
        """Connect the backend (Label Studio calls its /health and /setup now) with interactive pre-annotation on."""
        return self.request(
            "POST", "/api/ml", json={"url": url, "project": project_id, "title": title, "is_interactive": True}, timeout=60.0
        )

    def interactive(self, ml_id: int, task_id: int, regions: list[dict]) -> dict:
        """What the UI sends when a label is applied to a region; returns the backend's one result item.

        Label Studio answers 200 even on failure, with `{"errors": [...]}` instead of `{"data": {...}}`.
        """
        answer = self.request(
            "POST",
            f"/api/ml/{ml_id}/interactive-annotating",
            json={"task": task_id, "context": {"result": regions}},
            timeout=PREDICT_TIMEOUT_S,
        )
        if not isinstance(answer, dict) or answer.get("errors") or "data" not in answer:
            raise LabelStudioError(f"interactive-annotating failed: {answer}")
        return answer["data"]

    def retrieve_predictions(self, project_id: int) -> dict:
        """The Data Manager's "Retrieve Predictions" action on all tasks (runs synchronously without Redis)."""
        return self.request(
            "POST",
            "/api/dm/actions",
            params={"id": "retrieve_tasks_predictions", "project": project_id},
            json={"selectedItems": {"all": True, "excluded": []}},
            timeout=PREDICT_TIMEOUT_S,
        )

    def ml_backend(self, ml_id: int) -> dict:
        """The backend's row; reading it makes Label Studio call /health and /setup, refreshing `model_version`."""
        return self.request("GET", f"/api/ml/{ml_id}", timeout=60.0)

    def train(self, ml_id: int) -> None:
        """The Train button: Label Studio posts START_TRAINING to the backend's /webhook and waits for its answer."""
        self.request("POST", f"/api/ml/{ml_id}/train", json={}, timeout=PREDICT_TIMEOUT_S)

    def webhooks(self, project_id: int) -> list[dict]:
        return self.request("GET", "/api/webhooks", params={"project": project_id})
