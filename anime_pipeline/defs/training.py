"""Training stage: `finetuned_adapter` (group `training`), launched out of process through Dagster Pipes."""

import json
import subprocess
from pathlib import Path

import dagster as dg
from pydantic import Field

from anime_pipeline.defs._meta import (
    dir_bytes,
    mb,
    path_meta,
    stage_asset,
    training_metadata,
)
from anime_pipeline.defs.dataset import SPLIT_FILES, pull_split, split_data_version, train_val_split
from anime_pipeline.defs.media import DEMO_FRAMES, LIVE_FRAMES
from anime_pipeline.defs.resources import DataStoreResource, GpuLauncherResource, PipelineResource
from anime_pipeline.training.config import TrainConfig

CODE_VERSION = "finetuned_adapter-v1"
REPO_ROOT = Path(__file__).resolve().parents[2]


# Each profile's training defaults, in one place: the launchpad shows them prefilled (resolved for the
# profile the code location was loaded with), and a field set to null falls back to them at run time.
TRAINING_DEFAULTS = {
    "demo": {
        "epochs": 60.0,
        "learning_rate": 3e-3,
        "batch_size": 4,
        "max_frames": DEMO_FRAMES,
        "max_length": 0,
    },
    "live": {
        "epochs": 3.0,
        "learning_rate": 1e-4,
        "batch_size": 1,
        "max_frames": LIVE_FRAMES,
        "max_length": 0,
    },
}


def _location_defaults() -> dict:
    """The defaults of the profile this code location runs (ANIME_PIPELINE_PROFILE, read through Settings like
    the resources are), so that `dagster dev` prefills what a run would use."""
    from anime_pipeline.settings import Settings

    return TRAINING_DEFAULTS[Settings.from_env().profile]


_DEFAULTS = _location_defaults()


class FinetuneConfig(dg.Config):
    """Hyperparameters; the main ones default to the profile's values (tiny and quick in the demo)."""

    epochs: float | None = Field(
        default=_DEFAULTS["epochs"], description="Passes over the train split (demo 60, live 3)."
    )
    max_steps: int | None = Field(
        default=None, description="Stop after this many optimizer steps (overrides epochs)."
    )
    learning_rate: float | None = Field(
        default=_DEFAULTS["learning_rate"], description="Peak AdamW learning rate (demo 3e-3, live 1e-4)."
    )
    batch_size: int | None = Field(
        default=_DEFAULTS["batch_size"], description="Samples per device step (demo 4, live 1)."
    )
    grad_accum: int = Field(default=1, description="Device steps per optimizer step.")
    lora_r: int = Field(default=TrainConfig.lora_r, description="LoRA rank.")
    lora_alpha: int = Field(default=TrainConfig.lora_alpha, description="LoRA alpha (scaling = alpha / r).")
    lora_dropout: float = Field(default=TrainConfig.lora_dropout, description="Dropout on the LoRA branch.")
    use_dora: bool = Field(
        default=TrainConfig.use_dora, description="Weight-decomposed LoRA (DoRA) instead of plain LoRA."
    )
    qlora: bool = Field(
        default=TrainConfig.qlora, description="Load the base model in 4-bit (bitsandbytes; CUDA only)."
    )
    max_frames: int | None = Field(
        default=_DEFAULTS["max_frames"],
        description=f"Frames per sample fed to the model, spread uniformly (demo {DEMO_FRAMES}, live {LIVE_FRAMES}: "
        "the frames a shard holds by default); 0: every frame in the shard.",
    )
    max_length: int | None = Field(
        default=_DEFAULTS["max_length"],
        description="Token budget per sample; frames are dropped uniformly to fit, the answer never. 0: no limit.",
    )
    num_workers: int | None = Field(
        default=None, description="DataLoader worker processes decoding frames (demo 0: tiny frames, live 2)."
    )
    feature_cache: bool = Field(
        default=False, description="Cache the frozen vision tower's features across epochs/runs."
    )
    save_steps: int = Field(
        default=50, description="Checkpoint every N optimizer steps (a run resumes from the last)."
    )
    seed: int = Field(default=0, description="Random seed.")
    log_every: int = Field(
        default=10, description="Report step, loss and samples/s to the run log every N steps."
    )
    torch_threads: int | None = Field(
        default=None,
        description="CPU threads for torch (demo 1: the tiny model's ops are too small to split; live: torch's default).",
    )


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def recorded_split_version(context, settings, data_store: DataStoreResource) -> str:
    """The data version `train_val_split` recorded (no need to fetch every shard to hash it again); computed
    from the split and its shards when the record is missing."""
    ev = context.instance.get_latest_materialization_event(dg.AssetKey("train_val_split"))
    md = ev.asset_materialization.metadata if ev is not None and ev.asset_materialization else {}
    recorded = getattr(md.get("data_version"), "value", None)
    if isinstance(recorded, str) and len(recorded) == 64:
        return recorded
    pull_split(data_store, frames=True)
    return split_data_version(settings.home)


def resolve_base_model(settings, data_store: DataStoreResource | None = None) -> str:
    """The base model for this profile; the demo's tiny model is built on first use and kept in the data store."""
    if settings.profile == "demo" and not settings.base_model:
        if data_store is not None:
            data_store.pull("tiny-model", missing_ok=True)
        from anime_pipeline.training.tiny import build_tiny_model

        build_tiny_model(settings.tiny_model_dir)
        if data_store is not None:
            data_store.push("tiny-model")
    return settings.resolved_base_model


def build_train_config(config: FinetuneConfig, settings, run_dir: Path, base_model: str):
    demo = settings.profile == "demo"
    d = TRAINING_DEFAULTS[settings.profile]
    return TrainConfig(
        base_model=base_model,
        train_samples=str(settings.splits_dir / "train.parquet"),
        val_samples=str(settings.splits_dir / "val.parquet"),
        data_home=str(settings.home),
        output_dir=str(run_dir),
        epochs=config.epochs if config.epochs is not None else d["epochs"],
        max_steps=config.max_steps,
        lr=config.learning_rate if config.learning_rate is not None else d["learning_rate"],
        batch_size=config.batch_size or int(d["batch_size"]),
        warmup_steps=10 if demo else 50,
        grad_accum=config.grad_accum,
        lora_r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        use_dora=config.use_dora,
        qlora=config.qlora,
        max_frames=(config.max_frames if config.max_frames is not None else int(d["max_frames"]))
        or None,  # 0: all
        max_length=config.max_length or None,  # 0 / null: no limit
        num_workers=config.num_workers if config.num_workers is not None else (0 if demo else 2),
        feature_cache=config.feature_cache,
        feature_cache_dir=str(settings.home / "feature-cache") if config.feature_cache else None,
        save_steps=config.save_steps,
        seed=config.seed,
        log_every=config.log_every,
        torch_threads=config.torch_threads if config.torch_threads is not None else (1 if demo else None),
    )


@stage_asset(
    "training",
    deps=[train_val_split],
    kinds={"pytorch", "peft"},
    code_version=CODE_VERSION,
    pool="gpu",
    extra_tags={"hardware": "gpu"},
)
def finetuned_adapter(
    context: dg.AssetExecutionContext,
    config: FinetuneConfig,
    pipeline: PipelineResource,
    data_store: DataStoreResource,
    gpu_launcher: GpuLauncherResource,
) -> dg.MaterializeResult:
    """A LoRA/DoRA adapter for the base VLM, trained on the train split (loss on the synopsis only).

    Launched through Dagster Pipes by the `gpu_launcher` resource (`python -m anime_pipeline.gpu_job`): a
    subprocess here, a GPU pod / ECS task in production (docs/DEPLOYMENT.md); the job fetches its inputs
    from the data store and publishes the run dir (adapter, checkpoints) there. Progress streams into the run log; the
    metadata records the lineage: base model, data version, code version, git commit, every
    hyperparameter, losses, samples/s, peak memory, adapter path and size.
    """
    s = pipeline.settings()
    base_model = resolve_base_model(s, data_store)
    data_version = recorded_split_version(context, s, data_store)
    # Deterministic run dir (data version + config hash): a retry / re-execution resumes its checkpoints.
    from anime_pipeline.training.config import run_name as training_run_name

    run_name = training_run_name(
        build_train_config(config, s, s.models_dir, base_model), data_version, CODE_VERSION
    )
    run_dir = s.models_dir / run_name
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg = build_train_config(config, s, run_dir, base_model)
    cfg_path = run_dir / "train_config.json"
    cfg_path.write_text(cfg.to_json())
    commit = git_commit()
    context.log.info(f"training {base_model} → {run_dir} (data version {data_version[:12]})")

    from anime_pipeline.gpu_job import to_ref, train_job

    pull_split(data_store, frames=False)
    run_rel = f"models/{run_name}"
    data_store.push(f"{run_rel}/train_config.json")
    job = train_job(
        store=data_store.worker_store(),
        train_config=json.loads(cfg.to_json()),
        home=s.home,
        inputs=[*SPLIT_FILES, *_frames_of_split(s.home)],
        run_dir=run_rel,
        asset_key=context.asset_key.to_user_string(),
    )
    invocation = gpu_launcher.run(context, job)
    reported = invocation.get_materialize_result()
    metadata = dict(reported.metadata or {})
    adapter_rel = f"{run_rel}/adapter"
    data_store.pull(adapter_rel)  # the worker published it: the adapter as stored, not a local leftover
    adapter_dir = run_dir / "adapter"
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
    data_store.push(f"{run_rel}/lineage.json")
    metadata = training_metadata(metadata, lineage["hyperparameters"])  # tables, rounded, units in the names
    metadata.update(
        {
            "base_model": base_model,
            "base_model_revision": lineage["base_model_revision"],
            "data_version": data_version,
            "code_version": CODE_VERSION,
            "git_commit": commit,
            "adapter_path": path_meta(data_store.uri(adapter_rel)),
            "adapter_key": adapter_rel,  # relative to the data home: how caption_eval's worker finds it
            "base_model_ref": to_ref(base_model, s.home),
            "adapter_mb": mb(dir_bytes(adapter_dir)),
        }
    )
    return dg.MaterializeResult(
        metadata=metadata, data_version=dg.DataVersion(f"{data_version[:12]}-{run_name}")
    )


def _frames_of_split(home: Path) -> list[str]:
    import polars as pl

    train, val = (pl.read_parquet(Path(home) / p) for p in SPLIT_FILES)
    return sorted(set(pl.concat([train, val])["frames_path"].to_list()))


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
