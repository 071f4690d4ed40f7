"""Training configuration and result records (no torch import: safe for the Dagster code location)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    """Everything `train()` reads. Paths may be relative to the working directory.

    Model / adapters:
      base_model: hub id or local directory of a SmolVLM checkpoint (the tiny model dir in the demo).
      lora_r, lora_alpha, lora_dropout: LoRA rank, scaling numerator, dropout on the adapter input.
      use_dora: DoRA (weight-decomposed LoRA) instead of plain LoRA.
      qlora: load the text model in 4-bit NF4 via bitsandbytes (CUDA only; raises elsewhere).
      gradient_checkpointing: non-reentrant activation checkpointing on the text model only.
      attn_implementation: "auto" (flash_attention_2 on CUDA + flash_attn + bf16, else sdpa), or a name.
      device: "auto" (cuda if available, else cpu) or a torch device string.
      dtype: "auto" (bf16 on CUDA with bf16 support, else fp32), "bf16", "fp16" or "fp32".
    Data:
      train_samples / val_samples: SAMPLES-schema Parquet files (val optional: no val losses then).
      train_split / val_split: keep only rows whose `split` column has this value (None = all rows), so
        both may point at one samples file.
      data_home: root the samples' `frames_path` are relative to.
      max_frames: frames per sample read from the shard (uniform, first/last kept); None = all.
      max_length: token budget per sample; longer samples lose frames (never the answer); None = no limit.
      max_side: first image-resize stage (long side); None = the vision tower's image_size.
      mask_policy: "assistant_only" (answer + its <end_of_utterance>) or "all_text".
      val_max_samples: evaluate on at most this many val samples (the first ones); None = all.
      num_workers, pin_memory (None = CUDA available), prefetch_factor: DataLoader settings
        (persistent workers when num_workers > 0).
      uint8_pixels: the collator ships uint8 pixels and they are normalised on the training device
        (4× fewer host→device bytes, same values); None = on for CUDA, off on CPU (where it would only
        move work from the loader workers to the training loop).
    Optimisation:
      lr, weight_decay, warmup_steps, lr_schedule ("constant" | "linear" | "cosine", after warmup),
      max_grad_norm (clipping; 0/None = off), epochs, max_steps (optimizer steps; overrides epochs when
      set), batch_size (samples per micro-batch), grad_accum (micro-batches per optimizer step),
      eval_batch_size, seed (init, data order, dropout), torch_threads (CPU intra-op threads; None = torch
      default).
    Run control:
      output_dir: checkpoints/, adapter/, train_config.json and train_result.json go here.
      save_steps: checkpoint every N optimizer steps (0 = only the final one); keep_checkpoints: how
        many to keep; resume: continue from the latest checkpoint in output_dir (else start afresh and
        delete old checkpoints); log_every: progress report every N steps.
      feature_cache: reuse post-connector vision features across epochs (safetensors under
        feature_cache_dir, default output_dir/feature-cache).
    """

    base_model: str
    train_samples: str
    output_dir: str
    data_home: str = "."
    val_samples: str | None = None
    train_split: str | None = "train"
    val_split: str | None = "val"
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    use_dora: bool = False
    qlora: bool = False
    gradient_checkpointing: bool = True
    attn_implementation: str = "auto"
    device: str = "auto"
    dtype: str = "auto"
    max_frames: int | None = 64
    max_length: int | None = None
    max_side: int | None = None
    mask_policy: str = "assistant_only"
    val_max_samples: int | None = None
    num_workers: int = 0
    pin_memory: bool | None = None
    prefetch_factor: int = 2
    uint8_pixels: bool | None = None
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: str = "cosine"
    max_grad_norm: float | None = 1.0
    epochs: float = 1.0
    max_steps: int | None = None
    batch_size: int = 1
    grad_accum: int = 1
    eval_batch_size: int = 4
    seed: int = 0
    torch_threads: int | None = None
    save_steps: int = 50
    keep_checkpoints: int = 2
    resume: bool = True
    log_every: int = 1
    feature_cache: bool = False
    feature_cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.lr_schedule not in ("constant", "linear", "cosine"):
            raise ValueError(f"lr_schedule must be constant, linear or cosine, not {self.lr_schedule!r}")
        for name in ("batch_size", "grad_accum", "eval_batch_size", "log_every", "lora_r"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError("max_steps must be >= 1 or null")
        if self.max_steps is None and not self.epochs > 0:
            raise ValueError("epochs must be > 0 when max_steps is null")
        if self.save_steps < 0 or self.keep_checkpoints < 1:
            raise ValueError("save_steps must be >= 0 and keep_checkpoints >= 1")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=2, sort_keys=True)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig fields: {unknown}")
        return cls(**data)

    @classmethod
    def from_json(cls, path_or_text: str | Path) -> TrainConfig:
        p = Path(path_or_text) if not str(path_or_text).lstrip().startswith("{") else None
        text = p.read_text() if p is not None else str(path_or_text)
        return cls.from_dict(json.loads(text))


# Run-control fields: where files go, how often to log/save, how many loader workers. They do not change
# what is trained, so they are left out of the run's identity (`run_name`).
RUN_CONTROL_FIELDS = frozenset(
    {
        "output_dir",
        "log_every",
        "num_workers",
        "pin_memory",
        "prefetch_factor",
        "torch_threads",
        "save_steps",
        "keep_checkpoints",
        "resume",
        "feature_cache",
        "feature_cache_dir",
    }
)


def config_hash(cfg: TrainConfig, *extra: str) -> str:
    """SHA-256 (hex) of every field that changes what is trained (all but RUN_CONTROL_FIELDS) + `extra`."""
    import hashlib

    ident = {k: v for k, v in cfg.to_dict().items() if k not in RUN_CONTROL_FIELDS}
    return hashlib.sha256(json.dumps([ident, list(extra)], sort_keys=True, default=str).encode()).hexdigest()


def run_name(cfg: TrainConfig, data_version: str, code_version: str = "") -> str:
    """Deterministic run-directory name `<data version[:12]>-<config hash[:12]>`: a retried or re-executed
    run of the same data and configuration gets the same directory and resumes from its checkpoints (a
    finished one reports its result again without training); any other data or setting gets a new one."""
    if not data_version:
        raise ValueError("run_name needs a data version")
    return f"{data_version[:12]}-{config_hash(cfg, data_version, code_version)[:12]}"


@dataclass
class TrainResult:
    steps: int  # optimizer steps reached (including those before a resume)
    total_steps: int
    resumed_from_step: int | None
    epochs: float  # passes over the training set
    train_samples: int
    val_samples: int
    samples_seen: int  # training samples consumed in total (all runs)
    loss_start: float | None  # loss of the first optimizer step
    loss_end: float | None  # loss of the last optimizer step
    loss_history: list[float]
    val_loss_before: float | None  # mean answer-token loss of the base model on val
    val_loss_after: float | None
    samples_per_s: float  # training throughput (eval excluded; all data-parallel ranks together)
    train_seconds: float  # this process's training time
    peak_memory_bytes: int
    peak_memory_kind: str  # "cuda_max_allocated" | "cpu_max_rss"
    device: str
    dtype: str
    adapter_path: str
    adapter_bytes: int
    trainable_params: int
    frozen_params: int
    params: dict = field(default_factory=dict)  # per component: {"trainable": n, "frozen": n}
    frames_dropped: int = 0  # frames dropped by the max_length policy (this process)
    feature_cache_hits: int = 0
    feature_cache_misses: int = 0
    skipped_samples: int = 0  # train + val samples left out: too long for max_length even with one frame
    # (listed with their errors in output_dir/skipped.json)
    world_size: int = 1  # data-parallel processes (samples/s, samples_seen, frames_dropped and the
    # feature-cache counts are totals over all of them; peak memory and device are rank 0's)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def metadata(self) -> dict[str, Any]:
        """Flat, JSON-friendly values for Dagster metadata (no None, no long lists)."""
        out: dict[str, Any] = {}
        for k, v in self.to_dict().items():
            if v is None or k == "loss_history":
                continue
            if k == "params":
                for comp, d in v.items():
                    out[f"params_{comp}_trainable"] = d["trainable"]
                    out[f"params_{comp}_frozen"] = d["frozen"]
                continue
            out[k] = v
        return out
