"""Per-region track state in SQLite (WAL): what the user anchored, what we answered, the engine's last result.

Several gunicorn workers share one file, so every write is a short ``BEGIN IMMEDIATE`` transaction and
readers wait (busy_timeout) instead of failing. A connection per call keeps it safe across threads and forks.
"""
from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ..models.track import Keyframe

BUSY_TIMEOUT_MS = 30_000
SCHEMA = """
CREATE TABLE IF NOT EXISTS regions (
    project TEXT NOT NULL, task_id TEXT NOT NULL, region_id TEXT NOT NULL,
    state TEXT NOT NULL, updated REAL NOT NULL DEFAULT (julianday('now')),
    PRIMARY KEY (project, task_id, region_id));
CREATE TABLE IF NOT EXISTS label_configs (project TEXT PRIMARY KEY, xml TEXT NOT NULL);
"""


def _kf_out(k: Keyframe) -> list:
    return [k.frame, list(k.box), k.enabled]


def _kf_in(v: list) -> Keyframe:
    return Keyframe.of(v[0], v[1], v[2])


@dataclass
class RegionState:
    """One tracked object of one task. video_key: which video the frames/pixels refer to."""

    video_key: str
    anchors: list[Keyframe] = field(default_factory=list)
    answered: list[Keyframe] = field(default_factory=list)
    result: dict = field(default_factory=dict)  # TrackResult.to_dict(), {} before the first track

    def to_json(self) -> str:
        return json.dumps({"video_key": self.video_key, "anchors": [_kf_out(k) for k in self.anchors],
                           "answered": [_kf_out(k) for k in self.answered], "result": self.result})

    @staticmethod
    def from_json(text: str) -> "RegionState":
        d = json.loads(text)
        return RegionState(d["video_key"], [_kf_in(v) for v in d["anchors"]], [_kf_in(v) for v in d["answered"]], d["result"])


class TrackStore:
    """Region states keyed by (project, task_id, region_id), plus the labeling config each project sent to /setup."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SCHEMA)

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            yield db
        finally:
            db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def get(self, project: str, task_id: str, region_id: str) -> RegionState | None:
        with self._connect() as db:
            row = db.execute("SELECT state FROM regions WHERE project=? AND task_id=? AND region_id=?",
                             (str(project), str(task_id), str(region_id))).fetchone()
        return RegionState.from_json(row[0]) if row else None

    def put(self, project: str, task_id: str, region_id: str, state: RegionState) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO regions (project, task_id, region_id, state, updated) "
                       "VALUES (?, ?, ?, ?, julianday('now'))", (str(project), str(task_id), str(region_id), state.to_json()))

    def delete(self, project: str, task_id: str, region_id: str | None = None) -> int:
        """Delete one region, or every region of the task when region_id is None; returns how many rows went."""
        with self._write() as db:
            if region_id is None:
                cur = db.execute("DELETE FROM regions WHERE project=? AND task_id=?", (str(project), str(task_id)))
            else:
                cur = db.execute("DELETE FROM regions WHERE project=? AND task_id=? AND region_id=?",
                                 (str(project), str(task_id), str(region_id)))
            return cur.rowcount

    def list_task(self, project: str, task_id: str) -> dict[str, RegionState]:
        with self._connect() as db:
            rows = db.execute("SELECT region_id, state FROM regions WHERE project=? AND task_id=? ORDER BY region_id",
                              (str(project), str(task_id))).fetchall()
        return {rid: RegionState.from_json(text) for rid, text in rows}

    def put_label_config(self, project: str, xml: str) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO label_configs (project, xml) VALUES (?, ?)", (str(project), xml))

    def get_label_config(self, project: str) -> str | None:
        with self._connect() as db:
            row = db.execute("SELECT xml FROM label_configs WHERE project=?", (str(project),)).fetchone()
        return row[0] if row else None


def merge_anchors(given: list[Keyframe], state: RegionState | None) -> list[Keyframe]:
    """The user's anchors for this round: keyframes added or moved since our last answer, plus earlier anchors still there.

    Without state (first call, another video) every given keyframe is an anchor. Kept anchors use their stored
    values, so the engine sees them unchanged and reuses its cached segments.
    """
    if state is None:
        return sorted(given, key=lambda k: k.frame)
    changed = [k for k in given if not any(k.same_as(a) for a in state.answered)]
    kept = [a for a in state.anchors if any(a.same_as(k) for k in given)]
    by_frame = {k.frame: k for k in kept}
    by_frame.update({k.frame: k for k in changed})
    anchors = [by_frame[f] for f in sorted(by_frame)]
    return anchors or sorted(given, key=lambda k: k.frame)
