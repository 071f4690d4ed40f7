"""Hugging Face model card (README.md) for a fine-tuned LoRA adapter, built with huggingface_hub's
`ModelCard` / `ModelCardData` (the metadata and `model-index` exactly as the Hub writes and validates them)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from anime_pipeline.markdown import md_table as _table
from anime_pipeline.paths import atomic_path

TAGS = ["lora", "smolvlm2", "video-captioning", "anime_pipeline"]
PIPELINE_TAG = "image-text-to-text"

# Display names for the metrics this project computes; unknown keys are shown as they are.
METRIC_NAMES = {
    "bleu": "BLEU",
    "rouge_l": "ROUGE-L (F)",
    "cider": "CIDEr-D",
    "content": "Content score (names both scene colours)",
}

DEFAULT_LIMITATIONS = (
    "Trained on a small number of first episodes; captions describe what a few sampled frames show and "
    "cannot know plot points that are never on screen.",
    "Synopses are written by people for a whole episode, so the references are loose descriptions of the "
    "frames; n-gram metrics (BLEU, ROUGE-L, CIDEr-D) reward wording, not truth.",
    "The catalog is biased towards popular, English- or Russian-described TV series.",
    "Not intended for content moderation, age rating or any decision about people.",
)


@dataclass(frozen=True)
class ModelCardInfo:
    """Everything a model card says. Counts and metrics come from the pipeline's assets, never from guesses."""

    model_name: str  # name of the adapter, e.g. "smolvlm2-256m-anime-lora" (model-index name, card title)
    base_model: str  # HF id of the base model, e.g. "HuggingFaceTB/SmolVLM2-256M-Video-Instruct"
    train_samples: int
    val_samples: int
    hyperparameters: dict[str, Any]  # shown as a table in insertion order (lr, epochs, LoRA r/alpha, ...)
    base_metrics: dict[str, float | None]  # metric key -> value on the validation split, base model
    finetuned_metrics: dict[str, float | None]  # same keys, fine-tuned adapter
    data_version: str  # e.g. content hash of splits/train.parquet + val.parquet
    code_version: str  # e.g. package version or Dagster code version
    git_commit: str | None = None
    datasets: list[str] = field(
        default_factory=list
    )  # HF dataset ids (front matter `datasets`), may be empty
    dataset_name: str = "anime_pipeline first-episode synopses"  # human name of the evaluation data
    excluded_titles: int | None = None  # titles dropped for lack of a synopsis or frames
    frames_per_sample: int | None = None
    synopsis_sources: dict[str, int] = field(default_factory=dict)  # "mal"/"jikan"/"anilist"/"demo" -> titles
    catalog_sources: dict[str, int] = field(default_factory=dict)  # "shikimori"/"anilist"/"demo" -> titles
    split_description: str = (
        "by title: sha256 of the MAL id decides train or validation, so no title is on both sides"
    )
    eval_split: str = "validation"
    license: str | None = None  # None -> the base model's licence applies; stated in the text
    training_time_s: float | None = None
    hardware: str | None = None
    limitations: list[str] = field(default_factory=lambda: list(DEFAULT_LIMITATIONS))


def _model_ref(model: str) -> str:
    """A Hub link for a Hub id (`org/name`); a local directory (the demo's tiny model) stays plain text."""
    if model.count("/") == 1 and not model.startswith((".", "/", "~")):
        return f"[`{model}`](https://huggingface.co/{model})"
    return f"`{model}` (a local model directory)"


def _plain(value: Any) -> Any:
    """numpy scalars and other number-likes -> plain Python values safe for yaml.safe_dump."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if hasattr(value, "item"):
        return _plain(value.item())
    return str(value)


def _fmt(value: Any) -> str:
    value = _plain(value)
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _metric_keys(info: ModelCardInfo) -> list[str]:
    keys = list(info.finetuned_metrics)
    keys += [k for k in info.base_metrics if k not in keys]
    return keys


def card_data(info: ModelCardInfo) -> ModelCardData:
    """The card's metadata as huggingface_hub builds it: `model-index` from one `EvalResult` per metric the
    fine-tuned adapter has a value for (none recorded: no `model-index`, which the Hub requires metrics in)."""
    results = [
        EvalResult(
            task_type=PIPELINE_TAG,
            task_name="Video captioning (first-episode synopsis)",
            dataset_type=info.datasets[0] if info.datasets else "anime_pipeline",
            dataset_name=info.dataset_name,
            dataset_split=info.eval_split,
            metric_type=key,
            metric_value=_plain(value),
            metric_name=METRIC_NAMES.get(key, key),
        )
        for key, value in info.finetuned_metrics.items()
        if _plain(value) is not None
    ]
    return ModelCardData(
        base_model=info.base_model,
        library_name="peft",
        tags=list(TAGS),
        pipeline_tag=PIPELINE_TAG,
        license=info.license or None,
        datasets=list(info.datasets) or None,
        model_name=info.model_name,
        eval_results=results or None,
    )


def front_matter(info: ModelCardInfo) -> dict:
    """The YAML front matter as a dict (what the Hub reads)."""
    return card_data(info).to_dict()


def _counts(d: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(d.items())) if d else "–"


def render_model_card(info: ModelCardInfo) -> str:
    """The README.md text: YAML front matter, then description, data, training, metrics, lineage, limitations."""
    header = card_data(info).to_yaml()
    total = info.train_samples + info.val_samples
    data_rows: list[list[Any]] = [
        ["Train samples (titles)", info.train_samples],
        ["Validation samples (titles)", info.val_samples],
        ["Excluded titles", _fmt(info.excluded_titles)],
        ["Frames per sample", _fmt(info.frames_per_sample)],
        ["Synopsis sources", _counts(info.synopsis_sources)],
        ["Catalog sources", _counts(info.catalog_sources)],
        ["Split", info.split_description],
    ]
    hp_rows = [[k, _fmt(v)] for k, v in info.hyperparameters.items()]
    if info.training_time_s is not None:
        hp_rows.append(["training time (s)", _fmt(info.training_time_s)])
    if info.hardware:
        hp_rows.append(["hardware", info.hardware])

    metric_rows = []
    for key in _metric_keys(info):
        base, tuned = info.base_metrics.get(key), info.finetuned_metrics.get(key)
        delta = (
            _plain(tuned) - _plain(base) if _plain(base) is not None and _plain(tuned) is not None else None
        )
        metric_rows.append([METRIC_NAMES.get(key, key), _fmt(base), _fmt(tuned), _fmt(delta)])

    lineage_rows = [
        ["Data version", info.data_version],
        ["Code version", info.code_version],
        ["Git commit", info.git_commit or "–"],
    ]
    licence = (
        f"The adapter is released under `{info.license}`."
        if info.license
        else "No licence of its own is declared; the base model's licence applies."
    )
    dataset_line = f"Datasets: {', '.join(f'`{d}`' for d in info.datasets)}." if info.datasets else ""
    sections = [
        f"---\n{header}\n---",
        f"# {info.model_name}",
        "## Model description\n\n"
        f"A LoRA adapter (PEFT) for {_model_ref(info.base_model)} that writes "
        "the synopsis of an anime's first episode from frames sampled across that episode. The prompt gives "
        "the genres and main characters from the catalog; everything else has to come from the frames.\n\n"
        f"{licence}",
        "## Training data\n\n"
        f"{total} titles: one sample per title, pairing frames of its first episode with its human-written "
        f"synopsis. {dataset_line}\n\n" + _table(["", "Value"], data_rows),
        "## Training settings\n\n" + (_table(["Hyperparameter", "Value"], hp_rows) if hp_rows else "–"),
        f"## Metrics ({info.eval_split} split, {info.val_samples} titles)\n\n"
        + (
            _table(["Metric", "Base model", "Fine-tuned", "Δ"], metric_rows)
            if metric_rows
            else "No metrics were recorded."
        )
        + "\n\nBLEU is sacrebleu corpus BLEU (0–100); ROUGE-L is the mean F-measure (0–1); CIDEr-D follows "
        "pycocoevalcap (×10, idf over the validation references).",
        "## Lineage\n\n" + _table(["", "Value"], lineage_rows),
        "## Limitations\n\n" + "\n".join(f"- {item}" for item in info.limitations),
    ]
    return str(ModelCard("\n\n".join(sections) + "\n"))


def write_model_card(adapter_dir: Path, info: ModelCardInfo) -> Path:
    """Write `<adapter_dir>/README.md` atomically; returns its path."""
    final = Path(adapter_dir) / "README.md"
    text = render_model_card(info)
    with atomic_path(final, suffix=".md") as tmp:
        tmp.write_text(text, encoding="utf-8")
    return final
