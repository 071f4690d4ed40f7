"""Helpers shared by the fault-injection tests (importable; fixtures live in conftest.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from anime_pipeline.catalog.http import HttpConfig

REPO = Path(__file__).resolve().parents[2]


def fast_config(**overrides: Any) -> HttpConfig:
    """Small timeouts and backoff, no rate limit, no cache: every failure surfaces in about a second."""
    kw: dict[str, Any] = dict(
        user_agent="anime_pipeline-faults/1.0",
        cache_dir=None,
        connect_timeout=1.0,
        read_timeout=1.0,
        total_retries=2,
        backoff_factor=0.01,
        backoff_jitter=0.01,
        backoff_max=0.05,
        max_retry_after=0.05,
        rate_limits={},
        default_rate_limit=None,
        max_rate_wait=2.0,
    )
    kw.update(overrides)
    return HttpConfig(**kw)


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
