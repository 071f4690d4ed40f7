"""What the media stage has produced on disk: one row per title with a complete frame shard."""

from __future__ import annotations

import json
import re
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

SHARD_NAME = "part-0.parquet"
_DIR = re.compile(r"^mal_id=(\d+)$")
SHARDS_SCHEMA = {
    "mal_id": pl.Int64,
    "frames_path": pl.String,
    "num_frames": pl.Int32,
    "duration_s": pl.Float64,
}


def shard_path(home: Path, mal_id: int) -> Path:
    """Episode 1's frame shard of a title under the data home (the one layout: media.shards.shard_key)."""
    from anime_pipeline.media.shards import shard_key

    return Path(home) / shard_key(int(mal_id))


def scan_shards(home: Path, mal_ids: list[int] | None = None) -> pl.DataFrame:
    """Complete shards under `<home>/frames` (temp files from interrupted writes are never matched).

    `frames_path` is relative to `home`; `duration_s` comes from the episode's probe record.
    """
    home = Path(home)
    rows = []
    frames_dir = home / "frames"
    wanted = None if mal_ids is None else {int(i) for i in mal_ids}
    if frames_dir.exists():
        for d in sorted(frames_dir.iterdir()):
            m = _DIR.match(d.name)
            shard = d / SHARD_NAME
            if not m or not shard.is_file():
                continue
            mal_id = int(m.group(1))
            if wanted is not None and mal_id not in wanted:
                continue
            probe = home / "episodes" / str(mal_id) / "probe.json"
            duration = json.loads(probe.read_text()).get("duration_s") if probe.exists() else None
            rows.append(
                {
                    "mal_id": mal_id,
                    "frames_path": str(shard.relative_to(home)),
                    "num_frames": pq.ParquetFile(shard).metadata.num_rows,
                    "duration_s": duration,
                }
            )
    return pl.DataFrame(rows, schema=SHARDS_SCHEMA)
