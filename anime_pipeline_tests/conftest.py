"""Shared pytest configuration: every test gets its own data dir and never touches ./data."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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


class DagsterDev:
    """`dagster dev` on loopback in its own process group (so stopping it stops its webserver, daemon and
    code server), its output in `log`; failures quote the log's tail, since CI keeps no files."""

    def __init__(self, dagster_home: Path, data_home: Path, log: Path, **env: str):
        self.log = log
        self.base = f"http://127.0.0.1:{free_port()}"
        full_env = dict(os.environ, DAGSTER_HOME=str(dagster_home), ANIME_PIPELINE_HOME=str(data_home), **env)
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                dagster_dev_command(int(self.base.rsplit(":", 1)[1])),
                cwd=REPO,
                env=full_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def tail(self, chars: int = 6000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return f"--- last of {self.log.name} ---\n{text[-chars:]}"

    def graphql(self, query: str) -> dict:
        req = urllib.request.Request(
            f"{self.base}/graphql",
            data=json.dumps({"query": query}).encode(),
            headers={"Content-Type": "application/json"},
        )
        body = json.loads(urllib.request.urlopen(req, timeout=10).read())
        assert "errors" not in body, body["errors"]
        return body["data"]

    def wait_for_assets(self, query: str, timeout_s: float = 300) -> list[dict]:
        """Polls until `query` returns asset nodes; the first start of a fresh venv compiles every module."""
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc.poll() is None, (
                f"dagster dev exited early (rc {self.proc.returncode})\n{self.tail()}"
            )
            try:
                nodes = self.graphql(query)["assetNodes"]
                if nodes:
                    return nodes
            except (OSError, ValueError, KeyError, TypeError, AssertionError):
                pass
            assert time.monotonic() < deadline, (
                f"dagster dev served no assets in {timeout_s:.0f} s\n{self.tail()}"
            )
            time.sleep(1)

    def stop(self, timeout_s: float = 30) -> bool:
        """SIGTERM to `dagster dev` itself, as a container runtime or a supervisor sends it; True when it
        stopped in time (else its group is killed).

        Only the main process is signalled: `dagster dev` maps SIGTERM to an interrupt and stops its
        webserver and daemon over their shutdown pipes, then its code server. Signalling the whole group
        instead races that shutdown: the code server exits first and `dagster dev`'s proxy restarts it
        ("Code server process has exited with code 0. Restarting"), leaving the new one orphaned (seen on CI).
        """
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
            return True
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            return False

    def kill_group(self) -> None:
        """SIGKILL to whatever is left of the group (clean-up after a test's assertions)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


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
