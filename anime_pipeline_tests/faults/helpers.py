"""Helpers shared by the fault-injection tests (importable; fixtures live in conftest.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from anime_pipeline_tests.fixtures.http import fast_config  # noqa: F401 (re-exported)

REPO = Path(__file__).resolve().parents[2]


def child_env(**extra: str) -> dict[str, str]:
    """Environment of a child Python process that imports the package from this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.update(extra)
    return env


def wait_for(predicate, timeout: float, interval: float = 0.02, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
