"""Samples table (schemas.SAMPLES) + per-title frame shards (schemas.FRAMES) → collator-ready samples."""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator, Sequence, Sized
from pathlib import Path

import polars as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from anime_pipeline import schemas
from anime_pipeline.paths import within
from anime_pipeline.training.prompt import uniform_indices


class FramesMissingError(FileNotFoundError):
    """A sample's frame shard is absent or holds no frames for the title."""


def read_samples(samples: pl.DataFrame | str | Path, *, split: str | None = None) -> pl.DataFrame:
    """The samples table (a DataFrame or a Parquet path), optionally filtered to one split."""
    df = samples if isinstance(samples, pl.DataFrame) else pl.read_parquet(Path(samples))
    missing = {"mal_id", "prompt", "synopsis", "frames_path"} - set(df.columns)
    if missing:
        raise ValueError(f"samples table lacks columns {sorted(missing)}")
    if split is not None and "split" in df.columns:
        present = sorted(set(df["split"].drop_nulls().to_list()))
        df = df.filter(pl.col("split") == split)
        if df.height == 0 and present:
            raise ValueError(f"samples table has no rows with split={split!r} (splits present: {present})")
    return df


def decode_jpeg(data: bytes):
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


def open_jpeg(data: bytes):
    """The JPEG as a lazily decoded PIL image (decoded on first pixel access): samples whose vision
    features are cached are never decoded. Non-RGB JPEGs are converted (decoded) at once."""
    from PIL import Image

    img = Image.open(io.BytesIO(data))
    return img if img.mode == "RGB" else img.convert("RGB")


def frame_id(source_sha256: str | None, frame_index, timestamp_s, width, height, image: bytes) -> str:
    """Identity of a stored frame, for feature-cache keys: the episode file's SHA-256 + frame index +
    timestamp + stored size; without a recorded source hash, the SHA-256 of the JPEG itself."""
    if source_sha256:
        return f"src:{source_sha256}:{frame_index}:{float(timestamp_s)!r}:{width}x{height}"
    return "jpeg:" + hashlib.sha256(image).hexdigest()


class ShardVideoDataset(Dataset):
    """One item per samples row: `{"images", "frame_ids", "timestamps", "duration_s", "prompt", "answer",
    "mal_id", "name"}`. Frames come from `data_home / frames_path` (a FRAMES Parquet shard), filtered to the row's
    `mal_id`, ordered by timestamp, JPEG-decoded lazily (`open_jpeg`); with `max_frames`, spread uniformly
    (first and last kept). `frame_ids` (one per image, `frame_id`) identify the frames for the feature cache. `split` keeps only the samples rows of that split (when the column exists)."""

    def __init__(
        self,
        samples: pl.DataFrame | str | Path,
        data_home: Path,
        max_frames: int | None = None,
        *,
        split: str | None = None,
    ):
        if max_frames is not None and max_frames < 1:
            raise ValueError("max_frames must be >= 1 or None")
        self.data_home = Path(data_home)
        self.max_frames = max_frames
        df = read_samples(samples, split=split)
        self.rows = df.to_dicts()

    def __len__(self) -> int:
        return len(self.rows)

    def read_frames(self, row: dict) -> pl.DataFrame:
        path = within(self.data_home, row["frames_path"])
        if not path.is_file():
            raise FramesMissingError(f"frame shard {path} for MAL {row['mal_id']} does not exist")
        lf = pl.scan_parquet(path)
        names = lf.collect_schema().names()
        cols = ["mal_id", "frame_index", "timestamp_s", "image"] + [
            c for c in ("width", "height", "source_sha256") if c in names
        ]
        frames = (
            lf.select(cols)
            .filter(pl.col("mal_id") == row["mal_id"])
            .sort(["timestamp_s", "frame_index"])
            .collect()
        )
        if frames.height == 0:
            raise FramesMissingError(f"frame shard {path} holds no frames for MAL {row['mal_id']}")
        return frames

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        frames = self.read_frames(row)
        idx = (
            uniform_indices(frames.height, self.max_frames) if self.max_frames else list(range(frames.height))
        )
        ts = frames["timestamp_s"].to_list()
        blobs = frames["image"].to_list()
        n = frames.height
        col = {
            c: frames[c].to_list() if c in frames.columns else [None] * n
            for c in ("frame_index", "width", "height", "source_sha256")
        }
        duration = row.get("duration_s")
        if duration is None:
            duration = float(ts[-1]) if ts else 0.0
        return {
            "images": [open_jpeg(blobs[j]) for j in idx],
            "frame_ids": [
                frame_id(
                    col["source_sha256"][j],
                    col["frame_index"][j],
                    ts[j],
                    col["width"][j],
                    col["height"][j],
                    blobs[j],
                )
                for j in idx
            ],
            "timestamps": [float(ts[j]) for j in idx],
            "duration_s": float(duration),
            "prompt": row["prompt"],
            "answer": row["synopsis"],
            "mal_id": int(row["mal_id"]),
            "name": row.get("name"),
        }

    def text_sample(self, i: int) -> dict:
        """Item `i` without pixels: text fields and the kept frames' timestamps (images are `None`
        placeholders), for length checks that need no JPEG decoding."""
        row = self.rows[i]
        path = within(self.data_home, row["frames_path"])
        if not path.is_file():
            raise FramesMissingError(f"frame shard {path} for MAL {row['mal_id']} does not exist")
        ts = (
            pl.scan_parquet(path)
            .filter(pl.col("mal_id") == row["mal_id"])
            .sort(["timestamp_s", "frame_index"])
            .select("timestamp_s")
            .collect()["timestamp_s"]
            .to_list()
        )
        if not ts:
            raise FramesMissingError(f"frame shard {path} holds no frames for MAL {row['mal_id']}")
        idx = uniform_indices(len(ts), self.max_frames) if self.max_frames else list(range(len(ts)))
        duration = row.get("duration_s")
        return {
            "images": [None] * len(idx),
            "timestamps": [float(ts[j]) for j in idx],
            "duration_s": float(duration if duration is not None else ts[-1]),
            "prompt": row["prompt"],
            "answer": row["synopsis"],
            "mal_id": int(row["mal_id"]),
            "name": row.get("name"),
        }

    def drop_too_long(self, collator) -> list[dict]:
        """Remove the rows that cannot fit the collator's `max_length` even with one frame
        (`SampleTooLongError`); returns one record `{"mal_id", "name", "error"}` per removed row. Nothing
        is read when the collator has no `max_length`."""
        from anime_pipeline.training.collator import SampleTooLongError

        if getattr(collator, "max_length", None) is None:
            return []
        kept, skipped = [], []
        for i, row in enumerate(self.rows):
            try:
                collator.check_fits(self.text_sample(i))
            except SampleTooLongError as e:
                skipped.append({"mal_id": int(row["mal_id"]), "name": row.get("name"), "error": str(e)})
                continue
            kept.append(row)
        self.rows = kept
        return skipped


class EpochSampler(Sampler[int]):
    """Deterministic order per (seed, epoch), resumable: `set_epoch(e, start=k)` skips the first k items
    (of this rank's shard).

    Data parallelism: with `world_size` > 1, rank r takes items r, r + W, r + 2W, ... of the epoch order
    (interleaved, so micro-batch k of all ranks together is a contiguous chunk of the order, as with one
    process and W× the batch size). `pad=True` (training) repeats the order's first items so that every
    rank gets `ceil(n / W)` items (same number of steps everywhere); `pad=False` (evaluation) gives
    uneven shards without duplicates. One rank (the default) is the plain order."""

    def __init__(
        self,
        n: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank} world_size={world_size}")
        self.n, self.shuffle, self.seed = int(n), bool(shuffle), int(seed)
        self.rank, self.world_size, self.pad = int(rank), int(world_size), bool(pad)
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = int(epoch), int(start)

    def order(self, epoch: int) -> list[int]:
        """The whole epoch's order (all ranks)."""
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n, generator=g).tolist()

    def shard_size(self) -> int:
        """Items this rank gets per epoch."""
        if self.world_size == 1:
            return self.n
        if self.pad:
            return -(-self.n // self.world_size)
        return len(range(self.rank, self.n, self.world_size))

    def shard(self, epoch: int) -> list[int]:
        """This rank's items of the epoch, in order."""
        order = self.order(epoch)
        if self.world_size == 1:
            return order
        if self.pad and order:
            total = self.shard_size() * self.world_size
            order = (order * -(-total // len(order)))[:total]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        return iter(self.shard(self.epoch)[self.start :])

    def __len__(self) -> int:
        return max(0, self.shard_size() - self.start)


def _identity(x):
    return x


def make_dataloader(
    dataset: Dataset,
    collator=None,
    *,
    batch_size: int = 1,
    shuffle: bool = False,
    num_workers: int = 0,
    pin_memory: bool | None = None,
    prefetch_factor: int | None = 2,
    persistent_workers: bool | None = None,
    seed: int = 0,
    drop_last: bool = False,
    sampler: Sampler | None = None,
    multiprocessing_context: str | None = "spawn",
) -> DataLoader:
    """DataLoader over a dataset of samples. `collator=None` yields lists of sample dicts.

    Workers > 0 get `prefetch_factor` and persistent workers (unless told otherwise); `pin_memory`
    defaults to CUDA being available. The order comes from an `EpochSampler(seed)` unless one is given.
    Workers are spawned, not forked: polars (and OpenMP) thread pools deadlock in forked children.
    """
    if sampler is None:
        if not isinstance(dataset, Sized):
            raise TypeError(
                f"dataset {type(dataset).__name__} has no len(): pass a sampler to make_dataloader"
            )
        sampler = EpochSampler(len(dataset), shuffle=shuffle, seed=seed)
    kw: dict = {}
    if num_workers > 0:
        kw["prefetch_factor"] = prefetch_factor or 2
        kw["persistent_workers"] = True if persistent_workers is None else persistent_workers
        if multiprocessing_context:
            kw["multiprocessing_context"] = multiprocessing_context
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collator or _identity,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        drop_last=drop_last,
        # Own generator: creating an iterator never draws from the global RNG (keeps resumed runs'
        # dropout streams identical to uninterrupted ones).
        generator=torch.Generator().manual_seed(int(seed)),
        **kw,
    )


def frames_table(rows: Sequence[dict]) -> pl.DataFrame:
    """Build a FRAMES-schema table (handy for tests / tools)."""
    return schemas.conform(pl.DataFrame(rows), schemas.FRAMES)
