"""Session fixtures: a real Label Studio 1.23.2 server and the ScribbleBox backend (gunicorn), both started here.

Label Studio lives in its own venv (scripts/label-studio-venv.sh; path from $SCRIBBLEBOX_LS_VENV). Without it
the tests skip, except under CI=true where a missing server must fail the run rather than turn it green.
"""
from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from .ls_client import LabelStudioClient

REPO = Path(__file__).resolve().parents[2]
DEFAULT_LS_VENV = REPO / ".cache" / "label-studio-venv"
LS_START_TIMEOUT_S = 180.0  # the first start runs all migrations (~30 s on 2 cores)
BACKEND_START_TIMEOUT_S = 60.0
LOG_TAIL_CHARS = 6000


@dataclass(frozen=True)
class LabelStudio:
    url: str
    token: str
    media_root: Path
    log: Path

    def client(self) -> LabelStudioClient:
        return LabelStudioClient(self.url, self.token)


@dataclass(frozen=True)
class Backend:
    url: str
    data_dir: Path
    log: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path: Path) -> str:
    try:
        return path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
    except OSError as err:
        return f"(no log: {err})"


def _wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout_s: float, what: str) -> None:
    """Poll `url` until it answers 200; fail with the log's tail if the process dies or time runs out."""
    deadline = time.monotonic() + timeout_s
    last_error = "no answer yet"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited with code {proc.returncode} before {url} answered; log {log}:\n{_tail(log)}")
        try:
            response = requests.get(url, timeout=2)
            if response.status_code == 200:
                return
            last_error = f"HTTP {response.status_code}: {response.text[:200]}"
        except requests.RequestException as err:
            last_error = repr(err)
        time.sleep(0.5)
    pytest.fail(f"{what} did not answer {url} within {timeout_s:.0f} s ({last_error}); log {log}:\n{_tail(log)}")


def _start(cmd: list[str], env: dict[str, str], log: Path, cwd: Path) -> subprocess.Popen:
    """Start in its own process group so teardown can stop the server and any children it forks."""
    with open(log, "wb") as handle:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def _signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to the group; False when none of it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def _stop(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    """SIGTERM the process group, wait for all of it (gunicorn workers finish their request), then SIGKILL."""
    pgid = proc.pid  # start_new_session: the leader's pid is the group id
    _signal_group(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and (proc.poll() is None or _signal_group(pgid, 0)):
        time.sleep(0.2)
    _signal_group(pgid, signal.SIGKILL)
    proc.wait(timeout=10)


def _ls_executable() -> Path:
    venv = Path(os.environ.get("SCRIBBLEBOX_LS_VENV") or DEFAULT_LS_VENV)
    exe = venv / "bin" / "label-studio"
    if not exe.exists():
        message = (
            f"Label Studio venv not found ({exe} is missing): run scripts/label-studio-venv.sh "
            "or point SCRIBBLEBOX_LS_VENV at a venv with label-studio==1.23.2"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI=true: {message}", pytrace=False)
        pytest.skip(message)
    return exe


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudio]:
    exe = _ls_executable()
    root = tmp_path_factory.mktemp("label-studio")
    media = root / "media"
    media.mkdir()
    port = _free_port()
    token = secrets.token_hex(20)
    env = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(root / "data"),
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(media),
        "LABEL_STUDIO_USERNAME": "e2e@example.com",
        "LABEL_STUDIO_PASSWORD": secrets.token_urlsafe(16),
        "LABEL_STUDIO_USER_TOKEN": token,
        # Both are needed for Label Studio to call a backend on 127.0.0.1 and to create its webhook.
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        "SENTRY_DSN": "",  # no error reports to the internet from a test server
        "FRONTEND_SENTRY_DSN": "",
    }
    env.pop("VIRTUAL_ENV", None)
    log = root / "label-studio.log"
    cmd = [str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(port), "--enable-legacy-api-token"]
    proc = _start(cmd, env, log, cwd=root)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/health", proc, log, LS_START_TIMEOUT_S, "Label Studio")
        yield LabelStudio(f"http://127.0.0.1:{port}", token, media, log)
    finally:
        _stop(proc)


@contextmanager
def running_backend(label_studio: LabelStudio, root: Path, config: Path | None = None,
                    env: Mapping[str, str] | None = None) -> Iterator[Backend]:
    """`scribblebox [--config FILE] serve` under `root`, connected to `label_studio`; stopped when the block ends.
    `env` adds variables (e.g. SCRIBBLEBOX_PREDICT_DEADLINE_S) for modules that need a differently set-up backend."""
    port = _free_port()
    full_env = {
        **os.environ,
        "LABEL_STUDIO_URL": label_studio.url,
        "LABEL_STUDIO_API_KEY": label_studio.token,
        "SCRIBBLEBOX_DATA_DIR": str(root / "data"),
        **(env or {}),
    }
    log = root / "backend.log"
    # The command users run (`scribblebox serve`: gunicorn, 2 workers), so its launch path is tested too.
    options = ["--config", str(config)] if config is not None else []
    cmd = [sys.executable, "-m", "scribblebox.cli", *options, "serve", "--host", "127.0.0.1", "--port", str(port),
           "--workers", "2"]
    proc = _start(cmd, full_env, log, cwd=root)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}/health", proc, log, BACKEND_START_TIMEOUT_S, "ScribbleBox backend")
        yield Backend(f"http://127.0.0.1:{port}", root / "data", log)
    finally:
        _stop(proc)


@pytest.fixture(scope="session")
def backend(label_studio: LabelStudio, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    with running_backend(label_studio, tmp_path_factory.mktemp("backend")) as server:
        yield server


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """On a failure, attach the tails of the server logs: the cause is usually there, not in the HTTP answer."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    funcargs = getattr(item, "funcargs", {})
    for name in ("backend", "label_studio"):
        server = funcargs.get(name)
        if server is not None:
            report.sections.append((f"{name} log ({server.log})", _tail(server.log)))
