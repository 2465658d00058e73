"""Per-task state in Redis (when REDIS_URL is set): the regions, masks and label configs of `state.TrackStore`, shared
by every gunicorn worker and job worker on every machine that reaches the same Redis.

Same state classes and JSON as the SQLite store. Keys, ids %-quoted so that a ':' in one cannot make two keys collide:
``{prefix}:{project}:{task}:regions`` (hash region id -> RegionState JSON), ``{prefix}:{project}:{task}:masks``
(hash object -> MaskState JSON), ``{prefix}:{project}:label_config`` (string).
"""
from __future__ import annotations

import logging
from urllib.parse import quote, urlsplit, urlunsplit

import redis

from .state import MaskState, RegionState

logger = logging.getLogger(__name__)
DEFAULT_PREFIX = "scribblebox"


def redacted(url: str) -> str:
    """The URL without its password, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def connect(url: str, decode: bool = True) -> redis.Redis:
    """A client for REDIS_URL, checked now so that a wrong URL fails at start-up with a message, not at the first job."""
    try:
        client = redis.Redis.from_url(url, decode_responses=decode, health_check_interval=30)
        client.ping()
    except (redis.exceptions.RedisError, ValueError) as err:
        raise RuntimeError(f"cannot use Redis at REDIS_URL={redacted(url)} ({err}): start redis-server there, fix the URL, "
                           "or unset REDIS_URL for the embedded SQLite mode") from err
    return client


def key_part(value: str) -> str:
    return quote(str(value), safe="")


class RedisTrackStore:
    """Region states keyed by (project, task_id, region_id), object masks, and each project's labeling config."""

    def __init__(self, client: redis.Redis, prefix: str = DEFAULT_PREFIX) -> None:
        if not client.get_connection_kwargs().get("decode_responses"):
            raise ValueError("RedisTrackStore needs a client with decode_responses=True (use RedisTrackStore.from_url)")
        self.r, self.prefix = client, prefix

    @classmethod
    def from_url(cls, url: str, prefix: str = DEFAULT_PREFIX) -> RedisTrackStore:
        return cls(connect(url), prefix)

    def _key(self, project: str, *parts: str) -> str:
        return ":".join([self.prefix, key_part(project), *parts])

    def _regions(self, project: str, task_id: str) -> str:
        return self._key(project, key_part(task_id), "regions")

    def _masks(self, project: str, task_id: str) -> str:
        return self._key(project, key_part(task_id), "masks")

    def get(self, project: str, task_id: str, region_id: str) -> RegionState | None:
        text = self.r.hget(self._regions(project, task_id), str(region_id))
        return RegionState.from_json(text) if text is not None else None

    def put(self, project: str, task_id: str, region_id: str, state: RegionState) -> None:
        self.r.hset(self._regions(project, task_id), str(region_id), state.to_json())

    def delete(self, project: str, task_id: str, region_id: str | None = None) -> int:
        """Delete one region, or every region of the task when region_id is None; returns how many went."""
        key = self._regions(project, task_id)
        if region_id is not None:
            return int(self.r.hdel(key, str(region_id)))
        with self.r.pipeline(transaction=True) as pipe:  # MULTI: the count is of exactly what DEL removed
            count, _ = pipe.hlen(key).delete(key).execute()
        return int(count)

    def list_task(self, project: str, task_id: str) -> dict[str, RegionState]:
        rows = self.r.hgetall(self._regions(project, task_id))
        return {rid: RegionState.from_json(rows[rid]) for rid in sorted(rows)}

    def get_masks(self, project: str, task_id: str, obj: str) -> MaskState | None:
        text = self.r.hget(self._masks(project, task_id), str(obj))
        return MaskState.from_json(text) if text is not None else None

    def put_masks(self, project: str, task_id: str, obj: str, state: MaskState) -> None:
        self.r.hset(self._masks(project, task_id), str(obj), state.to_json())

    def mask_objects(self, project: str, task_id: str) -> list[str]:
        return sorted(self.r.hkeys(self._masks(project, task_id)))

    def put_label_config(self, project: str, xml: str) -> None:
        self.r.set(self._key(project, "label_config"), xml)

    def get_label_config(self, project: str) -> str | None:
        return self.r.get(self._key(project, "label_config"))
