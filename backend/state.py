"""Per-task state in SQLite (WAL): per box region what the user anchored, what we answered, the engine's last result;
per object (its label) the masks we answered and the frames the user corrected.

Several gunicorn workers share one file, so every write is a short ``BEGIN IMMEDIATE`` transaction and
readers wait (busy_timeout) instead of failing. A connection per call keeps it safe across threads and forks.
"""
from __future__ import annotations

import base64
import hashlib
import json
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..models.track import Keyframe
from .sqlite import SQLiteFile

SCHEMA = """
CREATE TABLE IF NOT EXISTS regions (
    project TEXT NOT NULL, task_id TEXT NOT NULL, region_id TEXT NOT NULL,
    state TEXT NOT NULL, updated REAL NOT NULL DEFAULT (julianday('now')),
    PRIMARY KEY (project, task_id, region_id));
CREATE TABLE IF NOT EXISTS label_configs (project TEXT PRIMARY KEY, xml TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS mask_objects (
    project TEXT NOT NULL, task_id TEXT NOT NULL, object TEXT NOT NULL,
    state TEXT NOT NULL, updated REAL NOT NULL DEFAULT (julianday('now')),
    PRIMARY KEY (project, task_id, object));
"""
DIGESTS_KEPT = 8  # per frame: enough of our past answers to recognise one the user saved without touching it


def keyframes_out(keyframes: Sequence[Keyframe]) -> list[list]:
    """Keyframes as JSON-ready [frame, box, enabled] lists (region state, job payloads)."""
    return [[k.frame, list(k.box), k.enabled] for k in keyframes]


def keyframes_in(items: Sequence) -> list[Keyframe]:
    return [Keyframe.of(frame, box, enabled) for frame, box, enabled in items]


@dataclass
class RegionState:
    """One tracked object of one task. video_key: which video the frames/pixels refer to."""

    video_key: str
    anchors: list[Keyframe] = field(default_factory=list)
    answered: list[Keyframe] = field(default_factory=list)
    result: dict = field(default_factory=dict)  # TrackResult.to_dict(), {} before the first track
    label: str | None = None  # the region's label: masks find their object's box track by it

    def to_json(self) -> str:
        return json.dumps({"video_key": self.video_key, "anchors": keyframes_out(self.anchors),
                           "answered": keyframes_out(self.answered), "result": self.result, "label": self.label})

    @staticmethod
    def from_json(text: str) -> "RegionState":
        d = json.loads(text)
        return RegionState(d["video_key"], keyframes_in(d["anchors"]), keyframes_in(d["answered"]), d["result"],
                           d.get("label"))


def mask_digest(mask: np.ndarray) -> str:
    """A short fingerprint of a bool mask (shape included): tells "our answer, saved unchanged" apart from an edit."""
    mask = np.asarray(mask, dtype=bool)
    return hashlib.sha1(np.asarray(mask.shape, dtype=np.int64).tobytes() + np.packbits(mask).tobytes()).hexdigest()[:20]


def _mask_out(mask: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(np.packbits(np.asarray(mask, dtype=bool)).tobytes(), 6)).decode()


def _mask_in(text: str, shape: tuple[int, int]) -> np.ndarray:
    bits = np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype=np.uint8)
    return np.unpackbits(bits, count=shape[0] * shape[1]).reshape(shape).astype(bool)


@dataclass
class MaskState:
    """One object's masks in one task (0-based video frames, bool masks of `shape` = (height, width)).

    predicted: our last answer per frame (the engine's `previous`); approved: the user's corrections, kept while they
    stay in the saved annotation; seen: digests of every recent answer per frame, so a saved copy of an older answer
    is not mistaken for a correction; clicks: the object's clicks so far as [id, page, x %, y %, positive] (Label
    Studio deletes smart keypoints when the user accepts the suggested masks, so later calls would not send them).
    """

    video_key: str
    shape: tuple[int, int]
    predicted: dict[int, np.ndarray] = field(default_factory=dict)
    approved: dict[int, np.ndarray] = field(default_factory=dict)
    seen: dict[int, list[str]] = field(default_factory=dict)
    clicks: list[list] = field(default_factory=list)

    def remember(self, masks: dict[int, np.ndarray]) -> None:
        """Record a new answer: it becomes `predicted`, and its digests join `seen` (newest first, bounded)."""
        self.predicted = dict(masks)
        for frame, mask in masks.items():
            digest = mask_digest(mask)
            kept = [d for d in self.seen.get(frame, []) if d != digest]
            self.seen[frame] = [digest, *kept][:DIGESTS_KEPT]

    def to_json(self) -> str:
        return json.dumps({"video_key": self.video_key, "shape": list(self.shape),
                           "predicted": {str(f): _mask_out(m) for f, m in self.predicted.items()},
                           "approved": {str(f): _mask_out(m) for f, m in self.approved.items()},
                           "seen": {str(f): d for f, d in self.seen.items()}, "clicks": self.clicks})

    @staticmethod
    def from_json(text: str) -> "MaskState":
        d = json.loads(text)
        shape = (int(d["shape"][0]), int(d["shape"][1]))
        return MaskState(d["video_key"], shape, {int(f): _mask_in(m, shape) for f, m in d["predicted"].items()},
                         {int(f): _mask_in(m, shape) for f, m in d["approved"].items()},
                         {int(f): list(v) for f, v in d["seen"].items()}, [list(c) for c in d.get("clicks", [])])


class TrackStore(SQLiteFile):
    """Region states keyed by (project, task_id, region_id), plus the labeling config each project sent to /setup."""

    SCHEMA = SCHEMA

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

    def get_masks(self, project: str, task_id: str, obj: str) -> MaskState | None:
        with self._connect() as db:
            row = db.execute("SELECT state FROM mask_objects WHERE project=? AND task_id=? AND object=?",
                             (str(project), str(task_id), str(obj))).fetchone()
        return MaskState.from_json(row[0]) if row else None

    def put_masks(self, project: str, task_id: str, obj: str, state: MaskState) -> None:
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO mask_objects (project, task_id, object, state, updated) "
                       "VALUES (?, ?, ?, ?, julianday('now'))", (str(project), str(task_id), str(obj), state.to_json()))

    def mask_objects(self, project: str, task_id: str) -> list[str]:
        with self._connect() as db:
            rows = db.execute("SELECT object FROM mask_objects WHERE project=? AND task_id=? ORDER BY object",
                              (str(project), str(task_id))).fetchall()
        return [r[0] for r in rows]

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
