"""Which fine-tuned mask checkpoint each project serves: ``<data_dir>/models/<project>/current.json``, a small pointer
(current version, file, metrics, the last attempts) rewritten atomically next to the ``scribblebox-ft-vNNN.pt`` files.

Predictors ask it on every request (`mask_settings`, `model_version`): the pointer is re-read only when its file
changed (mtime, size, inode), so a checkpoint accepted by a training job in another process is picked up at the next request.
No torch here: the registry is read by processes that never train.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

from ...settings import MaskSettings

logger = logging.getLogger(__name__)
POINTER = "current.json"
CHECKPOINT_NAME = "scribblebox-ft"
HISTORY = 20  # attempts kept in the pointer


def project_folder_name(project: str) -> str:
    """A project key as a folder name (LS project ids are numbers; anything else is made path-safe)."""
    name = re.sub(r"[^A-Za-z0-9_-]+", "_", str(project)).strip("_")
    if not name:
        raise ValueError(f"project key {project!r} has no usable characters")
    return name


class ModelRegistry:
    def __init__(self, data_dir: str | os.PathLike) -> None:
        self.root = Path(data_dir) / "models"
        self._cache: dict[str, tuple[tuple[int, int, int], dict]] = {}
        self._lock = threading.Lock()

    def folder(self, project: str) -> Path:
        return self.root / project_folder_name(project)

    def read(self, project: str) -> dict:
        """The project's pointer ({} when it never trained), cached until the file changes."""
        path = self.folder(project) / POINTER
        try:
            stat = path.stat()
        except FileNotFoundError:
            return {}
        stamp = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        with self._lock:
            cached = self._cache.get(str(path))
            if cached is not None and cached[0] == stamp:
                return cached[1]
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            logger.warning("%s: unreadable model pointer (%s); serving the base model", path, err)
            return {}
        data = data if isinstance(data, dict) else {}
        with self._lock:
            self._cache[str(path)] = (stamp, data)
        return data

    def current(self, project: str) -> Path | None:
        """The project's accepted checkpoint, or None (never fine-tuned, or its file is gone)."""
        entry = self.read(project).get("current")
        if not isinstance(entry, dict) or not isinstance(entry.get("file"), str):
            return None
        path = self.folder(project) / Path(entry["file"]).name
        return path if path.is_file() else None

    def version(self, project: str) -> int | None:
        entry = self.read(project).get("current")
        number = entry.get("version") if isinstance(entry, dict) else None
        return number if isinstance(number, int) and self.current(project) is not None else None

    def mask_settings(self, project: str, base: MaskSettings) -> MaskSettings:
        """The learned engine on the project's checkpoint when it has one, else `base` unchanged."""
        path = self.current(project)
        if path is None:
            return base
        return dataclasses.replace(base, engine="learned", checkpoint=str(path))

    def model_version(self, project: str, base_version: str) -> str:
        """e.g. "scribblebox-0.1.0-csrt-ft-v003" once the project has a fine-tuned model, else base_version."""
        number = self.version(project)
        return base_version if number is None else f"{base_version}-ft-v{number:03d}"

    def accept(self, project: str, checkpoint: Path, report: dict[str, Any], base: str) -> dict:
        """Make `checkpoint` (a scribblebox-ft-vNNN.pt in the project's folder) the one served; returns the pointer."""
        match = re.search(r"-v(\d+)\.pt$", checkpoint.name)
        if checkpoint.parent.resolve() != self.folder(project).resolve() or match is None:
            raise ValueError(f"{checkpoint}: not a versioned checkpoint in {self.folder(project)}")
        entry = {"version": int(match.group(1)), "file": checkpoint.name, "base": str(base),
                 "metrics": report, "created": round(time.time(), 3)}
        return self._write(project, entry, {**entry, "accepted": True})

    def reject(self, project: str, report: dict[str, Any], base: str) -> dict:
        """Record an attempt that measured worse: the served checkpoint stays as it is."""
        return self._write(project, None, {"accepted": False, "base": str(base), "metrics": report,
                                            "created": round(time.time(), 3)})

    def _write(self, project: str, current: dict | None, attempt: dict) -> dict:
        data = dict(self.read(project))
        if current is not None:
            data["current"] = current
        data["project"] = str(project)
        data["history"] = ([attempt] + list(data.get("history") or []))[:HISTORY]
        folder = self.folder(project)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / POINTER
        tmp = path.with_name(f".{POINTER}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return data
