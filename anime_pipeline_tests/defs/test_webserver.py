"""`dagster dev` starts on loopback, serves the asset graph over GraphQL and stops cleanly."""

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from anime_pipeline_tests.conftest import dagster_dev_command, free_port

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

QUERY = "{ assetNodes { assetKey { path } groupName } }"


def test_dagster_dev_serves_asset_graph(tmp_path):
    port = free_port()
    env = dict(os.environ, DAGSTER_HOME=str(tmp_path / "dagster"), ANIME_PIPELINE_HOME=str(tmp_path / "data"))
    (tmp_path / "dagster").mkdir()
    (tmp_path / "dagster" / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    proc = subprocess.Popen(
        dagster_dev_command(port),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        nodes = None
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                req = urllib.request.Request(
                    f"http://127.0.0.1:{port}/graphql",
                    data=json.dumps({"query": QUERY}).encode(),
                    headers={"Content-Type": "application/json"},
                )
                body = json.loads(urllib.request.urlopen(req, timeout=5).read())
                nodes = body.get("data", {}).get("assetNodes")
                if nodes:
                    break
            except (OSError, ValueError):
                pass
            assert proc.poll() is None, "dagster dev exited early"
            time.sleep(1)
        assert nodes, "no asset nodes from the GraphQL API"
        groups = {"/".join(n["assetKey"]["path"]): n["groupName"] for n in nodes}
        for key in (
            "titles",
            "synopses",
            "episodes",
            "frame_shards",
            "train_val_split",
            "finetuned_adapter",
            "caption_eval",
        ):
            assert key in groups
        assert groups["finetuned_adapter"] == "training"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        stopped_on_term = True
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            stopped_on_term = False
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert stopped_on_term, "dagster dev did not stop within 30 s of SIGTERM"
    # ... and took its webserver, daemon and code server with it (nothing of its process group is left)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("processes of dagster dev's group outlived it by 30 s")
