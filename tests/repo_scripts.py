"""The repository's scripts/ as importable modules, and where the shared DAVIS data lives beside the clone (tests
that need it skip cleanly without it: `needs_davis`)."""
from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[1]
DAVIS = REPO.parent / "shared" / "data" / "davis2016-train"
needs_davis = pytest.mark.skipif(not DAVIS.is_dir(), reason="../shared/data/davis2016-train is not available")


def load_script(name: str) -> ModuleType:
    """scripts/<name>.py, loaded fresh (scripts are not a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
