"""Evaluation stage: `caption_eval` (group `evaluation`): base model vs fine-tuned adapter on validation."""

import json
import time
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from anime_pipeline.defs._meta import (
    eval_metadata,
    frames_sheet,
    image_md,
    path_meta,
    plain,
    readable,
    seconds,
    stage_asset,
    table_metadata,
    title_label,
)
from anime_pipeline.defs.resources import DataStoreResource, GpuLauncherResource, PipelineResource
from anime_pipeline.defs.training import finetuned_adapter


class EvalConfig(dg.Config):
    max_new_tokens: int = Field(
        default=96, description="Longest generated caption, in tokens (greedy decoding)."
    )
    batch_size: int = Field(default=4, description="Validation samples per generation batch.")
    examples: int = Field(default=3, description="Examples (with contact sheets) shown in the metadata.")


def latest_adapter(instance: dg.DagsterInstance) -> dict:
    """The adapter of the latest `finetuned_adapter` materialization: lineage, not "newest dir on disk"."""
    ev = instance.get_latest_materialization_event(dg.AssetKey("finetuned_adapter"))
    if ev is None or ev.asset_materialization is None:
        raise dg.Failure(description="`finetuned_adapter` has never been materialized")
    return plain(ev.asset_materialization.metadata)


@stage_asset(
    "evaluation",
    deps=[finetuned_adapter],
    kinds={"pytorch", "parquet"},
    code_version="caption_eval-v1",
    pool="gpu",
    extra_tags={"hardware": "gpu"},
)
def caption_eval(
    context: dg.AssetExecutionContext,
    config: EvalConfig,
    pipeline: PipelineResource,
    data_store: DataStoreResource,
    gpu_launcher: GpuLauncherResource,
) -> dg.MaterializeResult:
    """Captions for every validation title from the base model and from the fine-tuned adapter, with val loss,
    BLEU, ROUGE-L, CIDEr and (demo) a content score: the share of captions naming the right scene colours.

    Runs where the fine-tune runs (the `gpu_launcher` resource, through Dagster Pipes): the job fetches
    the validation split, its frames, the base model and the adapter from the data store, writes
    `eval/<run>/captions.parquet` and refreshes the adapter's model card (README.md) with the metrics,
    base vs fine-tuned, and publishes both.
    """
    from anime_pipeline.defs.dataset import SPLIT_FILES
    from anime_pipeline.gpu_job import HOME, eval_job

    s = pipeline.settings()
    adapter_meta = latest_adapter(context.instance)
    adapter_rel = str(adapter_meta.get("adapter_key") or "")
    if not adapter_rel:  # recorded before adapter_key existed: a path inside the local data dir
        adapter_rel = Path(str(adapter_meta["adapter_path"])).resolve().relative_to(s.home).as_posix()
    run_rel = adapter_rel.rsplit("/", 1)[0]
    out_rel = f"eval/{run_rel.rsplit('/', 1)[-1]}"
    data_store.pull(SPLIT_FILES[1])
    val_frames = sorted(set(pl.read_parquet(s.home / SPLIT_FILES[1])["frames_path"].to_list()))
    job = eval_job(
        store=data_store.worker_store(),
        eval_args={
            "base_model": str(adapter_meta.get("base_model_ref") or adapter_meta["base_model"]),
            "adapter_dir": f"{HOME}/{adapter_rel}",
            "val_samples": f"{HOME}/{SPLIT_FILES[1]}",
            "train_samples": f"{HOME}/{SPLIT_FILES[0]}",
            "data_home": HOME,
            "out_dir": f"{HOME}/{out_rel}",
            "max_new_tokens": config.max_new_tokens,
            "batch_size": config.batch_size,
            "lineage": json.loads(json.dumps(adapter_meta, default=str)),
        },
        home=s.home,
        inputs=[*SPLIT_FILES, *val_frames, adapter_rel, f"{run_rel}/train_config.json"],
        outputs=[out_rel, f"{adapter_rel}/README.md"],
        asset_key=context.asset_key.to_user_string(),
        examples=config.examples,
    )
    started = time.monotonic()
    invocation = gpu_launcher.run(context, job)
    md = dict(invocation.get_materialize_result().metadata or {})
    compute_s = seconds(time.monotonic() - started)
    data_store.pull(f"{out_rel}/captions.parquet")  # published by the worker
    captions = pl.read_parquet(s.home / out_rel / "captions.parquet")
    reported = {k: v for k, v in md.items() if k not in ("contact_sheet", "examples")}  # replaced below
    tables = eval_metadata(
        reported, captions
    )  # one base-vs-fine-tuned table, an example row per validation title
    md = {**tables, **readable({k: v for k, v in reported.items() if k not in tables})}
    md.update(
        {
            "captions_path": path_meta(data_store.uri(f"{out_rel}/captions.parquet")),
            "model_card": path_meta(data_store.uri(f"{adapter_rel}/README.md")),
            "adapter_path": path_meta(data_store.uri(adapter_rel)),
            "compute_s": compute_s,
            **_validation_sheet(s, data_store, captions),
            **table_metadata(captions.schema, captions.height),
        }
    )
    return dg.MaterializeResult(metadata=md)


def _validation_sheet(settings, data_store: DataStoreResource, captions: pl.DataFrame) -> dict:
    """A contact sheet of the first validation title (by MAL id), captioned with its name."""
    from anime_pipeline.defs.dataset import SPLIT_FILES
    from anime_pipeline.media.shards import read_frame_shard

    if captions.is_empty():
        return {}
    first = captions.sort("mal_id").row(0, named=True)
    val = pl.read_parquet(settings.home / SPLIT_FILES[1]).filter(pl.col("mal_id") == first["mal_id"])
    if val.is_empty():
        return {}
    rel = val["frames_path"][0]
    data_store.pull(rel)
    frames = read_frame_shard(settings.home / rel)
    label = title_label(first["mal_id"], first.get("name"))
    return {
        "contact_sheet": image_md(
            frames_sheet(frames["image"].to_list(), frames["timestamp_s"].to_list()),
            f"{label}: the frames the models captioned (first validation title)",
        )
    }


@dg.asset_check(
    asset=caption_eval,
    blocking=False,
    description="The fine-tuned adapter does not score worse than the base model on validation loss (warns).",
)
def finetuned_not_worse_than_base(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
    ev = context.instance.get_latest_materialization_event(dg.AssetKey("caption_eval"))
    md = {k: getattr(v, "value", v) for k, v in ev.asset_materialization.metadata.items()}
    base, tuned = float(md["val_loss_base"]), float(md["val_loss_finetuned"])
    return dg.AssetCheckResult(
        passed=tuned <= base,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "val_loss_base": round(base, 4),
            "val_loss_finetuned": round(tuned, 4),
            "change": round(tuned - base, 4),
        },
    )
