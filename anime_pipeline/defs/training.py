"""Training stage: `finetuned_adapter` (group `training`), launched out of process through Dagster Pipes."""


import json
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Optional

import dagster as dg
from pydantic import Field

from anime_pipeline.defs._meta import dir_bytes, path_meta
from anime_pipeline.defs.dataset import split_data_version, train_val_split
from anime_pipeline.defs.resources import PipelineResource

CODE_VERSION = "finetuned_adapter-v1"
REPO_ROOT = Path(__file__).resolve().parents[2]


class FinetuneConfig(dg.Config):
    """Hyperparameters; unset fields take the profile's default (tiny and quick in the demo)."""

    epochs: Optional[float] = Field(default=None, description="Passes over the train split (demo 60, live 3).")
    max_steps: Optional[int] = Field(default=None, description="Stop after this many optimizer steps (overrides epochs).")
    learning_rate: Optional[float] = Field(default=None, description="Peak AdamW learning rate (demo 3e-3, live 1e-4).")
    batch_size: Optional[int] = Field(default=None, description="Samples per device step (demo 4, live 1).")
    grad_accum: int = Field(default=1, description="Device steps per optimizer step.")
    lora_r: int = Field(default=16, description="LoRA rank.")
    lora_alpha: int = Field(default=32, description="LoRA alpha (scaling = alpha / r).")
    lora_dropout: float = Field(default=0.05, description="Dropout on the LoRA branch.")
    use_dora: bool = Field(default=False, description="Weight-decomposed LoRA (DoRA) instead of plain LoRA.")
    qlora: bool = Field(default=False, description="Load the base model in 4-bit (bitsandbytes; CUDA only).")
    max_frames: Optional[int] = Field(default=None, description="Frames per sample fed to the model (unset: all in the shard).")
    max_length: Optional[int] = Field(
        default=None, description="Token budget per sample; frames are dropped uniformly to fit, the answer never."
    )
    num_workers: Optional[int] = Field(
        default=None, description="DataLoader worker processes decoding frames (demo 0: tiny frames, live 2)."
    )
    feature_cache: bool = Field(default=False, description="Cache the frozen vision tower's features across epochs/runs.")
    save_steps: int = Field(default=50, description="Checkpoint every N optimizer steps (a run resumes from the last).")
    seed: int = Field(default=0, description="Random seed.")
    log_every: int = Field(default=10, description="Report step, loss and samples/s to the run log every N steps.")
    torch_threads: Optional[int] = Field(
        default=None, description="CPU threads for torch (demo 1: the tiny model's ops are too small to split; live: torch's default)."
    )


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def resolve_base_model(settings) -> str:
    """The base model for this profile; the demo's tiny model is built locally on first use."""
    if settings.profile == "demo" and not settings.base_model:
        from anime_pipeline.training.tiny import build_tiny_model

        build_tiny_model(settings.tiny_model_dir)
    return settings.resolved_base_model


def build_train_config(config: FinetuneConfig, settings, run_dir: Path, base_model: str):
    from anime_pipeline.training.config import TrainConfig

    demo = settings.profile == "demo"
    return TrainConfig(
        base_model=base_model,
        train_samples=str(settings.splits_dir / "train.parquet"),
        val_samples=str(settings.splits_dir / "val.parquet"),
        data_home=str(settings.home),
        output_dir=str(run_dir),
        epochs=config.epochs if config.epochs is not None else (60.0 if demo else 3.0),
        max_steps=config.max_steps,
        lr=config.learning_rate if config.learning_rate is not None else (3e-3 if demo else 1e-4),
        batch_size=config.batch_size or (4 if demo else 1),
        warmup_steps=10 if demo else 50,
        grad_accum=config.grad_accum,
        lora_r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        use_dora=config.use_dora,
        qlora=config.qlora,
        max_frames=config.max_frames,
        max_length=config.max_length,
        num_workers=config.num_workers if config.num_workers is not None else (0 if demo else 2),
        feature_cache=config.feature_cache,
        feature_cache_dir=str(settings.home / "feature-cache") if config.feature_cache else None,
        save_steps=config.save_steps,
        seed=config.seed,
        log_every=config.log_every,
        torch_threads=config.torch_threads if config.torch_threads is not None else (1 if demo else None),
    )


@dg.asset(
    group_name="training",
    deps=[train_val_split],
    kinds={"pytorch", "peft"},
    code_version=CODE_VERSION,
    pool="gpu",
)
def finetuned_adapter(
    context: dg.AssetExecutionContext,
    config: FinetuneConfig,
    pipeline: PipelineResource,
    pipes_client: dg.PipesSubprocessClient,
) -> dg.MaterializeResult:
    """A LoRA/DoRA adapter for the base VLM, trained on the train split (loss on the synopsis only).

    Launched through Dagster Pipes (`python -m anime_pipeline.training --config …`): a subprocess here,
    a GPU pod / ECS task in production (docs/DEPLOYMENT.md). Progress streams into the run log; the
    metadata records the lineage: base model, data version, code version, git commit, every
    hyperparameter, losses, samples/s, peak memory, adapter path and size.
    """
    s = pipeline.settings()
    base_model = resolve_base_model(s)
    run_name = f"{time.strftime('%Y%m%d-%H%M%S')}-{context.run_id[:8] if context.run_id else uuid.uuid4().hex[:8]}"
    run_dir = s.models_dir / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = build_train_config(config, s, run_dir, base_model)
    cfg_path = run_dir / "train_config.json"
    cfg_path.write_text(cfg.to_json())
    data_version = split_data_version(s.home)
    commit = git_commit()
    context.log.info(f"training {base_model} → {run_dir} (data version {data_version[:12]})")

    invocation = pipes_client.run(
        context=context,
        command=[sys.executable, "-m", "anime_pipeline.training", "--config", str(cfg_path)],
        extras={"data_version": data_version, "code_version": CODE_VERSION},
    )
    reported = invocation.get_materialize_result()
    metadata = dict(reported.metadata or {})
    reported_path = metadata.get("adapter_path")  # a MetadataValue from the Pipes report
    adapter_dir = Path(str(getattr(reported_path, "value", reported_path))) if reported_path else run_dir / "adapter"
    lineage = {
        "base_model": base_model,
        "base_model_revision": _model_revision(base_model),
        "data_version": data_version,
        "code_version": CODE_VERSION,
        "git_commit": commit,
        "run_dir": str(run_dir),
        "hyperparameters": json.loads(cfg.to_json()),
    }
    (run_dir / "lineage.json").write_text(json.dumps(lineage, indent=2))
    metadata.update(
        {
            "base_model": base_model,
            "base_model_revision": lineage["base_model_revision"],
            "data_version": data_version,
            "code_version": CODE_VERSION,
            "git_commit": commit,
            "hyperparameters": dg.MetadataValue.json(lineage["hyperparameters"]),
            "adapter_path": path_meta(adapter_dir),
            "adapter_bytes": dir_bytes(adapter_dir),
        }
    )
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(f"{data_version[:12]}-{run_name}"))


def _model_revision(base_model: str) -> str:
    """Lineage of the base weights: the Hub commit of a cached model id, or a content hash of a local dir."""
    import hashlib

    p = Path(base_model)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(p.iterdir()):
            if f.suffix == ".json":  # configs: content; weights: name and size (hashing GBs is not worth it)
                h.update(f.name.encode() + f.read_bytes())
            elif f.suffix == ".safetensors":
                h.update(f"{f.name}:{f.stat().st_size}".encode())
        return "local:" + h.hexdigest()[:12]
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(base_model, local_files_only=True)).name  # snapshots/<commit>
    except (LocalEntryNotFoundError, HFValidationError, OSError) as e:
        # Not in the local cache: recorded as such; the training process reports why it cannot load it.
        return f"unknown ({type(e).__name__})"
