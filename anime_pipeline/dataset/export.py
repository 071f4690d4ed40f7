"""Publishable dataset release: a self-contained Hugging Face dataset folder (Parquet shards + dataset card).

Layout under `dest`:

    README.md                                 dataset card; YAML `configs` maps the splits to the shards
    export_manifest.json                      per shard: input fingerprint, sha256, rows, mal_id range
    data/train-00000-of-00002.parquet         one row per title (see ARROW_SCHEMA), frames as HF Images
    data/validation-00000-of-00001.parquet

`datasets.load_dataset("parquet", data_dir=dest)` and `datasets.load_dataset(str(dest))` both load it offline
with `train` and `validation` splits; `frames` decodes to a list of PIL images because the HF features are
stored in each file's Parquet schema metadata (key `huggingface`).

Sharding. Rows are sorted by mal_id and cut into consecutive shards once the frame bytes (plus a fixed
per-row allowance) would pass `shard_target_bytes`. The assignment is a pure function of the input, so a
fresh export and an incremental one give the same files. Text is deliberately left out of the cut weight:
a synopsis edit (the common upstream change) never moves a boundary and rewrites exactly one shard. The
trade-off: when a title's *frames* change size, or a title is inserted in the middle of the id range,
the boundaries after it can shift and every later shard of that split is rewritten. New anime usually get
higher MAL ids, so additions mostly land in the last shard. (Content-defined boundaries — cutting where a
hash of the mal_id hits a pattern — would keep such changes local at the price of uneven shard sizes.)

Incremental re-export. Every row has a digest (all its fields, images by sha256); a shard's fingerprint is
the digest of its rows. A planned shard whose fingerprint is in the previous manifest and whose file still
has the recorded sha256 is left untouched (renamed, never rewritten, when only its `-of-N` name changed).
Any other shard is built into a temp file, and still kept untouched when its bytes equal the file already
there. README.md and the manifest are only replaced when their text changes. A reader should not read the
folder while an export runs (shards are replaced one by one).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from huggingface_hub import DatasetCard, DatasetCardData

from anime_pipeline.markdown import md_table as _md_table
from anime_pipeline.paths import atomic_path, file_sha256, within

FORMAT_VERSION = 1  # bump when ARROW_SCHEMA / HF_FEATURES / writer options change: forces a rewrite
DEFAULT_SHARD_TARGET_BYTES = 500_000_000
ROW_OVERHEAD_BYTES = (
    1024  # per-row allowance for the text fields in the cut weight (text itself is not counted)
)
ROW_GROUP_ROWS = 32
MANIFEST_NAME = "export_manifest.json"
DATA_DIR = "data"

# SAMPLES.split value -> HF split name
SPLIT_NAMES = {"train": "train", "val": "validation"}

IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
_STRING_LIST = pa.list_(pa.string())

ARROW_SCHEMA = pa.schema(
    [
        ("mal_id", pa.int64()),
        ("name", pa.string()),
        ("name_english", pa.string()),
        ("name_native", pa.string()),
        ("name_russian", pa.string()),
        ("rating", pa.string()),
        ("genres", _STRING_LIST),
        ("main_characters", _STRING_LIST),
        ("catalog", pa.string()),
        ("prompt", pa.string()),
        ("synopsis", pa.string()),
        ("synopsis_ru", pa.string()),
        ("synopsis_source", pa.string()),
        ("synopsis_url", pa.string()),
        ("duration_s", pa.float64()),
        ("frame_timestamps_s", pa.list_(pa.float64())),
        ("frames", pa.list_(IMAGE_STRUCT)),
    ]
)

_V = {"string": {"dtype": "string", "_type": "Value"}}
# "Sequence" is understood by datasets 3.x and (as List) by 4.x/5.x.
HF_FEATURES = {
    "mal_id": {"dtype": "int64", "_type": "Value"},
    "name": _V["string"],
    "name_english": _V["string"],
    "name_native": _V["string"],
    "name_russian": _V["string"],
    "rating": _V["string"],
    "genres": {"feature": _V["string"], "_type": "Sequence"},
    "main_characters": {"feature": _V["string"], "_type": "Sequence"},
    "catalog": _V["string"],
    "prompt": _V["string"],
    "synopsis": _V["string"],
    "synopsis_ru": _V["string"],
    "synopsis_source": _V["string"],
    "synopsis_url": _V["string"],
    "duration_s": {"dtype": "float64", "_type": "Value"},
    "frame_timestamps_s": {"feature": {"dtype": "float64", "_type": "Value"}, "_type": "Sequence"},
    "frames": {"feature": {"_type": "Image"}, "_type": "Sequence"},
}
SCHEMA_WITH_FEATURES = ARROW_SCHEMA.with_metadata(
    {"huggingface": json.dumps({"info": {"features": HF_FEATURES}})}
)

_TITLE_FIELDS = (
    "name_english",
    "name_native",
    "name_russian",
    "rating",
    "genres",
    "main_characters",
    "catalog",
)
_SHARD_RE = re.compile(r"^(?P<split>[a-z]+)-(?P<idx>\d{5})-of-(?P<n>\d{5})\.parquet$")
_TMP_PREFIX = ".export-"  # rename holds; shard temps are atomic_path's `.<shard name>.<random>.parquet`
_SHARD_TEMP_GLOB = ".*-of-*.parquet.*.parquet"


class _SameBytes(Exception):
    """Raised inside `atomic_path` to drop a rebuilt shard whose bytes equal the file already there."""


class ExportError(RuntimeError):
    """The inputs cannot make a consistent release (missing frames, unknown titles, ...)."""


@dataclass(frozen=True)
class ExportResult:
    paths: list[Path]  # every file of the release: README.md, manifest, shards (sorted)
    rows_per_split: dict[str, int]  # HF split name -> rows
    shards_written: list[str]  # shard paths (relative to dest) whose bytes were (re)written
    shards_unchanged: list[str]  # shard paths left untouched (same name, same bytes)
    content_hash: str  # sha256 over README.md + shards (relative path and sha256 of each)
    shards_renamed: list[str] = field(default_factory=list)  # untouched bytes under a new `-of-N` name
    shards_removed: list[str] = field(default_factory=list)  # stale shards deleted


# ---------------------------------------------------------------------------------------------------- rows


@dataclass
class _PlannedRow:
    mal_id: int
    split: str
    text: dict[str, Any]  # every column except frames
    frames_path: str
    frame_bytes: int
    digest: str


def _read_frames(data_home: Path, frames_path: str, mal_id: int) -> pl.DataFrame:
    try:
        path = within(data_home, frames_path)
    except ValueError as exc:
        raise ExportError(f"mal_id {mal_id}: frames_path {frames_path!r} is outside the data dir") from exc
    if not path.is_file():
        raise ExportError(f"mal_id {mal_id}: frame shard {path} does not exist")
    frames = (
        pl.scan_parquet(path, hive_partitioning=False)
        .filter(pl.col("mal_id") == mal_id)
        .select("frame_index", "timestamp_s", "image")
        .sort("frame_index")
        .collect()
    )
    if frames.height == 0:
        raise ExportError(f"mal_id {mal_id}: no frames in {path}")
    return frames


def _frame_list(mal_id: int, frames: pl.DataFrame) -> list[dict]:
    return [
        {"bytes": img, "path": f"{mal_id}_{idx:05d}.jpg"}
        for idx, img in zip(frames["frame_index"].to_list(), frames["image"].to_list())
    ]


def _row_digest(text: dict[str, Any], frames: list[dict]) -> str:
    canon = dict(text, frames=[[f["path"], hashlib.sha256(f["bytes"]).hexdigest()] for f in frames])
    return hashlib.sha256(json.dumps(canon, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def _index(df: pl.DataFrame, what: str) -> dict[int, dict]:
    dupes = df.filter(pl.col("mal_id").is_duplicated())["mal_id"].unique().to_list()
    if dupes:
        raise ExportError(f"{what}: duplicate mal_id {sorted(dupes)[:10]}")
    return {row["mal_id"]: row for row in df.iter_rows(named=True)}


def _plan_rows(
    samples: pl.DataFrame, split: str, titles: dict[int, dict], synopses: dict[int, dict], data_home: Path
) -> list[_PlannedRow]:
    rows = []
    for s in samples.sort("mal_id").iter_rows(named=True):
        mal_id = s["mal_id"]
        t = titles.get(mal_id)
        if t is None:
            raise ExportError(f"mal_id {mal_id} is in the {split} split but not in titles")
        syn = synopses.get(mal_id, {})
        frames = _read_frames(data_home, s["frames_path"], mal_id)
        text = {
            "mal_id": mal_id,
            "name": s.get("name") or t.get("name"),
            **{k: t.get(k) for k in _TITLE_FIELDS},
            "prompt": s["prompt"],
            "synopsis": s["synopsis"],
            "synopsis_ru": syn.get("synopsis_ru"),
            "synopsis_source": syn.get("source"),
            "synopsis_url": syn.get("url"),
            "duration_s": s.get("duration_s"),
            "frame_timestamps_s": frames["timestamp_s"].to_list(),
        }
        frame_list = _frame_list(mal_id, frames)
        rows.append(
            _PlannedRow(
                mal_id=mal_id,
                split=split,
                text=text,
                frames_path=s["frames_path"],
                frame_bytes=sum(len(f["bytes"]) for f in frame_list),
                digest=_row_digest(text, frame_list),
            )
        )
    return rows


def cut_shards(weights: list[int], target_bytes: int) -> list[tuple[int, int]]:
    """Half-open [start, end) ranges over rows in order; a new shard starts when the next row would pass the
    target. Every shard holds at least one row; no rows gives one empty shard (so the split still exists)."""
    if target_bytes <= 0:
        raise ValueError("shard_target_bytes must be positive")
    cuts: list[tuple[int, int]] = []
    start, acc = 0, 0
    for i, w in enumerate(weights):
        if i > start and acc + w > target_bytes:
            cuts.append((start, i))
            start, acc = i, 0
        acc += w
    cuts.append((start, len(weights)))
    return cuts


def _fingerprint(split: str, rows: list[_PlannedRow]) -> str:
    h = hashlib.sha256(f"anime_pipeline-export-v{FORMAT_VERSION}\n{split}\n".encode())
    for r in rows:
        h.update(f"{r.digest}\n".encode())
    return h.hexdigest()


@dataclass
class _PlannedShard:
    relpath: str
    split: str
    rows: list[_PlannedRow]
    fingerprint: str


def _build_table(shard: _PlannedShard, data_home: Path) -> pa.Table:
    records = []
    for r in shard.rows:
        frames = _frame_list(r.mal_id, _read_frames(data_home, r.frames_path, r.mal_id))
        if _row_digest(r.text, frames) != r.digest:
            raise ExportError(f"mal_id {r.mal_id}: frames changed during the export; run it again")
        records.append(dict(r.text, frames=frames))
    return pa.Table.from_pylist(records, schema=SCHEMA_WITH_FEATURES)


def _write_parquet(table: pa.Table, path: Path) -> None:
    pq.write_table(
        table,
        path,
        compression="zstd",
        row_group_size=ROW_GROUP_ROWS,
        write_page_index=True,
        use_content_defined_chunking=True,  # lets the Hub's Xet storage deduplicate across revisions
    )


# ---------------------------------------------------------------------------------------------------- card


def _size_category(n: int) -> str:
    for limit, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if n < limit:
            return label
    return "1M<n<10M"


def _counts_table(counter: Counter, label: str) -> str:
    return _md_table(
        [label, "titles"], [[k or "unknown", v] for k, v in sorted(counter.items(), key=lambda x: str(x[0]))]
    )


def render_dataset_card(
    planned: dict[str, list[_PlannedRow]],
    *,
    versions: Mapping[str, Any],
    pretty_name: str,
    sampling_description: str | None,
    filters_description: str | None,
) -> str:
    all_rows = [r for rows in planned.values() for r in rows]
    n_total = len(all_rows)
    card_data = DatasetCardData(
        pretty_name=pretty_name,
        license="other",
        license_name="third-party-content",
        task_categories=["video-text-to-text", "image-to-text"],
        language=["en", "ru"],
        tags=["anime", "video-captioning", "synopsis", "anime_pipeline"],
        size_categories=[_size_category(n_total)],
        configs=[
            {
                "config_name": "default",
                "default": True,
                "data_files": [{"split": hf, "path": f"{DATA_DIR}/{hf}-*.parquet"} for hf in planned],
            }
        ],
    )
    counts = _md_table(
        ["split", "titles (rows)", "frames"],
        [
            [hf, len(rows), sum(len(r.text["frame_timestamps_s"]) for r in rows)]
            for hf, rows in planned.items()
        ]
        + [["total", n_total, sum(len(r.text["frame_timestamps_s"]) for r in all_rows)]],
    )
    frame_counts = [len(r.text["frame_timestamps_s"]) for r in all_rows]
    if not frame_counts:
        frames_line = "No titles."
    elif min(frame_counts) == max(frame_counts):
        frames_line = f"{frame_counts[0]} frames per title."
    else:
        mean = sum(frame_counts) / len(frame_counts)
        frames_line = f"{min(frame_counts)}–{max(frame_counts)} frames per title (mean {mean:.1f})."
    synopsis_sources = Counter(r.text["synopsis_source"] for r in all_rows)
    catalogs = Counter(r.text["catalog"] for r in all_rows)
    fields = _md_table(
        ["field", "source"],
        [
            ["mal_id", "MyAnimeList id, the join key of every table"],
            [
                "name, name_english, name_native, name_russian, rating, genres, main_characters",
                "the catalog record (`catalog`: Shikimori or AniList; `demo` for synthetic titles)",
            ],
            [
                "prompt",
                "generated from genres and main characters (no information that only the video holds)",
            ],
            [
                "synopsis",
                "human-written synopsis (`synopsis_source`: MyAnimeList page, Jikan, AniList, or demo), "
                "attribution lines stripped and whitespace normalised; `synopsis_url` points to it",
            ],
            ["synopsis_ru", "Shikimori's Russian description, where available"],
            ["duration_s", "duration of the first episode's video"],
            [
                "frames, frame_timestamps_s",
                "JPEG frames sampled from the first episode's video, with their times",
            ],
        ],
    )
    versions_table = (
        _md_table(["", "version"], [[k, v] for k, v in versions.items()]) if versions else "Not recorded."
    )
    sampling = sampling_description or (
        "Frames are sampled from the first episode of each title; `frame_timestamps_s` gives the time of every "
        "frame in seconds from the start of the episode."
    )
    filters = filters_description or (
        "A title is included when the catalog lists it, a synopsis was found and cleaned, and frames could be "
        "extracted from its first episode; titles failing any step are left out (the pipeline records why)."
    )
    split_rule = (
        "Splits are by title: a salted sha256 of the MAL id decides train or validation, so no title is in both "
        "and adding titles never moves another title across splits."
    )
    sections = [
        f"# {pretty_name}",
        "## Purpose\n\nVideo captioning research: each row pairs frames from the first episode of an anime with "
        "the human-written synopsis of the series, plus catalog metadata and a ready-made prompt. It was "
        "built to fine-tune and evaluate small video-language models on describing an episode from its frames.",
        '## Loading\n\n```python\nfrom datasets import load_dataset\n\nds = load_dataset("parquet", '
        'data_dir="path/to/this/folder")  # or load_dataset("path/to/this/folder")\n'
        'ds["train"][0]["frames"][0]  # PIL.Image\n```',
        f"## Splits\n\n{counts}\n\n{split_rule}",
        f"## Collection\n\n{fields}\n\n**Sampling.** {sampling} {frames_line}\n\n**Filters.** {filters}",
        "## Licence and provenance\n\n"
        "The licence is `other`: this dataset bundles third-party content and grants no rights to it.\n\n"
        "- Synopses belong to their authors and the sites that publish them (MyAnimeList, AniList, Shikimori); "
        "`synopsis_source` and `synopsis_url` name the source of each one.\n"
        "- Video frames remain the property of their rights holders; they are included as low-resolution "
        "samples for research on video captioning.\n"
        + (
            "- Titles from the `demo` catalog are synthetic (generated colour scenes and template synopses) and "
            "carry no third-party rights.\n"
            if "demo" in catalogs or "demo" in synopsis_sources
            else ""
        )
        + "\nUse it for research only, and remove any row on request of a rights holder.\n\n"
        "Synopsis sources:\n\n"
        + _counts_table(synopsis_sources, "synopsis_source")
        + "\n\nCatalog sources:\n\n"
        + _counts_table(catalogs, "catalog"),
        f"## Versions\n\n{versions_table}",
    ]
    card = DatasetCard(f"---\n{card_data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")
    return str(card)


# ---------------------------------------------------------------------------------------------------- export


def _load_manifest(dest: Path) -> dict[str, dict]:
    try:
        data = json.loads((dest / MANIFEST_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format_version") != FORMAT_VERSION:
        return {}
    shards = data.get("shards")
    return shards if isinstance(shards, dict) else {}


def _write_text_if_changed(path: Path, text: str) -> bool:
    try:
        if path.read_text(encoding="utf-8") == text:
            return False
    except OSError:
        pass
    with atomic_path(path, suffix=path.suffix) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return True


def export_dataset(
    train: pl.DataFrame,
    val: pl.DataFrame,
    titles: pl.DataFrame,
    synopses: pl.DataFrame,
    data_home: Path,
    dest: Path,
    *,
    shard_target_bytes: int = DEFAULT_SHARD_TARGET_BYTES,
    versions: Mapping[str, Any] | None = None,
    pretty_name: str = "Anime first episodes with synopses",
    sampling_description: str | None = None,
    filters_description: str | None = None,
) -> ExportResult:
    """Write (or incrementally update) the release folder `dest`; see the module docstring.

    `train`/`val` have the SAMPLES columns, `titles` TITLES, `synopses` SYNOPSES; frames are read from
    `data_home / frames_path` (FRAMES schema). `versions` (e.g. data_version, code_version, git_commit) go in
    the card. Raises ExportError when a sample's title or frames cannot be found.
    """
    data_home, dest = Path(data_home), Path(dest)
    versions = dict(versions or {})
    title_idx = _index(titles, "titles")
    synopsis_idx = _index(synopses, "synopses")
    overlap = set(train["mal_id"].to_list()) & set(val["mal_id"].to_list())
    if overlap:
        raise ExportError(f"train and val share titles: {sorted(overlap)[:10]}")

    planned_rows = {
        SPLIT_NAMES["train"]: _plan_rows(train, "train", title_idx, synopsis_idx, data_home),
        SPLIT_NAMES["val"]: _plan_rows(val, "val", title_idx, synopsis_idx, data_home),
    }
    shards: list[_PlannedShard] = []
    for hf_split, rows in planned_rows.items():
        cuts = cut_shards([r.frame_bytes + ROW_OVERHEAD_BYTES for r in rows], shard_target_bytes)
        for i, (a, b) in enumerate(cuts):
            relpath = f"{DATA_DIR}/{hf_split}-{i:05d}-of-{len(cuts):05d}.parquet"
            shards.append(_PlannedShard(relpath, hf_split, rows[a:b], _fingerprint(hf_split, rows[a:b])))

    data_dir = dest / DATA_DIR
    data_dir.mkdir(parents=True, exist_ok=True)
    for pattern in (f"{_TMP_PREFIX}*", _SHARD_TEMP_GLOB):  # from an interrupted run of ours
        for leftover in data_dir.glob(pattern):
            leftover.unlink(missing_ok=True)
    previous = _load_manifest(dest)

    # 1. Shards whose content already exists on disk (same fingerprint, file bytes still as recorded).
    by_fingerprint = {
        info.get("fingerprint"): rel
        for rel, info in previous.items()
        if _SHARD_RE.match(Path(rel).name) and rel.startswith(f"{DATA_DIR}/")
    }
    sha_of: dict[str, str] = {}
    reuse: dict[str, str] = {}  # target relpath -> existing relpath
    for shard in shards:
        src = by_fingerprint.get(shard.fingerprint)
        if src is None or not (dest / src).is_file():
            continue
        sha = file_sha256(dest / src)
        if sha == previous[src].get("sha256"):
            reuse[shard.relpath] = src
            sha_of[shard.relpath] = sha

    # 2. Renames go through hold names first, so a file never overwrites one that is still to be moved.
    renamed, unchanged, written = [], [], []
    holds = {}
    for target, src in reuse.items():
        if src == target:
            unchanged.append(target)
        else:
            hold = data_dir / f"{_TMP_PREFIX}hold-{sha_of[target]}"
            os.replace(dest / src, hold)
            holds[target] = hold
    for target, hold in holds.items():
        os.replace(hold, dest / target)
        renamed.append(target)

    # 3. Build the rest; keep the existing file when the new bytes are identical.
    for shard in shards:
        if shard.relpath in reuse:
            continue
        final = dest / shard.relpath
        try:
            with atomic_path(final, suffix=".parquet") as tmp:
                _write_parquet(_build_table(shard, data_home), tmp)
                sha_of[shard.relpath] = file_sha256(tmp)
                if final.is_file() and file_sha256(final) == sha_of[shard.relpath]:
                    raise _SameBytes  # atomic_path removes the temp; the file keeps its bytes and mtime
            written.append(shard.relpath)
        except _SameBytes:
            unchanged.append(shard.relpath)

    # 4. Remove shards that are no longer part of the release.
    wanted = {s.relpath for s in shards}
    removed = []
    for path in sorted(data_dir.iterdir()):
        rel = f"{DATA_DIR}/{path.name}"
        if _SHARD_RE.match(path.name) and rel not in wanted:
            path.unlink()
            removed.append(rel)

    # 5. Card and manifest (only replaced when their text changes).
    card = render_dataset_card(
        planned_rows,
        versions=versions,
        pretty_name=pretty_name,
        sampling_description=sampling_description,
        filters_description=filters_description,
    )
    _write_text_if_changed(dest / "README.md", card)
    manifest = {
        "format_version": FORMAT_VERSION,
        "shards": {
            s.relpath: {
                "split": s.split,
                "fingerprint": s.fingerprint,
                "sha256": sha_of[s.relpath],
                "rows": len(s.rows),
                "bytes": (dest / s.relpath).stat().st_size,
                "first_mal_id": s.rows[0].mal_id if s.rows else None,
                "last_mal_id": s.rows[-1].mal_id if s.rows else None,
            }
            for s in shards
        },
    }
    _write_text_if_changed(dest / MANIFEST_NAME, json.dumps(manifest, indent=2, sort_keys=True) + "\n")

    h = hashlib.sha256()
    h.update(f"README.md {hashlib.sha256(card.encode()).hexdigest()}\n".encode())
    for s in sorted(shards, key=lambda x: x.relpath):
        h.update(f"{s.relpath} {sha_of[s.relpath]}\n".encode())
    return ExportResult(
        paths=sorted([dest / "README.md", dest / MANIFEST_NAME] + [dest / s.relpath for s in shards]),
        rows_per_split={hf: len(rows) for hf, rows in planned_rows.items()},
        shards_written=sorted(written),
        shards_unchanged=sorted(unchanged),
        content_hash=h.hexdigest(),
        shards_renamed=sorted(renamed),
        shards_removed=removed,
    )
