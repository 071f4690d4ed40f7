"""With ANIME_PIPELINE_S3_BUCKET set, `frame_shards` also publishes its shard to S3 (a real moto_server)."""

import os

import boto3
import dagster as dg
import polars as pl
import pytest

from anime_pipeline.definitions import defs
from anime_pipeline.defs.resources import build_resources
from anime_pipeline.demo import DEMO_MAL_ID_BASE

pytestmark = pytest.mark.slow


def test_frame_shard_is_published_and_readable_over_s3(s3_env, tmp_path):
    home = tmp_path / "data"
    env = {**os.environ, **s3_env, "ANIME_PIPELINE_HOME": str(home)}
    resources = build_resources(env=env)
    assets = list(defs.assets) + list(defs.asset_checks)
    key = str(DEMO_MAL_ID_BASE)
    with dg.instance_for_test() as instance:
        assert dg.materialize(assets, selection=["titles", "synopses"], instance=instance, resources=resources).success
        result = dg.materialize(
            assets, selection=["episodes", "frame_shards"], partition_key=key, instance=instance, resources=resources
        )
        assert result.success
        md = instance.get_latest_materialization_event(dg.AssetKey("frame_shards")).asset_materialization.metadata
    uri = md["s3_uri"].value
    bucket, prefix = s3_env["ANIME_PIPELINE_S3_BUCKET"], s3_env["ANIME_PIPELINE_S3_PREFIX"]
    assert uri == f"s3://{bucket}/{prefix}/frames/mal_id={key}/part-0.parquet"
    s3 = boto3.client("s3", endpoint_url=s3_env["ANIME_PIPELINE_S3_ENDPOINT_URL"], region_name="us-east-1")
    body = s3.get_object(Bucket=bucket, Key=f"{prefix}/frames/mal_id={key}/part-0.parquet")["Body"].read()
    assert body == (home / "frames" / f"mal_id={key}" / "part-0.parquet").read_bytes()
    remote = pl.read_parquet(uri, storage_options=resources["pipeline"].object_store().polars_storage_options())
    assert remote.height == 8 and remote["mal_id"].unique().to_list() == [int(key)]
