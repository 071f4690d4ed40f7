"""A bad episode fails its own partition with a clear, recorded error; the other partitions still materialize,
and the split lists the title as excluded with that error."""

import json

import dagster as dg
import pytest

from anime_pipeline_tests.fixtures.media import make_clip
from anime_pipeline_tests.fixtures.runs import catalog_then_partitions, step_failure_message

pytestmark = pytest.mark.slow


def test_bad_file_fails_only_its_partition(tmp_path):
    home, videos = tmp_path / "data", tmp_path / "videos"
    good, bad = "990001", "990002"
    make_clip(videos / f"{good}.mp4", seconds=3.0, width=96, height=64, fps=8, gop=8)
    (videos / f"{bad}.mp4").write_text("this is not a video\n")
    env = {
        "ANIME_PIPELINE_HOME": str(home),
        "ANIME_PIPELINE_EPISODE_SOURCE": "local",
        "ANIME_PIPELINE_VIDEO_DIR": str(videos),
    }
    with dg.instance_for_test() as instance:
        runs = catalog_then_partitions(env, instance, (bad, good), ["episodes", "frame_shards"])
        results = runs.results
        assert results[good].success and not results[bad].success
        message = step_failure_message(results[bad])
        assert f"{bad}.mp4" in message and "MAL id 990002" in message
        assert instance.get_materialized_partitions(dg.AssetKey("frame_shards")) == {good}
        # failures as data: the split names the title left out and the error its episode recorded
        split = runs.materialize(
            instance,
            ["train_val_split"],
            run_config={"ops": {"train_val_split": {"config": {"val_fraction": 0.0}}}},
        )
        meta = split.get_asset_materialization_events()[0].step_materialization_data.materialization.metadata
        assert meta["num_train"].value == 1 and meta["num_media_failures"].value == 1
        assert bad in str(meta["excluded"].value) and "no frame shard (episodes failed:" in str(
            meta["excluded"].value
        )
    record = json.loads((home / "episodes" / bad / "error.json").read_text())
    assert record["stage"] == "episodes" and f"{bad}.mp4" in record["error"]
    assert not list((home / "episodes" / bad).glob("ep01.*"))  # nothing partial left behind
    assert not (home / "frames" / f"mal_id={bad}").exists()
    assert (home / "frames" / f"mal_id={good}" / "part-0.parquet").exists()
