"""Frame shards: one Parquet file per (title, episode) with exactly the `schemas.FRAMES` columns.

Each row is one sampled frame as JPEG bytes. A shard is written as a single row group, to a temp file
beside the destination that is renamed over it only when complete (`paths.atomic_path`): readers see the
old shard or the new one, never a partial file, and a failure leaves neither a shard nor a temp file.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Final, Literal

import polars as pl
from PIL import Image

from anime_pipeline.paths import atomic_path, sweep_stale_temps, within
from anime_pipeline.schemas import FRAMES

from .errors import MediaError
from .probe import VideoProbe, probe_video
from .sampling import (
    SampledFrame,
    SamplingConfig,
    decode_split,
    encode_jpeg,
    prestart_worker,
    sample_frames,
)

# one of the codecs polars' `write_parquet` accepts
ParquetCompression = Literal["lz4", "uncompressed", "snappy", "gzip", "brotli", "zstd"]
SHARD_COMPRESSION: Final[ParquetCompression] = "zstd"


@dataclass(frozen=True)
class ShardInfo:
    path: Path
    num_frames: int
    bytes: int
    width: int
    height: int

    def as_metadata(self) -> dict:
        return {
            "path": str(self.path),
            "num_frames": self.num_frames,
            "bytes": self.bytes,
            "width": self.width,
            "height": self.height,
        }


def _shard_parts(mal_id: int, episode: int) -> tuple[str, str]:
    mal_id, episode = _check_ids(mal_id, episode)
    return f"mal_id={mal_id}", f"part-{episode - 1}.parquet"


def shard_path(frames_dir: Path, mal_id: int, episode: int = 1) -> Path:
    """`<frames_dir>/mal_id=<id>/part-<episode - 1>.parquet` (episode 1 → part-0), proven inside frames_dir."""
    return within(Path(frames_dir), *_shard_parts(mal_id, episode))


def shard_key(mal_id: int, episode: int = 1) -> str:
    """The shard's key under the data home (local dir or object store): `frames/mal_id=<id>/part-0.parquet`."""
    return "/".join(("frames", *_shard_parts(mal_id, episode)))


def _check_ids(mal_id: int, episode: int) -> tuple[int, int]:
    if isinstance(mal_id, bool) or not isinstance(mal_id, int) or mal_id <= 0:
        raise ValueError(f"mal_id must be a positive integer, got {mal_id!r}")
    if isinstance(episode, bool) or not isinstance(episode, int) or not 1 <= episode <= 32767:
        raise ValueError(f"episode must be an integer in 1..32767, got {episode!r}")
    return mal_id, episode


def frames_dataframe(
    frames: Iterable[SampledFrame], *, mal_id: int, episode: int, source_sha256: str, jpeg_quality: int = 90
) -> pl.DataFrame:
    """The shard's rows, typed exactly as `schemas.FRAMES` (columns in that order)."""
    mal_id, episode = _check_ids(mal_id, episode)
    frames = list(frames)
    if not frames:
        raise ValueError(f"no frames to write for MAL id {mal_id} episode {episode}")
    if not isinstance(source_sha256, str) or not source_sha256:
        raise ValueError("source_sha256 must be a non-empty string")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    stamps = [f.timestamp_s for f in frames]
    if any(b <= a for a, b in pairwise(stamps)):
        raise ValueError(f"frame timestamps for MAL id {mal_id} are not strictly increasing: {stamps}")
    data = {
        "mal_id": [mal_id] * len(frames),
        "episode": [episode] * len(frames),
        "frame_index": [f.frame_index for f in frames],
        "timestamp_s": [float(f.timestamp_s) for f in frames],
        "width": [f.size[0] for f in frames],
        "height": [f.size[1] for f in frames],
        # JPEG bytes the decoder already made at this quality are stored as they are
        "image": [
            f.jpeg
            if f.jpeg is not None and f.jpeg_quality == jpeg_quality
            else encode_jpeg(f.rgb(), jpeg_quality)
            for f in frames
        ],
        "source_sha256": [source_sha256] * len(frames),
    }
    return pl.DataFrame(data, schema=FRAMES)


def write_frame_shard(
    frames: Iterable[SampledFrame],
    *,
    mal_id: int,
    episode: int,
    source_sha256: str,
    dest: Path,
    jpeg_quality: int = 90,
) -> ShardInfo:
    """Write one shard atomically; returns what was written."""
    df = frames_dataframe(
        frames, mal_id=mal_id, episode=episode, source_sha256=source_sha256, jpeg_quality=jpeg_quality
    )
    dest = Path(dest)
    sweep_stale_temps(dest)  # leftovers of a writer killed earlier (never a live writer's temp)
    with atomic_path(dest, suffix=".parquet.tmp") as tmp:
        df.write_parquet(tmp, compression=SHARD_COMPRESSION, row_group_size=df.height, statistics=True)
    return ShardInfo(
        path=dest,
        num_frames=df.height,
        bytes=dest.stat().st_size,
        width=int(df["width"][0]),
        height=int(df["height"][0]),
    )


def read_frame_shard(path: Path) -> pl.DataFrame:
    """Read a shard and check it has exactly the FRAMES schema (MediaError naming the file otherwise)."""
    path = Path(path)
    try:
        df = pl.read_parquet(path)
    except Exception as e:
        raise MediaError(f"{path}: not a readable frame shard ({type(e).__name__}: {e})", path=path) from None
    got = dict(df.schema)
    if got != FRAMES or list(got) != list(FRAMES):
        raise MediaError(f"{path}: frame shard schema {got} differs from schemas.FRAMES", path=path)
    return df


def decode_frames(df: pl.DataFrame) -> list[Image.Image]:
    """The shard's JPEG images as RGB PIL images, in row order."""
    out = []
    for i, data in enumerate(df["image"].to_list()):
        try:
            img = Image.open(io.BytesIO(data))
            img.load()
        except Exception as e:
            raise MediaError(f"frame row {i}: image bytes are not a readable JPEG ({e})") from None
        out.append(img.convert("RGB"))
    return out


def extract_frame_shard(
    video_path: Path,
    *,
    mal_id: int,
    episode: int = 1,
    dest: Path,
    cfg: SamplingConfig | None = None,
    probe: VideoProbe | None = None,
    jpeg_quality: int = 90,
) -> ShardInfo:
    """Probe → sample → write: the frame shard of one episode (used by the Dagster asset).

    `probe`: a probe of `video_path` already made, e.g. `VideoProbe.from_metadata(<episodes/<mal_id>/probe.json>)`.
    When it has a `sha256` and its `size_bytes` still matches the file, it is used as is: the file is not
    probed or hashed again. Otherwise (no probe, no sha256, or the file's size changed since) the file is
    probed with ffprobe and hashed.
    """
    cfg = cfg or SamplingConfig()
    if cfg.timeout_s is not None:
        # the decoder workers start while the file is probed / hashed (exact mode: one per core)
        prestart_worker(decode_split(cfg.mode, cfg.num_frames, cfg.workers)[0])
    if probe is not None and probe.sha256:
        try:
            size = Path(video_path).stat().st_size
        except OSError:
            size = None  # missing file: sample_frames raises a clear MediaError naming it
        if size is not None and size != probe.size_bytes:
            probe = None  # the file changed since it was probed: its recorded sha256 is stale
    if probe is None or not probe.sha256:
        probe = probe_video(video_path)
    frames = sample_frames(video_path, cfg, probe, jpeg_quality=jpeg_quality)
    if not frames:
        raise MediaError(f"{video_path}: no frames could be sampled", path=video_path)
    return write_frame_shard(
        frames,
        mal_id=mal_id,
        episode=episode,
        source_sha256=probe.sha256,
        dest=dest,
        jpeg_quality=jpeg_quality,
    )
