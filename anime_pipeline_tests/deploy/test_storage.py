"""anime_pipeline.storage: configuration (no server) and a real S3-compatible server (moto_server on loopback)."""

from __future__ import annotations

import logging
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest
from PIL import Image

from anime_pipeline.media.sampling import SampledFrame
from anime_pipeline.media.shards import read_frame_shard, write_frame_shard
from anime_pipeline.paths import UnsafePathError
from anime_pipeline.schemas import FRAMES
from anime_pipeline.storage import (
    ObjectStore,
    StorageConfigError,
    relative_key,
    s3_resource_from_env,
    store_from_resource,
)

from .conftest import FAKE_SECRET


# Configuration ------------------------------------------------------------------------------------
def test_local_filesystem_is_the_default():
    assert ObjectStore.from_env({}) is None
    assert ObjectStore.from_env({"ANIME_PIPELINE_S3_BUCKET": "  "}) is None
    assert s3_resource_from_env({}) is None


def test_from_env_reads_bucket_prefix_endpoint_region():
    store = ObjectStore.from_env(
        {
            "ANIME_PIPELINE_S3_BUCKET": "anime-data",
            "ANIME_PIPELINE_S3_PREFIX": "/prod/v1/",
            "ANIME_PIPELINE_S3_ENDPOINT_URL": "http://127.0.0.1:9000/",
            "AWS_REGION": "eu-west-1",
        }
    )
    assert (store.bucket, store.prefix, store.endpoint_url, store.region) == (
        "anime-data", "prod/v1", "http://127.0.0.1:9000", "eu-west-1"
    )
    assert store.allow_http
    assert store.uri("frames/mal_id=1/part-0.parquet") == "s3://anime-data/prod/v1/frames/mal_id=1/part-0.parquet"
    assert store.uri("frames/**/*.parquet") == "s3://anime-data/prod/v1/frames/**/*.parquet"
    assert store.arrow_path("splits/train.parquet") == "anime-data/prod/v1/splits/train.parquet"
    # the explicit variable wins over AWS_REGION; AWS default otherwise
    env = {"ANIME_PIPELINE_S3_BUCKET": "anime-data", "ANIME_PIPELINE_S3_REGION": "ap-northeast-1", "AWS_REGION": "x"}
    assert ObjectStore.from_env(env).region == "ap-northeast-1"
    bare = ObjectStore.from_env({"ANIME_PIPELINE_S3_BUCKET": "anime-data"})
    assert (bare.region, bare.endpoint_url, bare.prefix, bare.allow_http) == ("us-east-1", None, "", False)
    assert bare.uri("catalog/titles.parquet") == "s3://anime-data/catalog/titles.parquet"


@pytest.mark.parametrize(
    "env",
    [
        {"ANIME_PIPELINE_S3_BUCKET": "Bad_Bucket"},
        {"ANIME_PIPELINE_S3_BUCKET": "s3://anime-data"},
        {"ANIME_PIPELINE_S3_BUCKET": "anime-data", "ANIME_PIPELINE_S3_PREFIX": "a/../b"},
        {"ANIME_PIPELINE_S3_BUCKET": "anime-data", "ANIME_PIPELINE_S3_ENDPOINT_URL": "127.0.0.1:9000"},
        {"ANIME_PIPELINE_S3_BUCKET": "anime-data", "ANIME_PIPELINE_S3_ENDPOINT_URL": "http://h:1/path"},
    ],
)
def test_bad_configuration_names_the_variable(env):
    with pytest.raises((StorageConfigError, UnsafePathError)):
        ObjectStore.from_env(env)


@pytest.mark.parametrize("bad", ["", "/etc/passwd", "../x", "frames/../../x", "frames//x", "./x"])
def test_keys_never_leave_the_prefix(bad):
    with pytest.raises(UnsafePathError):
        relative_key(bad)


def test_publish_refuses_files_outside_the_data_dir(tmp_path):
    store = ObjectStore(bucket="anime-data")
    outside = tmp_path / "elsewhere.txt"
    outside.write_text("x")
    (tmp_path / "home").mkdir()
    with pytest.raises(UnsafePathError):
        store.publish(outside, tmp_path / "home")


def test_repr_has_no_credentials(aws_env):
    store = ObjectStore(bucket="anime-data", endpoint_url="http://127.0.0.1:9")
    store.s3()  # builds the client
    assert FAKE_SECRET not in repr(store)


def test_s3_resource_from_env_is_a_configured_dagster_resource(aws_env):
    from dagster_aws.s3 import S3Resource

    res = s3_resource_from_env(
        {"ANIME_PIPELINE_S3_BUCKET": "anime-data", "ANIME_PIPELINE_S3_ENDPOINT_URL": "http://127.0.0.1:9000"}
    )
    assert isinstance(res, S3Resource)
    assert (res.region_name, res.endpoint_url, res.use_ssl) == ("us-east-1", "http://127.0.0.1:9000", False)
    assert res.aws_access_key_id is None and res.aws_secret_access_key is None  # the standard chain


# A real S3-compatible server ----------------------------------------------------------------------
def write_real_shard(home: Path, mal_id: int, n: int = 4) -> Path:
    frames = [
        SampledFrame(frame_index=i, timestamp_s=1.0 + i, image=Image.new("RGB", (64, 36), (40 * i, 90, 200 - 40 * i)))
        for i in range(n)
    ]
    dest = home / "frames" / f"mal_id={mal_id}" / "part-0.parquet"
    write_frame_shard(frames, mal_id=mal_id, episode=1, source_sha256="ab" * 32, dest=dest)
    return dest


def count_puts(store: ObjectStore) -> list[str]:
    """Record PutObject / multipart uploads sent by the store's client."""
    sent: list[str] = []
    for op in ("PutObject", "CreateMultipartUpload"):
        store.s3().meta.events.register(f"before-call.s3.{op}", lambda params, op=op, **kw: sent.append(op))
    return sent


def test_publish_scan_and_fetch_on_a_second_worker(s3_env, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    home = tmp_path / "worker-1"
    shards = [write_real_shard(home, mal_id) for mal_id in (1, 20, 300)]
    store = ObjectStore.from_env(s3_env)
    sent = count_puts(store)

    uris = [store.publish(p, home) for p in shards]
    assert uris[1] == f"s3://{store.bucket}/datasets/v1/frames/mal_id=20/part-0.parquet"
    assert len(sent) == 3
    assert store.list_paths("frames") == [f"frames/mal_id={i}/part-0.parquet" for i in (1, 20, 300)]

    # polars over s3:// with storage_options: every shard, hive partition column included
    df = (
        pl.scan_parquet(store.uri("frames/**/*.parquet"), storage_options=store.polars_storage_options())
        .sort("mal_id", "frame_index")
        .collect()
    )
    assert df.height == 12
    assert sorted(set(df["mal_id"].to_list())) == [1, 20, 300]
    local = pl.concat([read_frame_shard(p) for p in shards]).sort("mal_id", "frame_index")
    assert df.select(list(FRAMES)).equals(local)

    # pyarrow's own S3 client reads the same object
    fs = store.pyarrow_filesystem()
    table = pq.read_table(store.arrow_path("frames/mal_id=20/part-0.parquet"), filesystem=fs)
    assert table.num_rows == 4 and table.column("mal_id").to_pylist() == [20] * 4

    # idempotent: same size + sha256 → nothing sent again
    again = store.publish_file(shards[0], home)
    assert again.uploaded is False and len(sent) == 3
    # a changed file is uploaded again
    write_real_shard(home, 1, n=5)
    changed = store.publish_file(shards[0], home)
    assert changed.uploaded is True and len(sent) == 4

    # a second worker with an empty data dir fetches what it needs
    home2 = tmp_path / "worker-2"
    got = store.fetch("frames/mal_id=20/part-0.parquet", home2)
    assert got == (home2 / "frames" / "mal_id=20" / "part-0.parquet").resolve()
    assert got.read_bytes() == shards[1].read_bytes()
    assert read_frame_shard(got).height == 4
    fetched = store.fetch_tree("frames", home2)
    assert sorted(p.relative_to(home2.resolve()).as_posix() for p in fetched) == store.list_paths("frames")
    assert read_frame_shard(home2 / "frames" / "mal_id=1" / "part-0.parquet").height == 5
    # present locally: no download
    got.write_bytes(b"stale")
    assert store.fetch("frames/mal_id=20/part-0.parquet", home2).read_bytes() == b"stale"
    # verify=True notices the difference and downloads again (atomically)
    assert store.fetch("frames/mal_id=20/part-0.parquet", home2, verify=True).read_bytes() == shards[1].read_bytes()
    assert not [p for p in got.parent.iterdir() if p.name.startswith(".")]

    with pytest.raises(FileNotFoundError):
        store.fetch("frames/mal_id=999/part-0.parquet", home2)
    # credentials never reach the logs
    assert FAKE_SECRET not in caplog.text


def test_polars_and_pyarrow_write_and_large_publish_is_multipart(s3_env, tmp_path):
    """The readers' options also work for writing; a large file goes up as a multipart upload."""
    store = ObjectStore.from_env(s3_env)
    df = pl.DataFrame({"mal_id": [1, 2, 3], "split": ["train", "train", "val"]})
    df.write_parquet(store.uri("splits/train.parquet"), storage_options=store.polars_storage_options())
    assert pl.read_parquet(store.uri("splits/train.parquet"), storage_options=store.polars_storage_options()).equals(df)

    fs = store.pyarrow_filesystem()
    pq.write_table(df.to_arrow(), store.arrow_path("splits/val.parquet"), filesystem=fs)
    assert pq.read_table(store.arrow_path("splits/val.parquet"), filesystem=fs).num_rows == 3

    home = tmp_path / "data"
    video = home / "episodes" / "7" / "ep01.mp4"
    video.parent.mkdir(parents=True)
    video.write_bytes(bytes(range(256)) * (20 * 1024 * 1024 // 256))  # 20 MiB > boto3's 8 MiB threshold
    sent = count_puts(store)
    published = store.publish_file(video, home)
    assert published.uploaded and sent == ["CreateMultipartUpload"]
    # the multipart ETag is not an MD5 of the content; the sha256 metadata still makes it idempotent
    assert store.head("episodes/7/ep01.mp4")["sha256"] == published.sha256
    assert store.publish_file(video, home).uploaded is False and sent == ["CreateMultipartUpload"]
    assert store.fetch("episodes/7/ep01.mp4", tmp_path / "other").stat().st_size == video.stat().st_size


def test_publish_tree_with_a_client_from_the_dagster_resource(s3_env, tmp_path):
    home = tmp_path / "data"
    adapter = home / "models" / "run-1" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"r": 16}')
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 1000)
    (adapter / ".adapter_model.safetensors.tmp").write_bytes(b"partial")  # temp files are skipped

    store = store_from_resource(s3_resource_from_env(s3_env), s3_env)
    results = store.publish_tree(home / "models" / "run-1", home)
    assert [r.key for r in results] == [
        "datasets/v1/models/run-1/adapter/adapter_config.json",
        "datasets/v1/models/run-1/adapter/adapter_model.safetensors",
    ]
    assert all(r.uploaded for r in results)
    assert not any(r.uploaded for r in store.publish_tree(home / "models" / "run-1", home))
    assert store.head("models/run-1/adapter/adapter_model.safetensors")["sha256"] == results[1].sha256
