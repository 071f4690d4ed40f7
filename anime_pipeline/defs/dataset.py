"""Dataset stage: `train_val_split` (group `dataset`)."""

import time

import dagster as dg
import polars as pl
from pydantic import Field

from anime_pipeline import schemas
from anime_pipeline.dataset.checks import check_samples_well_formed, check_split_disjoint
from anime_pipeline.dataset.split import (
    build_samples,
    content_hash,
    read_media_failures,
    split_stats,
    write_split,
)
from anime_pipeline.defs._meta import (
    mb,
    path_meta,
    preview_table,
    records_table,
    seconds,
    split_stats_table,
    stage_asset,
    table_metadata,
)
from anime_pipeline.defs.catalog import synopses, titles
from anime_pipeline.defs.media import frame_shards
from anime_pipeline.defs.partitions import MAL_ID_PARTITIONS_NAME
from anime_pipeline.defs.resources import DataStoreResource, PipelineResource
from anime_pipeline.inventory import scan_shards

DEMO_VAL_FRACTION = 0.25
LIVE_VAL_FRACTION = 0.05


class SplitConfig(dg.Config):
    val_fraction: float | None = Field(
        default=None,
        description=f"Share of titles in validation, by a hash of the MAL id. Unset: {LIVE_VAL_FRACTION} live, "
        f"{DEMO_VAL_FRACTION} in the demo (24 titles).",
    )
    salt: str = Field(
        default="anime_pipeline-v1", description="Hash salt; changing it reshuffles every title."
    )


SPLIT_FILES = ("splits/train.parquet", "splits/val.parquet")


def pull_media_records(data_store: DataStoreResource, mal_ids) -> None:
    """Bring the frame shards and the episodes' probe / error records of these titles into the local dir
    (never the videos): what `scan_shards` and `read_media_failures` read. One listing per folder."""
    wanted = {str(int(i)) for i in mal_ids}
    store = data_store.open()
    if not store.remote:
        return
    rels = [r for r in store.list("frames") if r.split("/")[1].removeprefix("mal_id=") in wanted]
    rels += [
        r
        for r in store.list("episodes")
        if len(r.split("/")) == 3
        and r.split("/")[1] in wanted
        and r.rsplit("/", 1)[-1] in ("probe.json", "error.json")
    ]
    store.pull(*rels)


def pull_split(data_store: DataStoreResource, *, frames: bool) -> None:
    """The split tables (and, with `frames`, every shard they reference) into the local dir."""
    data_store.pull(*SPLIT_FILES)
    if frames:
        store = data_store.open()
        if store.remote:
            train, val = (pl.read_parquet(store.path(p)) for p in SPLIT_FILES)
            store.pull(*sorted(set(pl.concat([train, val])["frames_path"].to_list())))


def split_paths(home) -> list:
    return [home / "splits" / "train.parquet", home / "splits" / "val.parquet"]


def split_data_version(home) -> str:
    """Content hash of the sample tables and of the shards they reference (lineage for training)."""
    train, val = (pl.read_parquet(p) for p in split_paths(home))
    shards = sorted(home / p for p in pl.concat([train, val])["frames_path"].to_list())
    return content_hash(split_paths(home) + shards)


@stage_asset(
    "dataset",
    deps=[titles, synopses, frame_shards],
    kinds={"parquet", "polars"},
    code_version="train_val_split-v1",
    schema=schemas.SAMPLES,
)
def train_val_split(
    context: dg.AssetExecutionContext,
    config: SplitConfig,
    pipeline: PipelineResource,
    data_store: DataStoreResource,
) -> dg.MaterializeResult:
    """Train and validation sample tables, split by title with a stable hash of the MAL id.

    A title never changes side when new titles arrive. Each sample holds the prompt (genres and main
    characters), the target synopsis and the location of the title's frame shard. Titles without a
    complete shard are listed as excluded, with the failure the media stage recorded (`error.json`).
    """
    s = pipeline.settings()
    started = time.monotonic()
    val_fraction = (
        config.val_fraction
        if config.val_fraction is not None
        else (DEMO_VAL_FRACTION if s.profile == "demo" else LIVE_VAL_FRACTION)
    )
    data_store.pull("catalog/titles.parquet", "catalog/synopses.parquet")
    titles_df = pl.read_parquet(s.catalog_dir / "titles.parquet")
    synopses_df = pl.read_parquet(s.catalog_dir / "synopses.parquet")
    partitions = [int(k) for k in context.instance.get_dynamic_partitions(MAL_ID_PARTITIONS_NAME)]
    pull_media_records(data_store, partitions)
    shards = scan_shards(s.home, mal_ids=partitions)
    failures = read_media_failures(s.home, set(partitions) - set(shards["mal_id"].to_list()))
    result = build_samples(
        titles_df, synopses_df, shards, val_fraction=val_fraction, salt=config.salt, failures=failures
    )
    if result.train.is_empty():
        raise dg.Failure(
            description=f"no training samples: {shards.height} frame shards, {synopses_df.height} synopses under {s.home}"
        )
    write_split(result, s.splits_dir)
    data_store.push(*SPLIT_FILES)
    stats = split_stats(result.train, result.val)
    version = split_data_version(s.home)
    return dg.MaterializeResult(
        metadata={
            "num_train": result.train.height,
            "num_val": result.val.height,
            "num_excluded": result.excluded.height,
            "num_media_failures": failures["mal_id"].n_unique(),
            "val_fraction": val_fraction,
            "stats": split_stats_table(stats),
            "data_version": version,
            "train_path": path_meta(data_store.uri(SPLIT_FILES[0])),
            "val_path": path_meta(data_store.uri(SPLIT_FILES[1])),
            "compute_s": seconds(time.monotonic() - started),
            "preview": preview_table(result.train.select("mal_id", "synopsis", "num_frames"), max_chars=100),
            "excluded": preview_table(result.excluded),
            **table_metadata(schemas.SAMPLES, result.train.height + result.val.height),
        },
        data_version=dg.DataVersion(version[:16]),
    )


@dg.asset_check(
    asset=train_val_split, blocking=True, description="No title appears in both train and validation."
)
def split_disjoint_by_title(pipeline: PipelineResource, data_store: DataStoreResource) -> dg.AssetCheckResult:
    data_store.pull(*SPLIT_FILES)
    train, val = (pl.read_parquet(p) for p in split_paths(pipeline.settings().home))
    ok, detail = check_split_disjoint(train, val)
    return dg.AssetCheckResult(passed=ok, metadata={"detail": detail})


@dg.asset_check(
    asset=train_val_split,
    blocking=True,
    description="Every sample has a prompt, a synopsis and a safe frames path.",
)
def samples_well_formed(pipeline: PipelineResource, data_store: DataStoreResource) -> dg.AssetCheckResult:
    data_store.pull(*SPLIT_FILES)
    train, val = (pl.read_parquet(p) for p in split_paths(pipeline.settings().home))
    ok, detail = check_samples_well_formed(pl.concat([train, val]))
    return dg.AssetCheckResult(passed=ok, metadata={"detail": detail})


class ExportConfig(dg.Config):
    shard_target_mb: int = Field(default=500, description="Target size of one release shard, in MB.")
    pretty_name: str = Field(
        default="Anime first episodes with synopses", description="Dataset name in the card."
    )


@stage_asset(
    "dataset",
    deps=[train_val_split],
    kinds={"parquet", "huggingface"},
    code_version="dataset_export-v1",
    extra_tags={"release": "huggingface"},
)
def dataset_export(
    context: dg.AssetExecutionContext,
    config: ExportConfig,
    pipeline: PipelineResource,
    data_store: DataStoreResource,
) -> dg.MaterializeResult:
    """A self-contained dataset release at `<data dir>/release/`: Parquet shards that Hugging Face `datasets`
    loads as they are (`train` and `validation` splits, one row per title with names, genres, characters,
    prompt, synopsis, Russian synopsis, frame timestamps and the frames as an `Image` list) and a dataset
    card (README.md) with collection method, counts, licence and provenance. Re-exporting without an
    upstream change rewrites nothing; a changed title rewrites only the shard that holds it.
    """
    from anime_pipeline.dataset.export import export_dataset
    from anime_pipeline.defs.training import git_commit

    s = pipeline.settings()
    started = time.monotonic()
    pull_split(data_store, frames=True)
    data_store.pull("catalog/titles.parquet", "catalog/synopses.parquet")
    data_store.pull("release", missing_ok=True)  # the last release: unchanged shards are not rewritten
    train, val = (pl.read_parquet(p) for p in split_paths(s.home))
    result = export_dataset(
        train,
        val,
        pl.read_parquet(s.catalog_dir / "titles.parquet"),
        pl.read_parquet(s.catalog_dir / "synopses.parquet"),
        s.home,
        s.home / "release",
        shard_target_bytes=config.shard_target_mb * 1_000_000,
        versions={
            "data_version": split_data_version(s.home),
            "code_version": "dataset_export-v1",
            "git_commit": git_commit(),
        },
        pretty_name=config.pretty_name,
    )
    data_store.push("release")
    context.log.info(
        f"release: {len(result.shards_written)} shard(s) written, {len(result.shards_unchanged)} unchanged"
    )
    return dg.MaterializeResult(
        metadata={
            "rows_per_split": records_table(
                [{"split": k, "rows": v} for k, v in result.rows_per_split.items()],
                [("split", "string"), ("rows", "int")],
            ),
            "shards_written": len(result.shards_written),
            "shards_unchanged": len(result.shards_unchanged),
            "content_hash": result.content_hash,
            "size_mb": mb(sum(p.stat().st_size for p in result.paths)),
            "path": path_meta(data_store.uri("release")),
            "card": path_meta(data_store.uri("release/README.md")),
            "compute_s": seconds(time.monotonic() - started),
            **_release_table_metadata(result),
        },
        data_version=dg.DataVersion(result.content_hash[:16]),
    )


def _release_table_metadata(result) -> dict:
    """Column schema (read from a release shard) and row count of the HF release."""
    shards = [p for p in result.paths if p.suffix == ".parquet"]
    if not shards:
        return {}
    return table_metadata(
        pl.read_parquet_schema(shards[0]),
        sum(result.rows_per_split.values()),
        docs={
            "frames": "The title's sampled frames (HF `Image` list)",
            "timestamps_s": "Time of each frame, seconds",
        },
    )
