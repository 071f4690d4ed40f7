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
from anime_pipeline.settings import Settings, SettingsError
from anime_pipeline.storage import (
    LocalDataStore,
    ObjectDataStore,
    ObjectStore,
    data_store_from_settings,
    relative_key,
)

from .conftest import FAKE_SECRET, object_store


# Configuration ------------------------------------------------------------------------------------
def test_local_filesystem_is_the_default(tmp_path):
    s = Settings.from_env({"ANIME_PIPELINE_HOME": str(tmp_path / "data")})
    store = data_store_from_settings(s)
    assert isinstance(store, LocalDataStore) and not store.remote and s.data_uri is None
    assert store.root == (tmp_path / "data").resolve()


def test_an_s3_home_is_the_store_and_the_local_dir_only_a_cache(tmp_path):
    env = {
        "ANIME_PIPELINE_HOME": "s3://anime-data/prod/v1/",
        "ANIME_PIPELINE_S3_ENDPOINT_URL": "http://127.0.0.1:9000/",
        "AWS_REGION": "eu-west-1",
        "ANIME_PIPELINE_CACHE_DIR": str(tmp_path / "cache"),
    }
    s = Settings.from_env(env)
    assert (s.data_uri, s.home, s.s3_endpoint_url, s.s3_region) == (
        "s3://anime-data/prod/v1",
        (tmp_path / "cache").resolve(),
        "http://127.0.0.1:9000",
        "eu-west-1",
    )
    store = data_store_from_settings(s)
    assert isinstance(store, ObjectDataStore) and store.remote and store.root == s.home
    objects = store.objects
    assert (objects.bucket, objects.prefix, objects.endpoint_url, objects.region) == (
        "anime-data",
        "prod/v1",
        "http://127.0.0.1:9000",
        "eu-west-1",
    )
    assert objects.allow_http
    assert (
        store.uri("frames/mal_id=1/part-0.parquet")
        == "s3://anime-data/prod/v1/frames/mal_id=1/part-0.parquet"
    )
    assert objects.uri("frames/**/*.parquet") == "s3://anime-data/prod/v1/frames/**/*.parquet"
    assert objects.arrow_path("splits/train.parquet") == "anime-data/prod/v1/splits/train.parquet"
    # the explicit variable wins over AWS_REGION; us-east-1 otherwise
    assert (
        Settings.from_env({**env, "ANIME_PIPELINE_S3_REGION": "ap-northeast-1"}).s3_region == "ap-northeast-1"
    )
    bare = Settings.from_env({"ANIME_PIPELINE_HOME": "s3://anime-data"})
    assert (bare.s3_region, bare.s3_endpoint_url, bare.data_uri) == ("us-east-1", None, "s3://anime-data")
    # without ANIME_PIPELINE_CACHE_DIR each process gets its own fresh local dir
    assert "anime_pipeline-cache" in str(bare.home) and not bare.home.exists()


@pytest.mark.parametrize(
    "env",
    [
        {"ANIME_PIPELINE_HOME": "s3://Bad_Bucket"},
        {"ANIME_PIPELINE_HOME": "s3://anime-data/a/../b"},
        {"ANIME_PIPELINE_HOME": "s3://anime-data", "ANIME_PIPELINE_S3_ENDPOINT_URL": "127.0.0.1:9000"},
        {"ANIME_PIPELINE_HOME": "s3://anime-data", "ANIME_PIPELINE_S3_ENDPOINT_URL": "http://h:1/path"},
        {"ANIME_PIPELINE_HOME": "ftp://anime-data"},
    ],
)
def test_bad_configuration_names_the_variable(env):
    with pytest.raises(SettingsError, match=r"ANIME_PIPELINE_(HOME|S3_ENDPOINT_URL)"):
        Settings.from_env(env)


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


# A real S3-compatible server ----------------------------------------------------------------------
def write_real_shard(home: Path, mal_id: int, n: int = 4) -> Path:
    frames = [
        SampledFrame(
            frame_index=i, timestamp_s=1.0 + i, image=Image.new("RGB", (64, 36), (40 * i, 90, 200 - 40 * i))
        )
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
    store = object_store(s3_env)
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
    assert (
        store.fetch("frames/mal_id=20/part-0.parquet", home2, verify=True).read_bytes()
        == shards[1].read_bytes()
    )
    assert not [p for p in got.parent.iterdir() if p.name.startswith(".")]

    with pytest.raises(FileNotFoundError):
        store.fetch("frames/mal_id=999/part-0.parquet", home2)
    # credentials never reach the logs
    assert FAKE_SECRET not in caplog.text


def test_polars_and_pyarrow_write_and_large_publish_is_multipart(s3_env, tmp_path):
    """The readers' options also work for writing; a large file goes up as a multipart upload."""
    store = object_store(s3_env)
    df = pl.DataFrame({"mal_id": [1, 2, 3], "split": ["train", "train", "val"]})
    df.write_parquet(store.uri("splits/train.parquet"), storage_options=store.polars_storage_options())
    assert pl.read_parquet(
        store.uri("splits/train.parquet"), storage_options=store.polars_storage_options()
    ).equals(df)

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


def test_publish_tree_skips_temp_files_and_unchanged_objects(s3_env, tmp_path):
    home = tmp_path / "data"
    adapter = home / "models" / "run-1" / "adapter"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text('{"r": 16}')
    (adapter / "adapter_model.safetensors").write_bytes(b"\0" * 1000)
    (adapter / ".adapter_model.safetensors.tmp").write_bytes(b"partial")  # temp files are skipped

    store = object_store(s3_env)
    results = store.publish_tree(home / "models" / "run-1", home)
    assert [r.key for r in results] == [
        "datasets/v1/models/run-1/adapter/adapter_config.json",
        "datasets/v1/models/run-1/adapter/adapter_model.safetensors",
    ]
    assert all(r.uploaded for r in results)
    assert not any(r.uploaded for r in store.publish_tree(home / "models" / "run-1", home))
    assert store.head("models/run-1/adapter/adapter_model.safetensors")["sha256"] == results[1].sha256


def test_data_store_pull_and_push_between_two_empty_local_dirs(s3_env, tmp_path):
    """Two processes' stores on one bucket: what one pushes the other pulls into its own empty dir."""
    a = data_store_from_settings(
        Settings.from_env({**s3_env, "ANIME_PIPELINE_CACHE_DIR": str(tmp_path / "a")})
    )
    b = data_store_from_settings(
        Settings.from_env({**s3_env, "ANIME_PIPELINE_CACHE_DIR": str(tmp_path / "b")})
    )
    write_real_shard(a.root, 5)
    (a.root / "catalog").mkdir(parents=True)
    (a.root / "catalog" / "titles.parquet").write_bytes(b"titles-v1")
    pushed = a.push("frames", "catalog/titles.parquet")
    assert [p.uploaded for p in pushed] == [True, True]
    assert [p.uploaded for p in a.push("frames", "catalog/titles.parquet")] == [False, False]  # idempotent
    assert b.exists("catalog/titles.parquet") and not b.exists("catalog/nothing.parquet")
    assert b.list("frames") == ["frames/mal_id=5/part-0.parquet"]

    got = b.pull("frames", "catalog/titles.parquet")
    assert got == [b.root / "frames", b.root / "catalog" / "titles.parquet"]
    assert read_frame_shard(b.root / "frames" / "mal_id=5" / "part-0.parquet").height == 4
    # a newer version from another process replaces the cached copy on the next pull
    (a.root / "catalog" / "titles.parquet").write_bytes(b"titles-v2")
    a.push("catalog/titles.parquet")
    b.pull("catalog/titles.parquet")
    assert (b.root / "catalog" / "titles.parquet").read_bytes() == b"titles-v2"
    # missing inputs: an error that names the object, unless optional
    with pytest.raises(FileNotFoundError, match=r"splits/train\.parquet"):
        b.pull("splits/train.parquet")
    assert b.pull("splits/train.parquet", missing_ok=True) == []
    with pytest.raises(FileNotFoundError):
        b.push("models/never-written")


KILL_CHILD = """
import os, signal, sys
from pathlib import Path
from anime_pipeline.settings import Settings
from anime_pipeline.storage import data_store_from_settings

store = data_store_from_settings(Settings.from_env())
# fault: the process dies (SIGKILL, no cleanup) right after the first part of the upload reached the server
store.objects.s3().meta.events.register(
    "after-call.s3.UploadPart", lambda **kw: os.kill(os.getpid(), signal.SIGKILL))
store.push(sys.argv[1])
print("finished", flush=True)
"""


@pytest.mark.slow
def test_a_process_killed_mid_upload_leaves_no_object_and_the_next_run_completes(s3_env, tmp_path):
    import os
    import signal
    import subprocess
    import sys

    env = {**os.environ, **s3_env, "ANIME_PIPELINE_CACHE_DIR": str(tmp_path / "cache")}
    video = tmp_path / "cache" / "episodes" / "9" / "ep01.mp4"
    video.parent.mkdir(parents=True)
    video.write_bytes(os.urandom(20 * 1024 * 1024))  # 20 MiB: a multipart upload of 8 MiB parts
    rel = "episodes/9/ep01.mp4"
    child = subprocess.run(
        [sys.executable, "-c", KILL_CHILD, rel], env=env, capture_output=True, text=True, timeout=300
    )
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
    assert "finished" not in child.stdout

    store = object_store(s3_env)
    assert store.head(rel) is None  # nothing under the final key
    assert store.list_paths("episodes") == []
    uploads = store.s3().list_multipart_uploads(Bucket=store.bucket).get("Uploads", [])
    assert [u["Key"] for u in uploads] == [store.key(rel)]  # only an incomplete upload, invisible to readers

    # the next run completes: the object appears whole, with its sha256
    done = subprocess.run(
        [sys.executable, "-m", "anime_pipeline.storage", "publish", rel],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("uploaded s3://")
    head = store.head(rel)
    assert head["size"] == video.stat().st_size
    other = store.fetch(rel, tmp_path / "reader")
    assert other.read_bytes() == video.read_bytes()
