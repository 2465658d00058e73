"""Task video references -> local files: allowed local paths, or downloads from the Label Studio host only.

Label Studio's own URLs (``/data/upload/...``, ``/data/local-files/?d=...``, ``/tasks/1/resolve/?fileuri=...``) are fetched
from LABEL_STUDIO_URL with LABEL_STUDIO_API_KEY; absolute http(s) URLs only when their host is that host (no SSRF).
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from urllib.parse import parse_qs, unquote, urljoin, urlsplit

import requests

from .errors import BadRequest

logger = logging.getLogger(__name__)
LEGACY_TOKEN = re.compile(r"^[0-9a-fA-F]{40}$")
CHUNK = 1 << 20
TIMEOUT_S = (5, 60)


def _port(parts) -> int | None:
    return parts.port or {"http": 80, "https": 443}.get(parts.scheme)


def _suffix(url: str) -> str:
    """File extension of the media (path, or ?d= / ?fileuri= value) so decoders can guess the container."""
    parts = urlsplit(url)
    for name in [v for vs in parse_qs(parts.query).values() for v in vs] + [unquote(parts.path)]:
        suffix = PurePosixPath(name).suffix
        if 1 < len(suffix) <= 8 and suffix[1:].isalnum():
            return suffix.lower()
    return ""


class LabelStudioSession:
    """HTTP calls to Label Studio with either kind of key: a legacy token, or a personal access token (a JWT)
    exchanged at /api/token/refresh/ for short-lived access tokens (cached, renewed on 401)."""

    def __init__(self, url: str, api_key: str, http: requests.Session | None = None) -> None:
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"LABEL_STUDIO_URL must be an http(s) URL, got {url!r}")
        self.url = url.rstrip("/") + "/"
        self.api_key = api_key.strip()
        self.http = http or requests.Session()
        self._access: str | None = None
        self._lock = threading.Lock()

    @property
    def uses_pat(self) -> bool:
        return "." in self.api_key and not LEGACY_TOKEN.match(self.api_key)

    def same_host(self, url: str) -> bool:
        a, b = urlsplit(self.url), urlsplit(url)
        return (a.hostname or "").lower() == (b.hostname or "").lower() and _port(a) == _port(b)

    def _refresh(self) -> str:
        """Exchange the personal access token at /api/token/refresh/ for a short-lived access token."""
        try:
            resp = self.http.post(urljoin(self.url, "api/token/refresh/"), json={"refresh": self.api_key}, timeout=TIMEOUT_S)
            access = resp.json().get("access") if resp.status_code == 200 else None
        except (requests.RequestException, ValueError) as err:
            raise BadRequest("cannot refresh the Label Studio access token", detail={"reason": str(err)}, status=502) from None
        if not access:
            raise BadRequest("Label Studio refused LABEL_STUDIO_API_KEY (personal access token refresh failed)",
                             detail={"status": resp.status_code}, status=502)
        self._access = access
        return access

    def _headers(self, renew: bool = False) -> dict[str, str]:
        if not self.api_key:
            return {}
        if not self.uses_pat:
            return {"Authorization": f"Token {self.api_key}"}
        with self._lock:
            access = self._refresh() if renew or self._access is None else self._access
        return {"Authorization": f"Bearer {access}"}

    def get(self, url: str, stream: bool = False) -> requests.Response:
        """GET a URL on the LS host (absolute, or relative to LABEL_STUDIO_URL); one retry with a fresh access token on 401."""
        full = urljoin(self.url, url.lstrip("/")) if not urlsplit(url).scheme else url
        if not self.same_host(full):
            raise BadRequest("refusing to fetch from a host other than LABEL_STUDIO_URL", detail={"url": url})
        try:
            resp = self.http.get(full, headers=self._headers(), stream=stream, timeout=TIMEOUT_S)
            if resp.status_code == 401 and self.uses_pat:
                resp.close()
                resp = self.http.get(full, headers=self._headers(renew=True), stream=stream, timeout=TIMEOUT_S)
        except requests.RequestException as err:
            raise BadRequest("cannot reach Label Studio", detail={"url": full, "reason": str(err)}, status=502) from None
        return resp

    def get_json(self, path: str) -> dict:
        resp = self.get(path)
        if resp.status_code != 200:
            raise BadRequest(f"Label Studio answered {resp.status_code} for {path}", detail={"url": path}, status=502)
        try:
            return resp.json()
        except ValueError:
            raise BadRequest(f"Label Studio sent no JSON for {path}", detail={"url": path}, status=502) from None


class MediaResolver:
    """Resolve and cache task videos. roots: folders local paths may point into; cache_dir: downloads."""

    def __init__(self, cache_dir: str | Path, max_bytes: int, roots: list[str | Path] = (),
                 session: LabelStudioSession | None = None, local_files_root: str | Path | None = None) -> None:
        self.cache_dir = Path(cache_dir)
        self.max_bytes = int(max_bytes)
        self.roots = [Path(r).resolve() for r in roots]
        self.session = session
        self.local_files_root = Path(local_files_root).resolve() if local_files_root else None

    @staticmethod
    def from_env(data_dir: str | Path, max_download_mb: int, env: Mapping[str, str] | None = None) -> "MediaResolver":
        """LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY, SCRIBBLEBOX_MEDIA_ROOTS (os.pathsep list), LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT."""
        env = os.environ if env is None else env
        url = env.get("LABEL_STUDIO_URL", "").strip()
        session = LabelStudioSession(url, env.get("LABEL_STUDIO_API_KEY", "")) if url else None
        roots = [r for r in env.get("SCRIBBLEBOX_MEDIA_ROOTS", "").split(os.pathsep) if r]
        return MediaResolver(Path(data_dir) / "media", max_download_mb * 1024 * 1024, roots, session,
                             env.get("LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT") or None)

    def resolve(self, ref: str) -> Path:
        """A local file for the reference, or BadRequest saying why it is refused."""
        parts = urlsplit(ref)
        if parts.scheme in ("http", "https"):
            if self.session is None or not self.session.same_host(ref):
                raise BadRequest("video URL is on a host other than LABEL_STUDIO_URL; refusing to fetch it",
                                 detail={"url": ref, "hint": "serve media through Label Studio (/data/upload, local files)"})
            return self._download(ref)
        if parts.scheme:
            raise BadRequest(f"unsupported video URL scheme {parts.scheme!r}", detail={"url": ref})
        if ".." in Path(unquote(parts.path)).parts or any(".." in Path(v).parts for vs in parse_qs(parts.query).values() for v in vs):
            raise BadRequest("video reference contains '..'; refusing path traversal", detail={"url": ref})
        local = self._local(ref)
        if local is not None:
            return local
        if ref.startswith("/") and self.session is not None:
            return self._download(ref)
        raise BadRequest("video reference is neither a file under the allowed media roots nor a Label Studio URL",
                         detail={"url": ref, "hint": "set LABEL_STUDIO_URL/LABEL_STUDIO_API_KEY or SCRIBBLEBOX_MEDIA_ROOTS"})

    def _local(self, ref: str) -> Path | None:
        parts = urlsplit(ref)
        candidates: list[Path] = []
        if parts.path.rstrip("/") == "/data/local-files" and self.local_files_root is not None:
            for d in parse_qs(parts.query).get("d", []):
                candidates.append(self.local_files_root / d)
        elif not parts.query:
            path = Path(unquote(parts.path))
            candidates += [path] if path.is_absolute() else [root / path for root in self.roots]
        allowed = self.roots + ([self.local_files_root] if self.local_files_root else [])
        for candidate in candidates:
            real = candidate.resolve()
            if real.is_file() and any(real.is_relative_to(root) for root in allowed):
                return real
        return None

    def _download(self, url: str) -> Path:
        """Stream into the cache (sha256 of the URL), renamed into place only when complete and within max_bytes."""
        if self.session is None:
            raise BadRequest("set LABEL_STUDIO_URL and LABEL_STUDIO_API_KEY to fetch videos from Label Studio", detail={"url": url})
        target = self.cache_dir / (hashlib.sha256(url.encode()).hexdigest() + _suffix(url))
        if target.is_file():
            return target
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        resp = self.session.get(url, stream=True)
        with resp:
            if resp.status_code != 200:
                status = 502 if resp.status_code >= 500 or resp.status_code in (401, 403) else 400
                raise BadRequest(f"Label Studio answered {resp.status_code} for the video", detail={"url": url}, status=status)
            if int(resp.headers.get("Content-Length") or 0) > self.max_bytes:
                raise self._too_big(url)
            tmp = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.part")
            size = 0
            try:
                with open(tmp, "wb") as out:
                    for chunk in resp.iter_content(CHUNK):
                        size += len(chunk)
                        if size > self.max_bytes:
                            raise self._too_big(url)
                        out.write(chunk)
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)
        logger.info("downloaded %s (%d bytes) to %s", url, size, target)
        return target

    def _too_big(self, url: str) -> BadRequest:
        mb = self.max_bytes / (1024 * 1024)
        return BadRequest(f"video is larger than server.max_download_mb={mb:g}; raise it in the config to accept it",
                          detail={"url": url}, status=413)
