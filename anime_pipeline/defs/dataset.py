"""Dataset stage: `train_val_split` (group `dataset`)."""


import time
from typing import Optional

import dagster as dg
import polars as pl
from pydantic import Field

from anime_pipeline.dataset.checks import check_samples_well_formed, check_split_disjoint
from anime_pipeline.dataset.split import build_samples, content_hash, split_stats, write_split
from anime_pipeline.defs._meta import md_table, path_meta
from anime_pipeline.defs.catalog import synopses, titles
from anime_pipeline.defs.media import frame_shards
from anime_pipeline.defs.partitions import MAL_ID_PARTITIONS_NAME
from anime_pipeline.defs.resources import PipelineResource
from anime_pipeline.inventory import scan_shards

DEMO_VAL_FRACTION = 0.25
LIVE_VAL_FRACTION = 0.05


class SplitConfig(dg.Config):
    val_fraction: Optional[float] = Field(
        default=None,
        description=f"Share of titles in validation, by a hash of the MAL id. Unset: {LIVE_VAL_FRACTION} live, "
        f"{DEMO_VAL_FRACTION} in the demo (24 titles).",
    )
    salt: str = Field(default="anime_pipeline-v1", description="Hash salt; changing it reshuffles every title.")


def split_paths(home) -> list:
    return [home / "splits" / "train.parquet", home / "splits" / "val.parquet"]


def split_data_version(home) -> str:
    """Content hash of the sample tables and of the shards they reference (lineage for training)."""
    train, val = (pl.read_parquet(p) for p in split_paths(home))
    shards = sorted(home / p for p in pl.concat([train, val])["frames_path"].to_list())
    return content_hash(split_paths(home) + shards)


@dg.asset(
    group_name="dataset",
    deps=[titles, synopses, frame_shards],
    kinds={"parquet", "polars"},
    code_version="train_val_split-v1",
)
def train_val_split(context: dg.AssetExecutionContext, config: SplitConfig, pipeline: PipelineResource) -> dg.MaterializeResult:
    """Train and validation sample tables, split by title with a stable hash of the MAL id.

    A title never changes side when new titles arrive. Each sample holds the prompt (genres and main
    characters), the target synopsis and the location of the title's frame shard. Titles without a
    complete shard are listed as excluded.
    """
    s = pipeline.settings()
    started = time.monotonic()
    val_fraction = config.val_fraction if config.val_fraction is not None else (
        DEMO_VAL_FRACTION if s.profile == "demo" else LIVE_VAL_FRACTION
    )
    titles_df = pl.read_parquet(s.catalog_dir / "titles.parquet")
    synopses_df = pl.read_parquet(s.catalog_dir / "synopses.parquet")
    partitions = [int(k) for k in context.instance.get_dynamic_partitions(MAL_ID_PARTITIONS_NAME)]
    shards = scan_shards(s.home, mal_ids=partitions)
    result = build_samples(titles_df, synopses_df, shards, val_fraction=val_fraction, salt=config.salt)
    if result.train.is_empty():
        raise dg.Failure(
            description=f"no training samples: {shards.height} frame shards, {synopses_df.height} synopses under {s.home}"
        )
    paths = write_split(result, s.splits_dir)
    stats = split_stats(result.train, result.val)
    version = split_data_version(s.home)
    return dg.MaterializeResult(
        metadata={
            "num_train": result.train.height,
            "num_val": result.val.height,
            "num_excluded": result.excluded.height,
            "val_fraction": val_fraction,
            "stats": dg.MetadataValue.json(stats),
            "data_version": version,
            "train_path": path_meta(paths["train"]),
            "val_path": path_meta(paths["val"]),
            "duration_s": round(time.monotonic() - started, 2),
            "preview": md_table(result.train.select("mal_id", "name", "prompt", "synopsis", "num_frames")),
            "excluded": md_table(result.excluded),
        },
        data_version=dg.DataVersion(version[:16]),
    )


@dg.asset_check(asset=train_val_split, blocking=True, description="No title appears in both train and validation.")
def split_disjoint_by_title(pipeline: PipelineResource) -> dg.AssetCheckResult:
    train, val = (pl.read_parquet(p) for p in split_paths(pipeline.settings().home))
    ok, detail = check_split_disjoint(train, val)
    return dg.AssetCheckResult(passed=ok, metadata={"detail": detail})


@dg.asset_check(
    asset=train_val_split, blocking=True, description="Every sample has a prompt, a synopsis and a safe frames path."
)
def samples_well_formed(pipeline: PipelineResource) -> dg.AssetCheckResult:
    train, val = (pl.read_parquet(p) for p in split_paths(pipeline.settings().home))
    ok, detail = check_samples_well_formed(pl.concat([train, val]))
    return dg.AssetCheckResult(passed=ok, metadata={"detail": detail})


class ExportConfig(dg.Config):
    shard_target_mb: int = Field(default=500, description="Target size of one release shard, in MB.")
    pretty_name: str = Field(default="Anime first episodes with synopses", description="Dataset name in the card.")


@dg.asset(
    group_name="dataset",
    deps=[train_val_split],
    kinds={"parquet", "huggingface"},
    code_version="dataset_export-v1",
)
def dataset_export(context: dg.AssetExecutionContext, config: ExportConfig, pipeline: PipelineResource) -> dg.MaterializeResult:
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
    train, val = (pl.read_parquet(p) for p in split_paths(s.home))
    result = export_dataset(
        train,
        val,
        pl.read_parquet(s.catalog_dir / "titles.parquet"),
        pl.read_parquet(s.catalog_dir / "synopses.parquet"),
        s.home,
        s.home / "release",
        shard_target_bytes=config.shard_target_mb * 1_000_000,
        versions={"data_version": split_data_version(s.home), "code_version": "dataset_export-v1", "git_commit": git_commit()},
        pretty_name=config.pretty_name,
    )
    context.log.info(
        f"release: {len(result.shards_written)} shard(s) written, {len(result.shards_unchanged)} unchanged"
    )
    return dg.MaterializeResult(
        metadata={
            "rows_per_split": dg.MetadataValue.json(result.rows_per_split),
            "shards_written": len(result.shards_written),
            "shards_unchanged": len(result.shards_unchanged),
            "content_hash": result.content_hash,
            "bytes": sum(p.stat().st_size for p in result.paths),
            "path": path_meta(s.home / "release"),
            "card": path_meta(s.home / "release" / "README.md"),
            "duration_s": round(time.monotonic() - started, 2),
        },
        data_version=dg.DataVersion(result.content_hash[:16]),
    )
