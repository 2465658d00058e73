"""Dockerfile and docker-compose.yml checked against the repo, since no Docker engine runs here: paths exist, the
command parses with the real CLI and starts the real server, env names are ones the code reads, /health is a route."""
from __future__ import annotations

import ast
import fnmatch
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from scribblebox.backend.server import create_app
from scribblebox.cli import _parser
from scribblebox.settings import ServerSettings, Settings

ROOT = Path(__file__).resolve().parents[1]
SOURCE_DIRS = ("scribblebox", "models", "backend")


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def instruction(name: str) -> list[str]:
    return [rest for word, rest in dockerfile_instructions() if word == name]


def env_defaults() -> dict[str, str]:
    """ENV key=value pairs of the Dockerfile."""
    pairs: dict[str, str] = {}
    for rest in instruction("ENV"):
        for item in shlex.split(rest):
            key, _, value = item.partition("=")
            pairs[key] = value
    return pairs


def cmd_argv() -> list[str]:
    """The CMD's command line as the container runs it, with ${VAR} from the Dockerfile's ENV defaults."""
    (cmd,) = instruction("CMD")
    argv = json.loads(cmd)
    assert argv[:2] == ["sh", "-c"], "CMD is expected as exec-form sh -c '...' (to expand ${WORKERS})"
    line = re.sub(r"\$\{(\w+)\}", lambda m: env_defaults()[m.group(1)], argv[2])
    words = shlex.split(line)
    return words[1:] if words[0] == "exec" else words


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def read_by_code(name: str) -> bool:
    """Whether some module of the package reads this environment variable (its name appears as a string)."""
    for folder in SOURCE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            if f'"{name}"' in path.read_text() or f"'{name}'" in path.read_text():
                return True
    return False


def test_copy_sources_exist_and_are_not_dockerignored():
    ignored = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
               if p.strip() and not p.startswith("#")]
    copies = [rest for rest in instruction("COPY") if not rest.startswith("--from")]
    assert copies, "the Dockerfile copies nothing"
    for rest in copies:
        *sources, _dest = shlex.split(rest)
        for source in sources:
            assert (ROOT / source).exists(), f"COPY {source}: no such path in the repo"
            hits = [p for p in ignored if fnmatch.fnmatch(source.rstrip("/"), p)]
            assert not hits, f"COPY {source} is excluded by .dockerignore {hits}"
    # setup.py's package_dir must be covered by what is copied, or `pip install .` misses a package
    copied = {shlex.split(rest)[0].rstrip("/") for rest in copies}
    tree = ast.parse((ROOT / "setup.py").read_text())
    packages = next(ast.literal_eval(node.value) for node in ast.walk(tree)
                    if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "PACKAGES")
    for folder in packages.values():
        assert folder.split("/")[0] in copied, f"package folder {folder} is not copied into the image"


def test_install_is_the_package_not_editable_and_cpu_torch_only_without_torch():
    runs = re.sub(r"\s+", " ", " ".join(instruction("RUN")))
    assert 'pip install --no-cache-dir ".[learned,redis]"' in runs
    assert " -e " not in runs and "--editable" not in runs
    assert 'python -c "import torch" 2>/dev/null || python -m pip install' in runs  # the CUDA image's torch is kept
    (arg,) = [a for a in instruction("ARG") if a.startswith("BASE_IMAGE=")]
    assert "cuda" in arg and "pytorch/pytorch" in arg


def test_cmd_parses_with_the_real_cli():
    argv = cmd_argv()
    assert argv[0] == "scribblebox"
    setup_text = (ROOT / "setup.py").read_text()
    assert '"scribblebox=scribblebox.cli:main"' in setup_text, "CMD's program is not the package's console script"
    assert {"--host", "--port", "--workers"} <= set(argv), "spell the options out (argparse accepts prefixes)"
    args = _parser().parse_args(argv[1:])
    assert (args.command, args.host, args.port, args.workers, args.dev) == ("serve", "0.0.0.0", 9090, 2, False)
    assert instruction("EXPOSE") == [str(args.port)]
    assert env_defaults()["SCRIBBLEBOX_DATA_DIR"] == "/data"
    assert instruction("VOLUME") == ['["/data"]']
    assert instruction("USER") and instruction("USER")[0] != "root"


def test_healthcheck_is_a_real_route(tmp_path):
    (health,) = instruction("HEALTHCHECK")
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/\w*)", health)
    assert url, f"no loopback URL in HEALTHCHECK: {health}"
    assert int(url.group(1)) == _parser().parse_args(cmd_argv()[1:]).port
    app = create_app(Settings(server=ServerSettings(data_dir=str(tmp_path))), engine=object(), env={})
    assert url.group(2) in {rule.rule for rule in app.url_map.iter_rules()}
    assert app.test_client().get(url.group(2)).status_code == 200


def test_compose_services_and_env_names():
    services = compose()["services"]
    assert set(services) == {"label-studio", "scribblebox", "worker", "redis"}
    ls_env = services["label-studio"]["environment"]
    assert services["label-studio"]["image"] == "heartexlabs/label-studio:1.23.2"
    assert ls_env["ML_BLOCK_LOCAL_IP"] == "false" and ls_env["SSRF_PROTECTION_ENABLED"] == "false"
    for name in ("LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN"):
        assert ls_env[name].startswith("${" + name), f"{name} must come from .env"

    backend = services["scribblebox"]
    assert backend["build"] == "." and (ROOT / "Dockerfile").is_file()
    env = backend["environment"]
    assert env["LABEL_STUDIO_URL"] == "http://label-studio:8080"
    assert env["LABEL_STUDIO_API_KEY"].startswith("${LABEL_STUDIO_USER_TOKEN")
    dockerfile_vars = set(re.findall(r"\$\{(\w+)\}", instruction("CMD")[0]))
    for name in env:
        assert read_by_code(name) or name in dockerfile_vars, f"compose sets {name}, which nothing reads"
    assert [v.split(":")[1] for v in backend["volumes"]] == ["/data"]
    devices = backend["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert env["REDIS_URL"] == "redis://redis:6379/0" and read_by_code("REDIS_URL")
    worker = services["worker"]
    assert worker["command"] == ["scribblebox", "worker"] and worker["environment"] == env, "the worker shares the settings"
    assert worker["volumes"] == backend["volumes"], "the worker shares /data (checkpoints, media cache)"
    from scribblebox.cli import _parser

    assert _parser().parse_args(worker["command"][1:]).command == "worker"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cmd_starts_the_server_outside_docker(tmp_path):
    """The CMD's own arguments, with host/port/workers swapped for a loopback port and one worker."""
    port = free_port()
    args = cmd_argv()[1:]
    for flag, value in (("--host", "127.0.0.1"), ("--port", str(port)), ("--workers", "1")):
        args[args.index(flag) + 1] = value
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SCRIBBLEBOX_", "BASIC_AUTH_", "LABEL_STUDIO_"))}
    env["SCRIBBLEBOX_DATA_DIR"] = str(tmp_path / "data")
    proc = subprocess.Popen([sys.executable, "-m", "scribblebox.cli", *args], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline, answer = time.monotonic() + 30, None
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.2)
        if answer is None:
            proc.kill()
            pytest.fail(f"no /health answer within 30 s (exit {proc.poll()}): {proc.communicate()[0].decode()[-2000:]}")
        assert answer.status_code == 200 and answer.json()["status"] == "UP"
        assert (tmp_path / "data" / "serve-settings.yaml").is_file()  # SCRIBBLEBOX_DATA_DIR was honoured
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        try:  # gunicorn may outlive the CLI process: make sure nothing of the group is left
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
