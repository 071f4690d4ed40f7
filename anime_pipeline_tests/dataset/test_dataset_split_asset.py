"""Failures as data, through the real assets: a title whose episode failed is listed by `train_val_split`
as excluded with the error the `episodes` asset recorded in `error.json`."""

import dagster as dg
import pytest

from anime_pipeline.definitions import defs
from anime_pipeline.defs.resources import build_resources
from anime_pipeline_tests.fixtures.media import make_clip

pytestmark = pytest.mark.slow


def test_split_metadata_names_the_titles_left_out_and_why(tmp_path):
    home, videos = tmp_path / "data", tmp_path / "videos"
    good, bad = "990001", "990002"
    make_clip(videos / f"{good}.mp4", seconds=3.0, width=96, height=64, fps=8, gop=8)
    (videos / f"{bad}.mp4").write_text("this is not a video\n")
    env = {"ANIME_PIPELINE_HOME": str(home), "ANIME_PIPELINE_EPISODE_SOURCE": "local",
           "ANIME_PIPELINE_VIDEO_DIR": str(videos)}
    resources = build_resources(env=env)
    assets = list(defs.assets) + list(defs.asset_checks)
    with dg.instance_for_test() as instance:
        assert dg.materialize(assets, selection=["titles", "synopses"], instance=instance, resources=resources).success
        for key in (bad, good):
            dg.materialize(assets, selection=["episodes", "frame_shards"], partition_key=key, instance=instance,
                           resources=resources, raise_on_error=False)
        assert (home / "episodes" / bad / "error.json").exists()
        result = dg.materialize(assets, selection=["train_val_split"], instance=instance, resources=resources,
                                run_config={"ops": {"train_val_split": {"config": {"val_fraction": 0.0}}}})
        assert result.success
        meta = result.get_asset_materialization_events()[0].step_materialization_data.materialization.metadata
    assert meta["num_train"].value == 1 and meta["num_media_failures"].value == 1
    excluded = str(meta["excluded"].value)
    assert bad in excluded and "no frame shard (episodes failed:" in excluded
