"""Pure data contracts for frame tables (no Dagster): usable from asset checks and tests."""

from __future__ import annotations

from collections.abc import Mapping
from itertools import pairwise

import polars as pl

from anime_pipeline.schemas import FRAMES

_TOLERANCE_S = 1e-3


def _per_title(value, mal_id: int):
    if isinstance(value, Mapping):
        return value.get(mal_id)
    return value


def check_frames(
    df: pl.DataFrame,
    duration_s: float | Mapping[int, float] | None = None,
    expected: int | Mapping[int, int] | None = None,
) -> tuple[bool, str]:
    """Check a frames table (one shard or many titles).

    * exactly the `schemas.FRAMES` columns and types, no nulls, at least one row;
    * per (mal_id, episode): frame_index unique, timestamps strictly increasing in frame_index order,
      inside [0, duration] when `duration_s` is given (a number, or a mapping MAL id → seconds);
    * per title: the number of frames equals `expected` (a number, or a mapping MAL id → count);
    * width/height positive, image bytes start like a JPEG.
    Returns (ok, detail): a summary when ok, else every problem found ("; "-separated, the first 20).
    """
    problems: list[str] = []
    schema = dict(df.schema)
    if list(schema) != list(FRAMES) or schema != FRAMES:
        missing = [c for c in FRAMES if c not in schema]
        extra = [c for c in schema if c not in FRAMES]
        wrong = [f"{c}: {schema[c]} != {t}" for c, t in FRAMES.items() if c in schema and schema[c] != t]
        return False, f"schema differs from FRAMES (missing {missing}, extra {extra}, wrong types {wrong})"
    if df.height == 0:
        return False, "no frames"
    nulls = {c: n for c, n in zip(df.columns, df.null_count().row(0)) if n}
    if nulls:
        return False, f"null values in {nulls}"
    if (df["width"] <= 0).any() or (df["height"] <= 0).any():
        problems.append("non-positive width/height")
    bad_jpeg = df.filter(~pl.col("image").bin.starts_with(b"\xff\xd8")).height
    if bad_jpeg:
        problems.append(f"{bad_jpeg} image(s) are not JPEG")

    titles = 0
    for (mal_id, episode), group in df.group_by(["mal_id", "episode"], maintain_order=True):
        titles += 1
        group = group.sort("frame_index")
        name = f"MAL id {mal_id} episode {episode}"
        if group["frame_index"].n_unique() != group.height:
            problems.append(f"{name}: duplicate frame_index")
        ts = group["timestamp_s"].to_list()
        if any(b <= a for a, b in pairwise(ts)):
            problems.append(f"{name}: timestamps not strictly increasing")
        dur = _per_title(duration_s, mal_id) if duration_s is not None else None
        if min(ts) < 0 or (dur is not None and max(ts) > dur + _TOLERANCE_S):
            problems.append(
                f"{name}: timestamps outside [0, {dur if dur is not None else 'inf'}] "
                f"(min {min(ts):.3f}, max {max(ts):.3f})"
            )
        want = _per_title(expected, mal_id) if expected is not None else None
        if want is not None and group.height != want:
            problems.append(f"{name}: {group.height} frames, expected {want}")
    if isinstance(expected, Mapping):
        missing_titles = sorted(set(expected) - set(df["mal_id"].unique().to_list()))
        if missing_titles:
            problems.append(f"no frames for MAL id(s) {missing_titles}")
    if problems:
        more = f" (+{len(problems) - 20} more)" if len(problems) > 20 else ""
        return False, "; ".join(problems[:20]) + more
    return True, f"{titles} title(s), {df.height} frames"
