"""`scribblebox import-video`: one video -> one Label Studio task with the video and its frames, ready for masks.

The task is what config/label_studio/video_masks.xml expects: ``{"video": url, "frames": [urls], "fps": fps,
"frame_step": N}``; page k of ``frames`` shows video frame k * N. Files go through Label Studio's own upload
(``POST /api/projects/{id}/import?commit_to_project=false``: stored under /data/upload/, no task per file), so the
backend fetches them back with the same API key and nothing has to share a disk.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import requests

from .backend.errors import BadRequest
from .backend.label_studio.config import parse_label_config
from .backend.media import LabelStudioSession
from .models.video import open_video

log = logging.getLogger(__name__)
VIDEO_SUFFIXES = {".mp4", ".webm"}  # what Label Studio 1.23 accepts as an upload and browsers play
UPLOAD_BATCH = 50  # files per request: Django refuses more than 100 (DATA_UPLOAD_MAX_NUMBER_FILES)
JPEG_QUALITY = 92
TIMEOUT_S = (10, 300)


class LabelStudioUploader:
    """The few Label Studio calls the import needs, with either kind of API key."""

    def __init__(self, url: str, api_key: str, project: int, http: requests.Session | None = None) -> None:
        if not api_key.strip():
            raise ValueError("no API key: give --api-key (or set LABEL_STUDIO_API_KEY) with the token from Label Studio's "
                         "Account & Settings")
        self.session = LabelStudioSession(url, api_key, http)
        self.project = int(project)

    def call(self, method: str, path: str, **kwargs) -> requests.Response:
        url = self.session.url + path.lstrip("/")
        try:
            resp = self.session.http.request(method, url, headers=self.session._headers(), timeout=TIMEOUT_S, **kwargs)
            if resp.status_code == 401 and self.session.uses_pat:
                resp = self.session.http.request(method, url, headers=self.session._headers(renew=True), timeout=TIMEOUT_S, **kwargs)
        except requests.RequestException as err:
            raise RuntimeError(f"cannot reach Label Studio at {self.session.url}: {err}") from None
        except BadRequest as err:  # the personal-access-token exchange failed
            raise RuntimeError(f"{err.message}: check --api-key") from None
        if resp.status_code in (401, 403):
            raise RuntimeError(f"Label Studio refused the API key ({resp.status_code}) for {path}: check --api-key")
        if resp.status_code == 404:
            raise RuntimeError(f"Label Studio has no {path} (404): check --project {self.project} and --label-studio URL")
        if resp.status_code >= 400:
            raise RuntimeError(f"Label Studio answered {resp.status_code} for {path}: {resp.text[:500]}")
        return resp

    def check_project(self) -> dict:
        """The project, refused unless its labeling config reads the task data this import writes."""
        project = self.call("GET", f"/api/projects/{self.project}").json()
        try:
            config = parse_label_config(project.get("label_config") or "")
        except ValueError as err:
            raise ValueError(f"project {self.project}: {err}") from None
        if "video" not in {v.value_key for v in config.videos.values()} or "frames" not in config.image_lists.values():
            raise ValueError(f"project {self.project}'s labeling config does not read $video and an image list "
                             "valueList=\"$frames\": use config/label_studio/video_masks.xml")
        return project

    def upload(self, paths: list[Path]) -> list[str]:
        """Upload files without creating tasks; returns their /data/upload/... URLs in the order given."""
        urls: list[str] = []
        for start in range(0, len(paths), UPLOAD_BATCH):
            batch = paths[start:start + UPLOAD_BATCH]
            handles = [open(p, "rb") for p in batch]
            try:
                files = {p.name: (p.name, h) for p, h in zip(batch, handles)}
                answer = self.call("POST", f"/api/projects/{self.project}/import", params={"commit_to_project": "false"},
                                   files=files).json()
            finally:
                for h in handles:
                    h.close()
            ids = answer.get("file_upload_ids") or []
            if len(ids) != len(batch):
                raise RuntimeError(f"Label Studio stored {len(ids)} of {len(batch)} uploaded files: {answer}")
            listed = self.call("GET", f"/api/projects/{self.project}/file-uploads", params={"ids": json.dumps(ids)}).json()
            stored = {item.get("id"): str(item.get("file") or "") for item in listed if isinstance(item, dict)}
            missing = [i for i in ids if not stored.get(i)]
            if missing:
                raise RuntimeError(f"Label Studio does not list the uploaded files {missing[:5]}: {listed[:3]}")
            urls += ["/data/" + stored[i].lstrip("/") for i in ids]  # ids come back in the order the files were sent
            log.info("uploaded %d/%d files", start + len(batch), len(paths))
        return urls

    def create_task(self, data: dict) -> int:
        answer = self.call("POST", f"/api/projects/{self.project}/import", params={"return_task_ids": "true"},
                           json=[{"data": data}]).json()
        ids = answer.get("task_ids") or []
        if len(ids) != 1:
            raise RuntimeError(f"Label Studio created {len(ids)} tasks instead of 1: {answer}")
        return int(ids[0])


def extract_frames(video_path: Path, folder: Path, every: int = 1) -> Iterator[Path]:
    """Frames 0, every, 2*every, ... as JPEGs named <video stem>-<frame>.jpg (the decoded, display-rotated frames)."""
    with open_video(video_path) as video:
        for index in range(0, video.num_frames, every):
            path = folder / f"{re.sub(r'[^A-Za-z0-9_-]+', '_', video_path.stem)}-{index:06d}.jpg"
            if not cv2.imwrite(str(path), video.frame(index), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]):
                raise RuntimeError(f"cannot write {path}")
            yield path


def import_video(video: str | Path, url: str, api_key: str, project: int, every: int = 1,
                 http: requests.Session | None = None) -> int:
    """Upload the video and its frames, create the task; returns its id. ValueError/RuntimeError say what to fix."""
    video = Path(video)
    if not video.is_file():
        raise FileNotFoundError(f"no video file at {video}")
    if video.suffix.lower() not in VIDEO_SUFFIXES:
        raise ValueError(f"{video.name}: Label Studio plays and accepts {sorted(VIDEO_SUFFIXES)} uploads; "
                         "convert it first, e.g. ffmpeg -i in.mov -c:v libx264 -pix_fmt yuv420p out.mp4")
    if every < 1:
        raise ValueError(f"--every must be a positive number of frames, got {every}")
    uploader = LabelStudioUploader(url, api_key, project, http)
    uploader.check_project()
    with open_video(video) as opened:
        fps, frames_total, vfr = float(opened.fps), opened.num_frames, opened.variable_frame_rate
    if vfr:
        log.warning("%s has a variable frame rate: Label Studio's video frames may not match the frame images; "
                    "re-encode it at a constant rate", video)
    with tempfile.TemporaryDirectory(prefix="scribblebox-import-") as tmp:
        frame_paths = list(extract_frames(video, Path(tmp), every))
        log.info("%s: %d frames, %d frame images (every %d)", video.name, frames_total, len(frame_paths), every)
        (video_url,) = uploader.upload([video])
        frame_urls = uploader.upload(frame_paths)
    task_id = uploader.create_task({"video": video_url, "frames": frame_urls, "fps": fps, "frame_step": every})
    log.info("created task %d in project %d", task_id, uploader.project)
    return task_id


def import_video_command(args: argparse.Namespace) -> int:
    """`scribblebox import-video VIDEO --label-studio URL --api-key KEY --project ID [--every N]`: prints the task id.
    URL and key default to LABEL_STUDIO_URL / LABEL_STUDIO_API_KEY, as for the backend."""
    url = args.label_studio or os.environ.get("LABEL_STUDIO_URL", "")
    key = args.api_key or os.environ.get("LABEL_STUDIO_API_KEY", "")
    if not url:
        raise ValueError("give --label-studio URL (or set LABEL_STUDIO_URL)")
    task_id = import_video(args.video, url, key, args.project, args.every)
    sys.stdout.write(f"{task_id}\n")
    return 0
