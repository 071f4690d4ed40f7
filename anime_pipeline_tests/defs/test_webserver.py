"""`dagster dev` starts on loopback, serves the asset graph over GraphQL and stops cleanly."""

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
    # ... and took its webserver, daemon and code server with it: no live process of its group is left
    # (zombies are ignored: an orphan is reaped by PID 1, which in some containers never reaps)
    deadline = time.monotonic() + 30
    while (left := live_group_members(dev.proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.5)
    if left:
        dev.kill_group()
        raise AssertionError(f"processes of dagster dev's group outlived it by 30 s: {left}\n{dev.tail()}")


def live_group_members(pgid: int) -> list[str]:
    """`pid state command` of every process in group `pgid` that is not a zombie (from /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # exited while we looked
        comm_end = text.rindex(")")
        fields = text[comm_end + 2 :].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            out.append(f"{stat.parent.name} {fields[0]} {text[text.index('(') + 1 : comm_end]}")
    return out
