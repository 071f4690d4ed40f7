"""Table schemas shared by the stages. One MAL id (`mal_id: Int64`) is the join key everywhere."""

from __future__ import annotations

import polars as pl
from polars.datatypes import DataType, DataTypeClass

# A table schema: column name -> polars dtype (an instance such as pl.List(pl.String) or a class such as pl.Int64).
Schema = dict[str, DataType | DataTypeClass]

TITLES: Schema = {
    "mal_id": pl.Int64,
    "name": pl.String,  # romaji / main name
    "name_english": pl.String,
    "name_native": pl.String,
    "name_russian": pl.String,
    "kind": pl.String,  # "tv"
    "status": pl.String,  # "released"
    "rating": pl.String,  # normalised: g, pg, pg_13, r, r_plus, rx, none
    "score": pl.Float64,
    "popularity": pl.Int64,  # rank (1 = most popular) where known
    "episodes": pl.Int32,
    "episode_duration_min": pl.Float64,
    "genres": pl.List(pl.String),
    "main_characters": pl.List(pl.String),
    "catalog": pl.String,  # "shikimori" | "anilist" | "demo"
    "catalog_id": pl.String,
    "description_ru": pl.String,  # Shikimori's description (cleaned text), extra column
}

SYNOPSES: Schema = {
    "mal_id": pl.Int64,
    "synopsis": pl.String,  # cleaned: attribution stripped, whitespace normalised
    "synopsis_ru": pl.String,
    "source": pl.String,  # "mal" | "jikan" | "anilist" | "demo"
    "url": pl.String,
    "fetched_at": pl.Datetime("us", "UTC"),
    "content_sha256": pl.String,
}

REJECTED: Schema = {
    "mal_id": pl.Int64,  # null when the title had none
    "name": pl.String,
    "stage": pl.String,  # "titles" | "synopses" | "episodes" | "frames"
    "reason": pl.String,
}

FRAMES: Schema = {
    "mal_id": pl.Int64,
    "episode": pl.Int16,
    "frame_index": pl.Int32,
    "timestamp_s": pl.Float64,
    "width": pl.Int32,
    "height": pl.Int32,
    "image": pl.Binary,  # JPEG
    "source_sha256": pl.String,
}

SAMPLES: Schema = {
    "mal_id": pl.Int64,
    "split": pl.String,  # "train" | "val"
    "name": pl.String,
    "prompt": pl.String,
    "synopsis": pl.String,
    "frames_path": pl.String,  # shard path, relative to the data dir
    "num_frames": pl.Int32,
    "duration_s": pl.Float64,
}


def empty(schema: dict) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


def conform(df: pl.DataFrame, schema: dict) -> pl.DataFrame:
    """Select and cast the schema's columns in order (missing columns become nulls)."""
    if df.height == 0:  # (pl.lit on a frame without rows/columns would make one row of nulls)
        return empty(schema)
    cols = []
    for name, dtype in schema.items():
        if name in df.columns:
            cols.append(pl.col(name).cast(dtype))
        else:
            cols.append(pl.lit(None, dtype=dtype).alias(name))
    return df.select(cols)
