"""With ANIME_PIPELINE_HOME=s3://…, the catalog and media stages read from and write to the bucket (a real
moto_server): a later step with an empty local dir finds its inputs there, and re-running uploads nothing."""

import dagster as dg
import polars as pl
import pytest

from anime_pipeline.definitions import build_defs
from anime_pipeline.demo import DEMO_MAL_ID_BASE
from anime_pipeline.settings import Settings

from .conftest import object_store

pytestmark = pytest.mark.slow


def _defs(s3_env, cache):
    return build_defs(Settings.from_env({**s3_env, "ANIME_PIPELINE_CACHE_DIR": str(cache)}), env={})


def _materialize(defs, instance, selection, partition_key=None):
    assets = list(defs.assets) + list(defs.asset_checks)
    result = dg.materialize(
        assets, selection=selection, instance=instance, resources=defs.resources, partition_key=partition_key
    )
    assert result.success
    return result


def test_media_stage_works_from_the_bucket_with_empty_local_dirs(s3_env, tmp_path):
    key = str(DEMO_MAL_ID_BASE)
    store = object_store(s3_env)
    with dg.instance_for_test() as instance:
        _materialize(_defs(s3_env, tmp_path / "step-1"), instance, ["titles", "synopses"])
        assert {"catalog/titles.parquet", "catalog/synopses.parquet"} <= set(store.list_paths("catalog"))
        # `episodes` and `frame_shards` in dirs of their own: each fetches what it reads from the bucket
        _materialize(_defs(s3_env, tmp_path / "step-2"), instance, ["episodes"], key)
        assert not (tmp_path / "step-2" / "frames").exists()
        _materialize(_defs(s3_env, tmp_path / "step-3"), instance, ["frame_shards"], key)
        assert (tmp_path / "step-3" / "episodes" / key / "ep01.mp4").exists()  # fetched, not shared
        md = instance.get_latest_materialization_event(
            dg.AssetKey("frame_shards")
        ).asset_materialization.metadata
        # episodes again, in a fourth empty dir: the episode is in the bucket, so it is reused, not downloaded
        _materialize(_defs(s3_env, tmp_path / "step-4"), instance, ["episodes"], key)
        ep = instance.get_latest_materialization_event(dg.AssetKey("episodes")).asset_materialization.metadata
        assert (
            ep["reused"].value is True and not (tmp_path / "step-4" / "episodes" / key / "ep01.mp4").exists()
        )
    uri = f"{s3_env['ANIME_PIPELINE_HOME']}/frames/mal_id={key}/part-0.parquet"
    assert md["path"].value == uri
    remote = pl.read_parquet(uri, storage_options=store.polars_storage_options())
    assert remote.height == 8 and remote["mal_id"].unique().to_list() == [int(key)]
    assert (
        tmp_path / "step-3" / "frames" / f"mal_id={key}" / "part-0.parquet"
    ).read_bytes() == store.s3().get_object(
        Bucket=store.bucket, Key=store.key(f"frames/mal_id={key}/part-0.parquet")
    )["Body"].read()
