"""Data contracts on the split tables. Each check returns CheckOutcome(ok, detail); it never raises on bad data."""

from __future__ import annotations

from pathlib import PurePosixPath, PureWindowsPath
from typing import NamedTuple

import polars as pl

from anime_pipeline.schemas import SAMPLES

_SHOW = 10  # how many offending ids a detail names


class CheckOutcome(NamedTuple):
    ok: bool
    detail: str


def _ids(ids: list) -> str:
    ids = sorted(i for i in ids if i is not None)
    return ", ".join(map(str, ids[:_SHOW])) + (f" (+{len(ids) - _SHOW} more)" if len(ids) > _SHOW else "")


def check_split_disjoint(train: pl.DataFrame, val: pl.DataFrame) -> CheckOutcome:
    """No MAL id may appear in both train and val (the split is by title)."""
    overlap = set(train["mal_id"].drop_nulls().to_list()) & set(val["mal_id"].drop_nulls().to_list())
    if overlap:
        return CheckOutcome(False, f"{len(overlap)} title(s) in both train and val: {_ids(list(overlap))}")
    return CheckOutcome(True, f"disjoint: {train.height} train rows, {val.height} val rows, no shared mal_id")


def _path_problem(path: str | None) -> str | None:
    if path is None or not path.strip():
        return "empty"
    if "\x00" in path:
        return "NUL byte"
    if (
        PurePosixPath(path).is_absolute()
        or PureWindowsPath(path).is_absolute()
        or PureWindowsPath(path).drive
    ):
        return "absolute"
    if ".." in path.replace("\\", "/").split("/"):
        return "contains '..'"
    return None


def check_samples_well_formed(df: pl.DataFrame) -> CheckOutcome:
    """Every sample row can be turned into a chat example.

    Requires the SAMPLES columns; mal_id non-null and unique; split in {train, val}; non-blank prompt and
    synopsis; num_frames > 0; frames_path relative (to the data dir) without `..`.
    """
    missing = [c for c in SAMPLES if c not in df.columns]
    if missing:
        return CheckOutcome(False, f"missing columns: {missing}")
    problems: list[str] = []

    def flag(mask: pl.Expr, what: str) -> None:
        bad = df.filter(mask)
        if bad.height:
            problems.append(f"{bad.height} row(s) {what}: {_ids(bad['mal_id'].to_list())}")

    null_ids = df["mal_id"].null_count()
    if null_ids:
        problems.append(f"{null_ids} row(s) without mal_id")
    flag(pl.col("mal_id").is_duplicated() & pl.col("mal_id").is_not_null(), "with a duplicate mal_id")
    flag(~pl.col("split").is_in(["train", "val"]).fill_null(False), "with split not in {train, val}")
    flag(pl.col("prompt").str.strip_chars().str.len_chars().fill_null(0) == 0, "with an empty prompt")
    flag(pl.col("synopsis").str.strip_chars().str.len_chars().fill_null(0) == 0, "with an empty synopsis")
    flag(~(pl.col("num_frames") > 0).fill_null(False), "with num_frames <= 0 or null")

    bad_paths = [
        (mal_id, reason)
        for mal_id, path in zip(df["mal_id"].to_list(), df["frames_path"].to_list())
        if (reason := _path_problem(path)) is not None
    ]
    if bad_paths:
        shown = ", ".join(f"{i} ({r})" for i, r in bad_paths[:_SHOW])
        problems.append(f"{len(bad_paths)} row(s) with an unsafe frames_path: {shown}")

    if problems:
        return CheckOutcome(False, "; ".join(problems))
    return CheckOutcome(True, f"{df.height} well-formed sample(s)")
