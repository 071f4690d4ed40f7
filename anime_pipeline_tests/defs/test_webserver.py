"""`dagster dev` starts on loopback, serves the asset graph over GraphQL and stops cleanly."""

import os
import signal
import time
from pathlib import Path

import pytest

from anime_pipeline_tests.conftest import DagsterDev

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

QUERY = "{ assetNodes { assetKey { path } groupName } }"


def test_dagster_dev_serves_asset_graph(tmp_path):
    (tmp_path / "dagster").mkdir()
    (tmp_path / "dagster" / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    dev = DagsterDev(
        tmp_path / "dagster",
        tmp_path / "data",
        tmp_path / "dagster-dev.log",
        ANIME_PIPELINE_CATALOG_SCHEDULE="off",
        ANIME_PIPELINE_MEDIA_SENSOR="off",
    )
    try:
        nodes = dev.wait_for_assets(QUERY)
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
            assert key in groups, f"{key} missing from {sorted(groups)}"
        assert groups["finetuned_adapter"] == "training"
    finally:
        stopped_on_term = dev.stop()
    assert stopped_on_term, f"dagster dev did not stop within 30 s of SIGTERM\n{dev.tail()}"
    # ... and took its webserver, daemon and code server with it (nothing of its process group is left)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.killpg(dev.proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    else:
        os.killpg(dev.proc.pid, signal.SIGKILL)
        raise AssertionError(f"processes of dagster dev's group outlived it by 30 s\n{dev.tail()}")
