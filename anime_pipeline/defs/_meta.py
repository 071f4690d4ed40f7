"""Helpers that turn pure results into Dagster metadata (the only Dagster-specific formatting).

What a user sees in `dagster dev` is decided here:

- tables are `MetadataValue.table` with a `TableSchema` (the UI shows them inline, with "Show schema");
- every table asset carries `dagster/column_schema` and `dagster/row_count` (the catalog's "Columns" and
  "Rows");
- the UI shows a markdown value inline only when it is shorter than 1,000 characters (longer ones become
  "[Show Markdown]", a dialog at most 80 % of the window wide): previews are tables, images are small
  enough to be fully visible in that dialog and carry a caption naming what they show;
- numbers are rounded, with the unit in the name (`_s`, `_mb`, `_per_s`); one name keeps one meaning on
  every asset: `compute_s` is how long the step took, `video_duration_s` how long the video is.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import dagster as dg
import polars as pl
from polars.datatypes import DataTypeClass

# The UI renders markdown inline below this many characters (MetadataEntry.tsx in dagster-webserver).
INLINE_MARKDOWN_CHARS = 1000
# A contact sheet must fit the metadata dialog (80vw) on a 1280 px wide window, and the asset page's panel.
MAX_IMAGE_WIDTH_PX = 720
# Longest unbroken run of characters in a table cell (longer ones are cut so cells can wrap).
MAX_WORD_CHARS = 24
# Owners shown on every asset (the team that answers for the pipeline).
OWNERS = ["team:anime-dataset"]
# A polars dtype as schemas hold it: an instance (`pl.List(pl.String)`) or a bare class (`pl.Int64`);
# polars' own `PolarsDataType`, spelled from its public names.
DType: TypeAlias = "pl.DataType | DataTypeClass"


def asset_tags(stage: str, **extra: str) -> dict[str, str]:
    """Tags a team filters the catalog by: the pipeline, the stage, what the asset holds."""
    return {"pipeline": "anime_pipeline", "stage": stage, **extra}


def stage_asset(
    stage: str,
    *,
    schema: Mapping[str, DType] | None = None,
    extra_tags: dict[str, str] | None = None,
    **kwargs: Any,
):
    """`dg.asset` for one of the pipeline's assets: the stage is its group and tag, the team owns it, and a
    table asset's column schema shows before its first materialization."""
    return dg.asset(
        group_name=stage,
        owners=OWNERS,
        tags=asset_tags(stage, **(extra_tags or {})),
        metadata=asset_definition_metadata(schema) if schema is not None else kwargs.pop("metadata", None),
        **kwargs,
    )


def asset_definition_metadata(schema: Mapping[str, DType] | None = None) -> dict[str, Any]:
    """Definition-time metadata: the column schema, so "Columns" shows before the first materialization."""
    return {"dagster/column_schema": column_schema(schema)} if schema is not None else {}


# One description per column, shared by every table that has the column (one meaning per name).
COLUMN_DOCS: dict[str, str] = {
    "mal_id": "MyAnimeList id of the title: the join key from the catalog to the evaluation",
    "name": "Main (romaji) title",
    "name_english": "English title",
    "name_native": "Title in the original script",
    "name_russian": "Russian title (Shikimori)",
    "kind": "Catalog kind (tv)",
    "status": "Release status (released)",
    "rating": "Age rating, normalised: g, pg, pg_13, r, r_plus, rx, none",
    "score": "Catalog score (0-10)",
    "popularity": "Popularity rank (1 = most popular) where the catalog gives one",
    "episodes": "Number of episodes",
    "episode_duration_min": "Length of one episode, minutes",
    "genres": "Genres",
    "main_characters": "Main characters' names",
    "catalog": "Catalog the title came from: shikimori, anilist or demo",
    "catalog_id": "The title's id in that catalog",
    "description_ru": "Shikimori's Russian description, cleaned",
    "synopsis": "Human-written English synopsis, cleaned (attribution stripped, whitespace normalised)",
    "synopsis_ru": "Russian synopsis, where one exists",
    "source": "Where the synopsis came from: mal, jikan, anilist or demo",
    "url": "Page the synopsis was fetched from",
    "fetched_at": "When the synopsis was fetched (UTC)",
    "content_sha256": "SHA-256 of the cleaned synopsis (changes when the text changes)",
    "stage": "Stage that rejected the title",
    "reason": "Why the title was rejected",
    "episode": "Episode number (1)",
    "frame_index": "Index of the frame in the video",
    "timestamp_s": "Time of the frame in the video, seconds",
    "width": "Frame width, pixels",
    "height": "Frame height, pixels",
    "image": "The frame, JPEG bytes",
    "source_sha256": "SHA-256 of the episode file the frame was taken from",
    "split": "train or val",
    "prompt": "User prompt of the sample (genres and main characters)",
    "frames_path": "Frame shard of the title, relative to the data dir",
    "num_frames": "Frames in the title's shard",
    "duration_s": "Length of the episode video, seconds",
    "reference": "The human-written synopsis (the target)",
    "caption_base": "Caption generated by the base model",
    "caption_finetuned": "Caption generated by the fine-tuned adapter",
    "rouge_l_base": "ROUGE-L F1 of the base caption against the reference",
    "rouge_l_finetuned": "ROUGE-L F1 of the fine-tuned caption against the reference",
    "cider_base": "CIDEr of the base caption",
    "cider_finetuned": "CIDEr of the fine-tuned caption",
    "content_base": "The base caption names the right scene colours (demo only)",
    "content_finetuned": "The fine-tuned caption names the right scene colours (demo only)",
}


# Numbers -------------------------------------------------------------------------------------------
def rounded(x: float | None, digits: int = 4) -> float | None:
    """`x` to `digits` significant digits (integers-valued floats and None pass); NaN/inf become None."""
    if x is None:
        return None
    x = float(x)
    if not math.isfinite(x):
        return None
    if x == 0:
        return 0.0
    return round(x, max(0, digits - 1 - math.floor(math.log10(abs(x)))))


def mb(n_bytes: float | None) -> float | None:
    """Bytes as megabytes (10^6): two decimals, three significant digits below 1 MB (a 4 kB adapter is
    0.00412, not 0.0). The unit goes in the key (`size_mb`)."""
    if n_bytes is None:
        return None
    x = float(n_bytes) / 1e6
    return round(x, 2) if x >= 1 else rounded(x, 3)


def seconds(x: float) -> float:
    """Durations: 0.01 s resolution below a minute, 0.1 s above."""
    return round(float(x), 2 if x < 60 else 1)


def human_duration(s: float) -> str:
    """`75.3` → `1m15s`, `3725` → `1h02m05s`, `4.2` → `4.2s`."""
    s = max(0.0, float(s))
    if s < 60:
        return f"{s:.1f}s"
    m, sec = divmod(round(s), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{sec:02d}s" if h else f"{m}m{sec:02d}s"


# Tables --------------------------------------------------------------------------------------------
def dtype_name(dtype: DType) -> str:
    """A short type name for the UI: int64, float64, string, bool, binary, timestamp, list[string]."""
    if isinstance(dtype, pl.List):
        return f"list[{dtype_name(dtype.inner)}]"
    if isinstance(dtype, pl.Datetime):
        return "timestamp"
    name = str(dtype).lower()
    return {"utf8": "string", "boolean": "bool"}.get(name, name)


def column_schema(schema: Mapping[str, DType], docs: Mapping[str, str] | None = None) -> dg.TableSchema:
    """A Dagster `TableSchema` from a polars schema, each column described from `docs` (or COLUMN_DOCS)."""
    docs = COLUMN_DOCS if docs is None else {**COLUMN_DOCS, **docs}
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name=n, type=dtype_name(t), description=docs.get(n)) for n, t in schema.items()
        ]
    )


def table_metadata(
    schema: Mapping[str, DType],
    row_count: int,
    *,
    docs: Mapping[str, str] | None = None,
    partition_row_count: int | None = None,
) -> dict[str, Any]:
    """`dagster/column_schema` and `dagster/row_count` (and the partition's own count when partitioned)."""
    md: dict[str, Any] = {
        "dagster/column_schema": column_schema(schema, docs),
        "dagster/row_count": int(row_count),
    }
    if partition_row_count is not None:
        md["dagster/partition_row_count"] = int(partition_row_count)
    return md


def _cell(
    v: Any, max_chars: int, round_floats: bool = True, max_word: int | None = None
) -> str | int | float | bool | None:
    if v is None or isinstance(v, bool):
        return v
    if isinstance(v, int):
        return v
    if isinstance(v, float):
        if not math.isfinite(v):  # NaN is not JSON: the UI would show the row as invalid
            return None
        return rounded(v) if round_floats else v
    if isinstance(v, (bytes, bytearray, memoryview)):
        return f"<{len(bytes(v))} bytes>"
    if isinstance(v, (list, tuple)):
        v = ", ".join(map(str, v))
    max_word = max_word or MAX_WORD_CHARS
    words = [w if len(w) <= max_word else w[: max_word - 1] + "…" for w in str(v).split()]
    s = " ".join(words)  # a long unbroken "word" (a degenerate caption) would widen the column past the panel
    return s if len(s) <= max_chars else s[: max_chars - 1] + "…"


def records_table(
    rows: Iterable[Mapping[str, Any]],
    columns: Sequence[tuple[str, str] | tuple[str, str, str]],
    *,
    max_chars: int = 120,
    max_word: int | None = None,
) -> dg.MetadataValue:
    """A table from dict rows; `columns` are `(name, type[, description])` in display order. The metadata
    panel is narrow (about 430 px of a 1440 px window): keep tables to a few columns, with text in one."""
    schema = dg.TableSchema(
        columns=[
            dg.TableColumn(name=c[0], type=c[1], description=(c[2] if len(c) > 2 else None)) for c in columns
        ]
    )
    # floats are shown as given (callers round them, so a value reads the same here and in its scalar key)
    records = [
        dg.TableRecord(
            {c[0]: _cell(r.get(c[0]), max_chars, round_floats=False, max_word=max_word) for c in columns}
        )
        for r in rows
    ]
    return dg.MetadataValue.table(records=records, schema=schema)


def preview_table(
    df: pl.DataFrame, n: int = 5, max_chars: int = 80, docs: Mapping[str, str] | None = None
) -> dg.MetadataValue:
    """The first `n` rows as a table (long strings shortened, lists joined, floats rounded, bytes counted)."""
    head = df.head(n)
    schema = column_schema(head.schema, docs)
    rows = [{k: _cell(v, max_chars) for k, v in row.items()} for row in head.iter_rows(named=True)]
    return dg.MetadataValue.table(records=[dg.TableRecord(r) for r in rows], schema=schema)


def md_table(df: pl.DataFrame, n: int = 10, max_chars: int = 80) -> dg.MetadataValue:
    """A table preview of the first rows (kept under its old name: it is a `MetadataValue.table` now)."""
    return preview_table(df, n=n, max_chars=max_chars)


# Images --------------------------------------------------------------------------------------------
def image_md(png: bytes, caption: str) -> dg.MetadataValue:
    """An inline PNG with a caption line above it (what the image shows, e.g. the title's name)."""
    alt = " ".join(caption.replace("[", "(").replace("]", ")").split())
    return dg.MetadataValue.md(
        f"**{alt}**\n\n![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"
    )


def png_md(png: bytes, alt: str = "preview") -> dg.MetadataValue:
    """An inline PNG image for the asset's metadata panel (see `image_md`)."""
    return image_md(png, alt)


def frames_sheet(
    images: Sequence[bytes], timestamps_s: Sequence[float] | None = None, columns: int = 4
) -> bytes:
    """A contact sheet no wider than MAX_IMAGE_WIDTH_PX, with each frame's time under it."""
    from anime_pipeline.media.preview import contact_sheet

    cols = max(1, min(columns, len(images)))
    thumb = max(32, min(240, (MAX_IMAGE_WIDTH_PX - 2) // cols - 2))
    captions = [f"{t:.1f} s" for t in timestamps_s] if timestamps_s is not None else None
    return contact_sheet(list(images), columns=cols, thumb_width=thumb, captions=captions)


def title_label(mal_id: int, name: str | None) -> str:
    """`Cowboy Bebop (MAL 1)`: how a partition's title is shown."""
    return f"{name} (MAL {mal_id})" if name else f"MAL {mal_id}"


# Training and evaluation ---------------------------------------------------------------------------
def plain(md: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata as plain, JSON-friendly values (a Pipes report arrives as MetadataValue objects); a
    two-column `name | value` table (the hyperparameters) comes back as the dict it was built from, any
    other table as its list of rows."""
    out = {}
    for k, v in md.items():
        v = getattr(v, "value", v)
        if isinstance(v, dg.TableMetadataValue):
            if [c.name for c in v.schema.columns] == ["name", "value"]:
                v = {r.data["name"]: r.data.get("value") for r in v.records}
            else:
                v = [dict(r.data) for r in v.records]
        out[k] = v
    return out


# Flat keys of a training report (TrainResult.metadata()) that the tables below replace.
_TRAINING_TABLED = {
    "loss_start",
    "loss_end",
    "val_loss_before",
    "val_loss_after",
    "trainable_params",
    "frozen_params",
    "samples_per_s",
    "train_seconds",
    "peak_memory_bytes",
    "peak_memory_kind",
    "adapter_bytes",
    "adapter_path",
    "epochs",
    "steps",
    "total_steps",
    "samples_seen",
    "train_samples",
    "val_samples",
    "device",
    "dtype",
    "frames_dropped",
    "feature_cache_hits",
    "feature_cache_misses",
    "skipped_samples",
    "world_size",
    "resumed_from_step",
}


def training_metadata(reported: Mapping[str, Any], hyperparameters: Mapping[str, Any]) -> dict[str, Any]:
    """A training report (flat TrainResult.metadata(), possibly as MetadataValues) as a user reads it:
    a few rounded scalars with units in their names, and tables for losses, parameters and hyperparameters.

    Reported keys this does not know are kept as they are (rounded when they are floats)."""
    r = plain(reported)
    md: dict[str, Any] = {}
    for key, label in (
        ("steps", "steps"),
        ("total_steps", "total_steps"),
        ("train_samples", "train_samples"),
        ("val_samples", "val_samples"),
        ("frames_dropped", "frames_dropped"),
        ("skipped_samples", "skipped_samples"),
        ("world_size", "world_size"),
        ("resumed_from_step", "resumed_from_step"),
    ):
        if r.get(key) is not None:
            md[label] = int(r[key])
    if r.get("epochs") is not None:
        md["epochs"] = round(float(r["epochs"]), 2)
    if r.get("samples_per_s") is not None:
        md["samples_per_s"] = round(float(r["samples_per_s"]), 2)
    if r.get("train_seconds") is not None:
        md["train_compute_s"] = seconds(float(r["train_seconds"]))
    if r.get("peak_memory_bytes") is not None:
        kind = str(r.get("peak_memory_kind") or "")
        md["peak_memory_mb"] = mb(r["peak_memory_bytes"])
        md["peak_memory_kind"] = {
            "cuda_max_allocated": "GPU (max allocated)",
            "cpu_max_rss": "CPU (max RSS)",
        }.get(kind, kind)
    if r.get("device"):
        md["device"] = f"{r['device']} ({r.get('dtype')})" if r.get("dtype") else str(r["device"])
    if r.get("feature_cache_hits") or r.get("feature_cache_misses"):
        md["feature_cache_hits"] = int(r.get("feature_cache_hits") or 0)
        md["feature_cache_misses"] = int(r.get("feature_cache_misses") or 0)

    def loss(x):
        return None if x is None else round(float(x), 4)

    md["losses"] = records_table(
        [
            {"loss": "train", "before": loss(r.get("loss_start")), "after": loss(r.get("loss_end"))},
            {"loss": "val", "before": loss(r.get("val_loss_before")), "after": loss(r.get("val_loss_after"))},
        ],
        [
            (
                "loss",
                "string",
                "mean loss on the answer tokens; train: first and last optimizer step, val: the whole "
                "validation split before (the base model) and after training",
            ),
            ("before", "float"),
            ("after", "float"),
        ],
    )
    components = sorted(
        {
            k[len("params_") : -len("_trainable")]
            for k in r
            if k.startswith("params_") and k.endswith("_trainable")
        }
    )
    rows = []
    for comp in [c for c in components if c != "total"] + (["total"] if "total" in components else []):
        t, f = int(r.get(f"params_{comp}_trainable") or 0), int(r.get(f"params_{comp}_frozen") or 0)
        rows.append(
            {
                "component": comp,
                "trainable": t,
                "frozen": f,
                "trainable_pct": round(100 * t / (t + f), 3) if t + f else 0.0,
            }
        )
    if rows:
        md["parameters"] = records_table(
            rows,
            [("component", "string"), ("trainable", "int"), ("frozen", "int"), ("trainable_pct", "float")],
        )
    md["hyperparameters"] = hyperparameters_table(hyperparameters)
    for k, v in r.items():
        if k in _TRAINING_TABLED or k.startswith("params_") or k in md:
            continue
        md[k] = rounded(v) if isinstance(v, float) else v
    # the tables a reader looks for first, then the scalars, then the full list of settings
    first: dict[str, Any] = {k: md.pop(k) for k in ("losses", "parameters") if k in md}
    last = {"hyperparameters": md.pop("hyperparameters")}
    return {**first, **md, **last}


def hyperparameters_table(hyperparameters: Mapping[str, Any]) -> dg.MetadataValue:
    """Every training setting as a `name | value` row, values whole and of their JSON type (`plain` reads the
    dict back). Paths and the model (data and output locations, shown as their own keys) are left out."""
    rows = [
        {"name": k, "value": v if isinstance(v, (str, int, float, bool)) or v is None else str(v)}
        for k, v in hyperparameters.items()
        if k not in _NOT_HYPERPARAMETERS
    ]
    return records_table(rows, [("name", "string"), ("value", "string")], max_chars=10_000, max_word=10_000)


_NOT_HYPERPARAMETERS = {
    "base_model",
    "train_samples",
    "val_samples",
    "data_home",
    "output_dir",
    "feature_cache_dir",
}


def readable(md: Mapping[str, Any]) -> dict[str, Any]:
    """JSON values as tables a user can read inline: a dict becomes `name | value` rows, a list of dicts
    a table of its rows, an empty list "none"; floats are rounded. Other values pass unchanged."""
    out: dict[str, Any] = {}
    for k, raw in md.items():
        v = raw.value if isinstance(raw, (dg.JsonMetadataValue, dg.FloatMetadataValue)) else raw
        if isinstance(v, dict):
            out[k] = hyperparameters_table(v)
        elif isinstance(v, list) and not v:
            out[k] = "none"
        elif isinstance(v, list) and all(isinstance(x, dict) for x in v):
            cols = list(dict.fromkeys(c for x in v for c in x))
            out[k] = records_table(
                [
                    {
                        c: x.get(c) if isinstance(x.get(c), (str, int, float, bool)) else str(x.get(c))
                        for c in cols
                    }
                    for x in v
                ],
                [(c, "string") for c in cols],
            )
        elif isinstance(v, float):
            out[k] = rounded(v)
        else:
            out[k] = raw
    return out


_METRIC_LABELS = {
    "val_loss": "val loss ↓",
    "bleu": "BLEU ↑",
    "rouge_l": "ROUGE-L ↑",
    "cider": "CIDEr ↑",
    "content_score": "content ↑",
}


def eval_metadata(
    metrics: Mapping[str, Any], captions: pl.DataFrame | None, *, max_chars: int = 110
) -> dict[str, Any]:
    """Base vs fine-tuned as one table, the flat metrics rounded (for the plots and the checks), and one
    example row per validation title."""
    m = {k: float(v) for k, v in plain(metrics).items() if isinstance(getattr(v, "value", v), (int, float))}
    md: dict[str, Any] = {}
    rows = []
    for name, label in _METRIC_LABELS.items():
        base, tuned = m.get(f"{name}_base"), m.get(f"{name}_finetuned")
        if base is None and tuned is None:
            continue
        if base is not None:
            md[f"{name}_base"] = round(base, 4)
        if tuned is not None:
            md[f"{name}_finetuned"] = round(tuned, 4)
        change = round(tuned - base, 4) if base is not None and tuned is not None else None
        rows.append(
            {
                "metric": label,
                "base": md.get(f"{name}_base"),
                "fine_tuned": md.get(f"{name}_finetuned"),
                "change": change,
            }
        )
    md["metrics"] = records_table(
        rows,
        [
            (
                "metric",
                "string",
                "↓ lower is better, ↑ higher is better. val loss: mean loss on the answer tokens; "
                "ROUGE-L: F1; content (demo): share of captions naming the right scene colours",
            ),
            ("base", "float"),
            ("fine_tuned", "float"),
            ("change", "float", "fine_tuned - base"),
        ],
    )
    if captions is not None and captions.height:
        # three narrow columns: the panel is about 450 px wide at 1440 px and a text column takes half of it
        has_content = "content_finetuned" in captions.columns
        examples = []
        for row in captions.sort("mal_id").iter_rows(named=True):
            tuned_by = "fine-tuned"
            if has_content and row.get("content_finetuned") is not None:
                tuned_by += " ✓" if row["content_finetuned"] else " ✗"
            title = title_label(row["mal_id"], row.get("name"))
            for by, key in (
                ("reference", "reference"),
                ("base", "caption_base"),
                (tuned_by, "caption_finetuned"),
            ):
                examples.append({"title": title if by == "reference" else "", "by": by, "text": row.get(key)})
        md["examples"] = records_table(
            examples,
            [
                ("title", "string"),
                (
                    "by",
                    "string",
                    "reference (the synopsis), base or fine-tuned model; ✓/✗ (demo): the fine-tuned "
                    "caption names the right scene colours or not",
                ),
                ("text", "string"),
            ],
            max_chars=max_chars,
        )
    tables: dict[str, Any] = {k: md.pop(k) for k in ("metrics", "examples") if k in md}
    return {**tables, **md}  # the tables first: what a reader opens the asset for


def split_stats_table(stats: Mapping[str, Any]) -> dg.MetadataValue:
    """`split_stats(...)` as `stat | train | val` rows (samples, frames, synopsis length summaries)."""
    sides = {side: stats.get(side) or {} for side in ("train", "val")}
    rows = [{"stat": k, **{side: d.get(k) for side, d in sides.items()}} for k in ("samples", "frames")]
    for what in ("synopsis_words", "synopsis_tokens"):
        for k in ("min", "mean", "p50", "p95", "max"):
            vals = {side: (d.get(what) or {}).get(k) for side, d in sides.items()}
            if any(v is not None for v in vals.values()):
                rows.append(
                    {"stat": f"{what.split('_')[1]} {k}", **{s: rounded(v, 3) for s, v in vals.items()}}
                )
    return records_table(
        rows,
        [
            ("stat", "string", "synopsis length in words (tokens where measured)"),
            ("train", "float"),
            ("val", "float"),
        ],
    )


def title_name(titles_path: Path, mal_id: int) -> str | None:
    """The title's name from the catalog table (None when the table or the row is missing)."""
    titles_path = Path(titles_path)
    if not titles_path.exists():
        return None
    df = pl.scan_parquet(titles_path).filter(pl.col("mal_id") == int(mal_id)).select("name").head(1).collect()
    return df["name"][0] if df.height else None


# Files ---------------------------------------------------------------------------------------------
def dir_bytes(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def path_meta(path: str | Path) -> dg.MetadataValue:
    return dg.MetadataValue.path(str(path))
