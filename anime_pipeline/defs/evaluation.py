"""Evaluation stage: `caption_eval` (group `evaluation`): base model vs fine-tuned adapter on validation."""


import json
import time
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from anime_pipeline.defs._meta import path_meta, png_md
from anime_pipeline.defs.resources import PipelineResource
from anime_pipeline.defs.training import finetuned_adapter


class EvalConfig(dg.Config):
    max_new_tokens: int = Field(default=96, description="Longest generated caption, in tokens (greedy decoding).")
    batch_size: int = Field(default=4, description="Validation samples per generation batch.")
    examples: int = Field(default=3, description="Examples (with contact sheets) shown in the metadata.")


def latest_adapter(instance: dg.DagsterInstance) -> dict:
    """The adapter of the latest `finetuned_adapter` materialization: lineage, not "newest dir on disk"."""
    ev = instance.get_latest_materialization_event(dg.AssetKey("finetuned_adapter"))
    if ev is None or ev.asset_materialization is None:
        raise dg.Failure(description="`finetuned_adapter` has never been materialized")
    md = ev.asset_materialization.metadata
    return {k: getattr(v, "value", v) for k, v in md.items()}


@dg.asset(
    group_name="evaluation",
    deps=[finetuned_adapter],
    kinds={"pytorch", "parquet"},
    code_version="caption_eval-v1",
    pool="gpu",
)
def caption_eval(context: dg.AssetExecutionContext, config: EvalConfig, pipeline: PipelineResource) -> dg.MaterializeResult:
    """Captions for every validation title from the base model and from the fine-tuned adapter, with val loss,
    BLEU, ROUGE-L, CIDEr and (demo) a content score: the share of captions naming the right scene colours.

    Writes `eval/<run>/captions.parquet` and refreshes the adapter's model card (README.md) with the
    metrics, base vs fine-tuned.
    """
    from anime_pipeline.evaluation.run import evaluate_adapter

    s = pipeline.settings()
    adapter_meta = latest_adapter(context.instance)
    adapter_dir = Path(str(adapter_meta["adapter_path"]))
    run_dir = adapter_dir.parent
    out_dir = s.eval_dir / run_dir.name
    started = time.monotonic()
    result = evaluate_adapter(
        base_model=str(adapter_meta["base_model"]),
        adapter_dir=adapter_dir,
        val_samples=s.splits_dir / "val.parquet",
        train_samples=s.splits_dir / "train.parquet",
        data_home=s.home,
        out_dir=out_dir,
        max_new_tokens=config.max_new_tokens,
        batch_size=config.batch_size,
        lineage=adapter_meta,
        log=context.log.info,
    )
    md = {f"{k}": float(v) for k, v in result.metrics.items()}
    md.update(
        {
            "num_val": result.num_samples,
            "captions_path": path_meta(result.captions_path),
            "model_card": path_meta(adapter_dir / "README.md"),
            "adapter_path": path_meta(adapter_dir),
            "duration_s": round(time.monotonic() - started, 1),
            "examples": dg.MetadataValue.md(result.examples_markdown(config.examples)),
        }
    )
    if result.preview_png:
        md["contact_sheet"] = png_md(result.preview_png, "validation frames")
    return dg.MaterializeResult(metadata=md)


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
        metadata={"val_loss_base": base, "val_loss_finetuned": tuned, "delta": tuned - base},
    )
