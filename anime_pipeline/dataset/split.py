"""Train/validation split by title, sample building, split statistics and lineage hashes.

The split is decided per MAL id by a salted sha256, never by position or random state, so:
- the same title always lands on the same side (train and val can never overlap);
- adding or removing titles never moves another title across the line.

A title that cannot become a sample is listed in `excluded` with its reason; when the media stage
failed for it, the reason carries the failure that stage recorded (`error.json`, see
`read_media_failures`), so the split shows which titles were left out and why.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from anime_pipeline.dataset.prompt import build_prompt
from anime_pipeline.inventory import shard_path
from anime_pipeline.paths import atomic_path, file_sha256
from anime_pipeline.schemas import SAMPLES, conform, empty

DEFAULT_SALT = "anime_pipeline-v1"
DEFAULT_VAL_FRACTION = 0.05

TRAIN = "train"
VAL = "val"

EXCLUDED = {"mal_id": pl.Int64, "name": pl.String, "reason": pl.String}
FAILURES = {"mal_id": pl.Int64, "stage": pl.String, "error": pl.String}
ERROR_FILE = "error.json"
MAX_ERROR_CHARS = 300
SHARDS = {"mal_id": pl.Int64, "frames_path": pl.String, "num_frames": pl.Int32, "duration_s": pl.Float64}

REASON_NO_SYNOPSIS = "no synopsis"
REASON_NO_FRAMES = "no frame shard"


@dataclass(frozen=True)
class SplitResult:
    train: pl.DataFrame  # SAMPLES, split == "train", sorted by mal_id
    val: pl.DataFrame  # SAMPLES, split == "val", sorted by mal_id
    excluded: pl.DataFrame  # EXCLUDED: titles that could not become a sample, with the reason


def _unit_interval(mal_id: int, salt: str) -> float:
    digest = hashlib.sha256(f"{salt}:{int(mal_id)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)


def assign_split(mal_id: int, val_fraction: float = DEFAULT_VAL_FRACTION, salt: str = DEFAULT_SALT) -> str:
    """ "val" when sha256(salt:mal_id) mapped to [0, 1) is below `val_fraction`, else "train"."""
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be within [0, 1], got {val_fraction}")
    return VAL if _unit_interval(mal_id, salt) < val_fraction else TRAIN


def media_failure_paths(home: Path, mal_id: int) -> list[Path]:
    """Where the media assets record a failed title: `episodes/<id>/error.json` and next to the shard."""
    return [
        Path(home) / "episodes" / str(int(mal_id)) / ERROR_FILE,
        shard_path(home, mal_id).parent / ERROR_FILE,
    ]


def read_media_failures(home: Path, mal_ids: Iterable[int]) -> pl.DataFrame:
    """FAILURES rows (mal_id, stage, error) from the `error.json` records of these titles. A record that
    cannot be read is itself reported as the failure (never skipped)."""
    rows = []
    for mal_id in sorted({int(i) for i in mal_ids}):
        for path in media_failure_paths(home, mal_id):
            if not path.is_file():
                continue
            try:
                rec = json.loads(path.read_text(encoding="utf-8"))
                if not isinstance(rec, dict):
                    raise ValueError("not a JSON object")
            except (OSError, ValueError) as exc:
                rec = {"stage": path.parent.parent.name, "error": f"unreadable {path}: {exc}"}
            error = " ".join(str(rec.get("error") or "no error text recorded").split())
            if len(error) > MAX_ERROR_CHARS:
                error = error[: MAX_ERROR_CHARS - 1] + "…"
            rows.append({"mal_id": mal_id, "stage": str(rec.get("stage") or "media"), "error": error})
    return pl.DataFrame(rows, schema=FAILURES)


def _require_unique(df: pl.DataFrame, what: str) -> None:
    dupes = df.filter(pl.col("mal_id").is_duplicated())["mal_id"].unique().sort().to_list()
    if dupes:
        raise ValueError(f"{what}: duplicate mal_id values {dupes[:10]}{' ...' if len(dupes) > 10 else ''}")


def build_samples(
    titles: pl.DataFrame,
    synopses: pl.DataFrame,
    shards: pl.DataFrame,
    *,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    salt: str = DEFAULT_SALT,
    failures: pl.DataFrame | None = None,
) -> SplitResult:
    """Join titles × synopses × frame shards on mal_id and split by title hash.

    `titles` has the TITLES columns (mal_id, name, genres, main_characters at least), `synopses` the SYNOPSES
    columns (mal_id, synopsis), `shards` one row per title: mal_id, frames_path (relative to the data dir),
    num_frames, duration_s. A title without a non-blank synopsis or without a shard holding frames goes to
    `excluded` with its reason(s) joined by "; "; `failures` (FAILURES rows, `read_media_failures`) add
    what the media stage recorded to "no frame shard". Duplicate mal_ids in any input raise ValueError.
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be within [0, 1], got {val_fraction}")
    for df, what in ((titles, "titles"), (synopses, "synopses"), (shards, "shards")):
        if "mal_id" not in df.columns:
            raise ValueError(f"{what}: missing column mal_id")
        _require_unique(df.filter(pl.col("mal_id").is_not_null()), what)

    t = titles.filter(pl.col("mal_id").is_not_null()).select(
        pl.col("mal_id").cast(pl.Int64),
        pl.coalesce(*[pl.col(c) for c in ("name", "name_english", "name_native") if c in titles.columns])
        .cast(pl.String)
        .alias("name"),
        (pl.col("genres") if "genres" in titles.columns else pl.lit(None))
        .cast(pl.List(pl.String))
        .alias("genres"),
        (pl.col("main_characters") if "main_characters" in titles.columns else pl.lit(None))
        .cast(pl.List(pl.String))
        .alias("main_characters"),
    )
    s = synopses.select(
        pl.col("mal_id").cast(pl.Int64), pl.col("synopsis").cast(pl.String).str.strip_chars()
    ).filter(pl.col("mal_id").is_not_null() & (pl.col("synopsis").str.len_chars() > 0))
    f = conform(shards, SHARDS).filter(
        pl.col("mal_id").is_not_null() & pl.col("frames_path").is_not_null() & (pl.col("num_frames") > 0)
    )

    failed = (
        conform(failures, FAILURES)
        .filter(pl.col("mal_id").is_not_null())
        .group_by("mal_id", maintain_order=True)
        .agg(
            pl.concat_str(pl.col("stage"), pl.lit(" failed: "), pl.col("error"))
            .str.join("; ")
            .alias("failure")
        )
        if failures is not None and failures.height
        else pl.DataFrame(schema={"mal_id": pl.Int64, "failure": pl.String})
    )
    joined = (
        t.join(s, on="mal_id", how="left")
        .join(f, on="mal_id", how="left")
        .join(failed, on="mal_id", how="left")
        .sort("mal_id")
    )
    has_synopsis = pl.col("synopsis").is_not_null()
    has_frames = pl.col("frames_path").is_not_null()
    no_frames = (
        pl.when(pl.col("failure").is_not_null())
        .then(pl.lit(REASON_NO_FRAMES + " (") + pl.col("failure") + pl.lit(")"))
        .otherwise(pl.lit(REASON_NO_FRAMES))
    )

    excluded = joined.filter(~has_synopsis | ~has_frames).select(
        "mal_id",
        "name",
        pl.concat_str(
            pl.when(~has_synopsis).then(pl.lit(REASON_NO_SYNOPSIS)),
            pl.when(~has_frames).then(no_frames),
            separator="; ",
            ignore_nulls=True,
        ).alias("reason"),
    )
    kept = joined.filter(has_synopsis & has_frames)
    ids = kept["mal_id"].to_list()
    prompts = [
        build_prompt(g, c) for g, c in zip(kept["genres"].to_list(), kept["main_characters"].to_list())
    ]
    sides = [assign_split(i, val_fraction, salt) for i in ids]
    samples = conform(
        kept.with_columns(
            pl.Series("prompt", prompts, dtype=pl.String),
            pl.Series("split", sides, dtype=pl.String),
        ),
        SAMPLES,
    )
    return SplitResult(
        train=samples.filter(pl.col("split") == TRAIN),
        val=samples.filter(pl.col("split") == VAL),
        excluded=conform(excluded, EXCLUDED),
    )


def _summary(values: Iterable[float]) -> dict | None:
    arr = np.asarray(list(values), dtype=np.float64)
    if arr.size == 0:
        return None
    return {
        "min": float(arr.min()),
        "mean": float(arr.mean()),
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "max": float(arr.max()),
    }


def _side_stats(df: pl.DataFrame, tokenize: Callable[[str], int] | None) -> dict:
    texts = df["synopsis"].fill_null("").to_list() if df.height else []
    out = {
        "samples": df.height,
        "frames": int(df["num_frames"].sum() or 0) if df.height else 0,
        "synopsis_words": _summary(len(t.split()) for t in texts),
    }
    if tokenize is not None:
        out["synopsis_tokens"] = _summary(int(tokenize(t)) for t in texts)
    return out


def split_stats(train: pl.DataFrame, val: pl.DataFrame, tokenize: Callable[[str], int] | None = None) -> dict:
    """Counts per side and synopsis length summaries (min/mean/p50/p95/max; None for an empty side).

    `tokenize` maps a text to its token count (e.g. `lambda s: len(tok(s).input_ids)`); when given, each side
    also has "synopsis_tokens".
    """
    total = train.height + val.height
    return {
        "train": _side_stats(train, tokenize),
        "val": _side_stats(val, tokenize),
        "total_samples": total,
        "val_fraction_actual": (val.height / total) if total else None,
    }


def write_split(result: SplitResult, dest_dir: Path) -> dict[str, Path]:
    """Write `train.parquet` and `val.parquet` atomically under dest_dir; returns {"train": path, "val": path}."""
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for side, df in ((TRAIN, result.train), (VAL, result.val)):
        final = dest_dir / f"{side}.parquet"
        frame = conform(df, SAMPLES) if df.height else empty(SAMPLES)
        with atomic_path(final, suffix=".parquet") as tmp:
            frame.write_parquet(tmp)
        paths[side] = final
    return paths


def content_hash(paths: Iterable[Path]) -> str:
    """sha256 over the files' bytes, taken in sorted path order (the names themselves are not hashed).

    Each file contributes its own sha256, so file boundaries are unambiguous.
    """
    h = hashlib.sha256()
    for p in sorted(Path(x) for x in paths):
        h.update(bytes.fromhex(file_sha256(p)))
    return h.hexdigest()
