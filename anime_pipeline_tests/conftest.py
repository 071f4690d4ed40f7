"""Shared pytest configuration: every test gets its own data dir and never touches ./data."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest


@pytest.fixture
def data_home(tmp_path, monkeypatch):
    home = tmp_path / "data"
    home.mkdir()
    monkeypatch.setenv("ANIME_PIPELINE_HOME", str(home))
    return home


def dagster_dev_command(port: int) -> list[str]:
    """`dagster dev` of this venv on the repo's workspace, bound to loopback only (the UI has no login)."""
    dagster = str(Path(sys.executable).parent / "dagster")
    return [dagster, "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session", autouse=True)
def _offline_env():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    yield


def pytest_collection_modifyitems(session, config, items):
    """Run `evaluation/test_evaluation_run.py` last. After its in-process fine-tune + evaluation, a later
    in-process `dg.materialize` under `capfd` (faults/test_security_faults.py, the MAL secret scan) closes
    pytest's own global stderr capture file ("I/O operation on closed file", then "lost sys.stderr"):
    reproduced with just those two files, not yet traced to its cause. Each passes on its own and in
    this order; the interaction is an open item in docs/RELIABILITY.md."""
    last = [
        it for it in items if it.nodeid.startswith("anime_pipeline_tests/evaluation/test_evaluation_run.py")
    ]
    if last:
        items[:] = [it for it in items if it not in last] + last
