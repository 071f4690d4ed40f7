"""Evaluate a fine-tuned adapter against its base model on the validation split.

Pure (no Dagster): the `caption_eval` asset calls `evaluate_adapter` and turns its result into metadata.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from anime_pipeline.evaluation.metrics import clean_caption, demo_expected_terms, score_captions
from anime_pipeline.evaluation.model_card import ModelCardInfo, write_model_card
from anime_pipeline.paths import atomic_path

METRIC_NAMES = ("val_loss", "bleu", "rouge_l", "cider", "content_score")
# TrainConfig fields that decide what the model sees; evaluation uses the training run's values.
AS_TRAINED_KEYS = ("max_frames", "max_length", "max_side", "qlora", "dtype", "attn_implementation")


def training_settings(adapter_dir: Path) -> dict[str, Any]:
    """The input settings the adapter was trained with, from `train_config.json` beside it (the training
    run's output dir holds `adapter/` and `train_config.json`); {} when the file is absent (an adapter from
    elsewhere: every frame, no length budget, full-precision base)."""
    path = Path(adapter_dir).parent / "train_config.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); cannot evaluate the adapter as trained") from e
    return {k: data[k] for k in AS_TRAINED_KEYS if k in data}


@dataclass
class EvalResult:
    metrics: dict[str, float]  # "<metric>_base" / "<metric>_finetuned"; content_score only where defined
    num_samples: int
    captions_path: Path
    table: pl.DataFrame
    preview_png: bytes | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def examples_markdown(self, n: int = 3) -> str:
        lines = ["| MAL id | reference | base | fine-tuned |", "|---|---|---|---|"]
        for row in self.table.head(n).iter_rows(named=True):
            cells = [str(row["mal_id"])] + [
                (row[k] or "").replace("|", "\\|").replace("\n", " ")[:300]
                for k in ("reference", "caption_base", "caption_finetuned")
            ]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _scores(
    model,
    processor,
    samples: list[dict],
    *,
    max_new_tokens: int,
    batch_size: int,
    terms,
    max_length: int | None = None,
) -> tuple[dict, list[str], Any]:
    from anime_pipeline.training.inference import compute_loss, generate_captions

    loss = compute_loss(model, processor, samples, batch_size=batch_size, max_length=max_length)
    captions = [
        clean_caption(c)
        for c in generate_captions(
            model, processor, samples, max_new_tokens=max_new_tokens, batch_size=batch_size
        )
    ]
    scores = score_captions(captions, [s["answer"] for s in samples], terms)
    summary = {"val_loss": loss, **scores.summary()}
    summary["content_score"] = summary.pop("content")
    return summary, captions, scores


def evaluate_adapter(
    *,
    base_model: str,
    adapter_dir: Path,
    val_samples: Path,
    train_samples: Path | None,
    data_home: Path,
    out_dir: Path,
    max_new_tokens: int = 96,
    batch_size: int = 4,
    lineage: dict | None = None,
    log: Callable[[str], None] = print,
    train_config: dict | None = None,
) -> EvalResult:
    """Captions and scores for every validation title, base vs fine-tuned; writes captions.parquet and the
    adapter's model card (README.md).

    Evaluated as trained: `train_config` (default: the run's `train_config.json`, see `training_settings`)
    gives the frames per sample (`max_frames`), the token budget of the loss (`max_length`), the resize
    (`max_side`), dtype and attention; a QLoRA adapter is evaluated on the 4-bit base (both rows), unmerged.
    Where 4-bit cannot load (no CUDA or no bitsandbytes) it is evaluated on the full-precision base and
    `extras["eval_base"]` says so. Validation samples too long for `max_length` even with one frame are
    skipped and listed in `extras["skipped"]`, as in training.
    """
    from anime_pipeline.training.collator import VideoSFTCollator
    from anime_pipeline.training.data import ShardVideoDataset
    from anime_pipeline.training.inference import load_model
    from anime_pipeline.training.model import qlora_supported
    from anime_pipeline.training.processor import load_processor

    tc = (
        training_settings(adapter_dir)
        if train_config is None
        else {k: train_config[k] for k in AS_TRAINED_KEYS if k in train_config}
    )
    val = pl.read_parquet(val_samples)
    if val.is_empty():
        raise ValueError(f"{val_samples}: the validation split is empty; nothing to evaluate")
    dataset = ShardVideoDataset(val, data_home, tc.get("max_frames"))
    processor = load_processor(base_model, max_side=tc.get("max_side"))
    max_length = tc.get("max_length")
    skipped = dataset.drop_too_long(VideoSFTCollator(processor, max_length=max_length))
    for item in skipped:
        log(f"skipping validation sample MAL {item['mal_id']}: {item['error']}")
    if len(dataset) == 0:
        raise ValueError(f"{val_samples}: every validation sample is longer than max_length={max_length}")
    samples = [dataset[i] for i in range(len(dataset))]
    terms = [demo_expected_terms(s["mal_id"]) for s in samples]

    qlora = bool(tc.get("qlora"))
    reason = qlora_supported() if qlora else None
    if qlora and reason is None:
        eval_base = "4-bit NF4 (as trained, adapter not merged)"
    elif qlora:
        eval_base = f"full precision: the adapter was trained on a 4-bit base, but {reason}"
        log(f"WARNING: QLoRA adapter evaluated on the full-precision base ({reason})")
    else:
        eval_base = "as trained (no quantization)"
    load_kw = {
        "dtype": tc.get("dtype", "auto"),
        "attn_implementation": tc.get("attn_implementation", "auto"),
        "qlora": qlora and reason is None,
    }

    results = {}
    for label, adapter in (("base", None), ("finetuned", adapter_dir)):
        log(f"evaluating {label} model on {len(samples)} validation titles ({eval_base})")
        model = load_model(base_model, adapter, **load_kw)
        results[label] = _scores(
            model,
            processor,
            samples,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            terms=terms,
            max_length=max_length,
        )
        del model

    metrics: dict[str, float] = {}
    for label, (summary, _, _) in results.items():
        for k, v in summary.items():
            if v is not None:
                metrics[f"{k}_{label}"] = float(v)
    table = pl.DataFrame(
        {
            "mal_id": [s["mal_id"] for s in samples],
            "name": [s.get("name") for s in samples],
            "reference": [s["answer"] for s in samples],
            "caption_base": results["base"][1],
            "caption_finetuned": results["finetuned"][1],
            "rouge_l_base": [r["rouge_l"] for r in results["base"][2].per_item],
            "rouge_l_finetuned": [r["rouge_l"] for r in results["finetuned"][2].per_item],
            "cider_base": [r["cider"] for r in results["base"][2].per_item],
            "cider_finetuned": [r["cider"] for r in results["finetuned"][2].per_item],
            "content_base": [r["content"] for r in results["base"][2].per_item],
            "content_finetuned": [r["content"] for r in results["finetuned"][2].per_item],
        },
        schema_overrides={"content_base": pl.Boolean, "content_finetuned": pl.Boolean},
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    captions_path = out_dir / "captions.parquet"
    with atomic_path(captions_path, suffix=".parquet") as tmp:
        table.write_parquet(tmp)
    with atomic_path(out_dir / "metrics.json", suffix=".json") as tmp:
        tmp.write_text(json.dumps(metrics, indent=2))

    _write_card(
        adapter_dir,
        base_model,
        val,
        train_samples,
        metrics,
        lineage or {},
        data_home,
        max(len(x["images"]) for x in samples),
    )

    from anime_pipeline.media.preview import contact_sheet

    preview = contact_sheet(samples[0]["images"], columns=min(8, len(samples[0]["images"])))
    extras = {"eval_base": eval_base, "skipped": skipped, "as_trained": tc}
    return EvalResult(
        metrics=metrics,
        num_samples=len(samples),
        captions_path=captions_path,
        table=table,
        preview_png=preview,
        extras=extras,
    )


def _source_counts(home: Path) -> dict[str, dict[str, int]]:
    """Titles per catalog and synopses per source, from the catalog tables beside the split."""
    out: dict[str, dict[str, int]] = {}
    for table, column in (("titles", "catalog"), ("synopses", "source")):
        path = home / "catalog" / f"{table}.parquet"
        if path.exists():
            counts = pl.read_parquet(path, columns=[column]).group_by(column).len()
            out[table] = {str(k): int(v) for k, v in counts.iter_rows()}
    return out


def _write_card(
    adapter_dir: Path,
    base_model: str,
    val: pl.DataFrame,
    train_samples: Path | None,
    metrics: dict,
    lineage: dict,
    data_home: Path,
    frames_per_sample: int | None = None,
) -> Path:
    train = pl.read_parquet(train_samples) if train_samples and Path(train_samples).exists() else None
    sources = _source_counts(Path(data_home))
    hp = lineage.get("hyperparameters") or {}
    if isinstance(hp, str):
        hp = json.loads(hp)
    info = ModelCardInfo(
        model_name=f"{Path(base_model).name}-anime-lora-{Path(adapter_dir).parent.name}",
        base_model=base_model,
        train_samples=train.height if train is not None else 0,
        val_samples=val.height,
        hyperparameters=hp,
        base_metrics={n: metrics.get(f"{n}_base") for n in METRIC_NAMES},
        finetuned_metrics={n: metrics.get(f"{n}_finetuned") for n in METRIC_NAMES},
        data_version=str(lineage.get("data_version", "unknown")),
        code_version=str(lineage.get("code_version", "unknown")),
        git_commit=str(lineage.get("git_commit")) if lineage.get("git_commit") else None,
        frames_per_sample=frames_per_sample,
        synopsis_sources=sources.get("synopses", {}),
        catalog_sources=sources.get("titles", {}),
    )
    return write_model_card(adapter_dir, info)
