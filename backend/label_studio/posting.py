"""Posting a prediction to Label Studio (POST /api/predictions) from a background job, at most once.

A job is retried when its worker dies, and a worker can die after Label Studio stored its prediction but before the
job was marked done. The retry computes the same prediction (the engines are deterministic), so before posting it
asks Label Studio for the task's predictions and posts only when no identical one (same model version and result)
is there: a retried job never leaves the annotator two copies of the same masks.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping

import requests

from ..errors import BadRequest
from ..media import LabelStudioSession

logger = logging.getLogger(__name__)

POST_TIMEOUT_S = (5, 60)


def already_posted(session: LabelStudioSession, task_id: int, body: Mapping) -> bool:
    """True when the task already holds a prediction equal to `body`; False when not, or when Label Studio cannot
    say (then posting again is the lesser harm: a duplicate, never a lost prediction)."""
    try:
        resp = session.get(f"api/predictions?task={int(task_id)}")
        stored = resp.json() if resp.status_code == 200 else None
    except (BadRequest, ValueError) as err:
        logger.warning("task %s: could not list its predictions before posting (%s); posting anyway", task_id, err)
        return False
    if not isinstance(stored, list):
        return False
    return any(isinstance(p, Mapping) and p.get("task") in (None, task_id) and p.get("model_version") == body["model_version"]
               and p.get("result") == body["result"] for p in stored)


def post_prediction(session: LabelStudioSession | None, task_id: int, item: Mapping) -> bool:
    """POST the item (result, model_version, score) as the task's prediction unless it is already there; True when
    posted. RuntimeError (the job retries) when Label Studio is not configured, unreachable or refuses it."""
    if session is None:
        raise RuntimeError("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY so the backend can post predictions")
    body = {"task": task_id, "result": item["result"], "model_version": item["model_version"], "score": item["score"]}
    if already_posted(session, task_id, body):
        logger.info("task %s: Label Studio already holds this prediction (a retried job); not posted again", task_id)
        return False
    url = session.url + "api/predictions"
    try:
        resp = session.http.post(url, json=body, headers=session._headers(), timeout=POST_TIMEOUT_S)
        if resp.status_code == 401 and session.uses_pat:
            resp = session.http.post(url, json=body, headers=session._headers(renew=True), timeout=POST_TIMEOUT_S)
    except requests.RequestException as err:
        raise RuntimeError(f"cannot reach Label Studio to post the prediction: {err}") from None
    if resp.status_code not in (200, 201):
        raise RuntimeError(f"Label Studio answered {resp.status_code} to the prediction: {resp.text[:500]}")
    logger.info("task %s: posted a prediction with %d results", task_id, len(body["result"]))
    return True
