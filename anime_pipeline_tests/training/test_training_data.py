"""Reading FRAMES shards into samples, and the DataLoader settings."""

from __future__ import annotations

import polars as pl
import pytest

from anime_pipeline import schemas
from anime_pipeline.paths import UnsafePathError
from anime_pipeline.training.collator import VideoSFTCollator
from anime_pipeline.training.data import (
    EpochSampler,
    FramesMissingError,
    ShardVideoDataset,
    make_dataloader,
    read_samples,
)

from .conftest import COLOURS, write_dataset


def _titles():
    return [
        {"mal_id": 7, "colours": ["red", "green", "blue", "yellow", "purple"], "synopsis": "Seven."},
        {"mal_id": 8, "colours": ["cyan", "cyan"], "synopsis": "Eight.", "prompt": "P8"},
    ]


def test_dataset_reads_shards_in_order(tmp_path):
    path = write_dataset(tmp_path, _titles())
    ds = ShardVideoDataset(path, tmp_path)
    assert len(ds) == 2
    s = ds[0]
    assert s["mal_id"] == 7 and s["answer"] == "Seven." and len(s["images"]) == 5
    assert s["timestamps"] == [0.0, 20.0, 40.0, 60.0, 80.0] and s["duration_s"] == 100.0
    r, g, _b = s["images"][1].getpixel((10, 10))
    assert abs(r - COLOURS["green"][0]) < 12 and abs(g - COLOURS["green"][1]) < 12
    assert ds[1]["prompt"] == "P8"
    capped = ShardVideoDataset(read_samples(path), tmp_path, max_frames=3)[0]
    assert capped["timestamps"] == [0.0, 40.0, 80.0]


def test_shard_with_several_titles_and_shuffled_rows(tmp_path):
    write_dataset(tmp_path, _titles())
    a = pl.read_parquet(tmp_path / "frames/7.parquet")
    b = pl.read_parquet(tmp_path / "frames/8.parquet")
    pl.concat([b, a]).reverse().write_parquet(tmp_path / "frames/all.parquet")
    samples = read_samples(tmp_path / "splits/train.parquet").with_columns(
        pl.lit("frames/all.parquet").alias("frames_path")
    )
    ds = ShardVideoDataset(samples, tmp_path)
    assert ds[0]["timestamps"] == [0.0, 20.0, 40.0, 60.0, 80.0]
    assert len(ds[1]["images"]) == 2


def test_missing_and_unsafe_shards(tmp_path):
    path = write_dataset(tmp_path, _titles())
    df = read_samples(path)
    with pytest.raises(FramesMissingError):
        ShardVideoDataset(df.with_columns(pl.lit("frames/none.parquet").alias("frames_path")), tmp_path)[0]
    with pytest.raises(UnsafePathError):
        ShardVideoDataset(df.with_columns(pl.lit("../x.parquet").alias("frames_path")), tmp_path)[0]
    empty = schemas.conform(pl.DataFrame({"mal_id": [99]}), schemas.FRAMES).clear()
    empty.write_parquet(tmp_path / "frames/empty.parquet")
    with pytest.raises(FramesMissingError):
        ShardVideoDataset(df.with_columns(pl.lit("frames/empty.parquet").alias("frames_path")), tmp_path)[0]


def test_dataloader_with_workers(tmp_path, tiny_processor):
    path = write_dataset(tmp_path, _titles())
    ds = ShardVideoDataset(path, tmp_path)
    dl = make_dataloader(ds, VideoSFTCollator(tiny_processor), batch_size=2, num_workers=1, prefetch_factor=2)
    assert dl.persistent_workers and dl.prefetch_factor == 2 and dl.num_workers == 1
    batches = list(dl) + list(dl)  # persistent workers survive a second epoch
    assert len(batches) == 2 and batches[0]["pixel_values"].shape == (2, 5, 3, 64, 64)
    plain = make_dataloader(ds, None, batch_size=1)
    assert plain.num_workers == 0 and isinstance(next(iter(plain)), list)


def test_epoch_sampler_is_deterministic_and_resumable():
    s = EpochSampler(10, shuffle=True, seed=3)
    e0, e1 = s.order(0), s.order(1)
    assert sorted(e0) == list(range(10)) and e0 != e1 and EpochSampler(10, seed=3).order(0) == e0
    s.set_epoch(1, start=4)
    assert list(s) == e1[4:] and len(s) == 6
