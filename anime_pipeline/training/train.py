"""LoRA/DoRA/QLoRA fine-tuning of SmolVLM2 on video samples, on `transformers.Trainer`.

The loop mechanics are Trainer's: gradient accumulation (the loss of every micro-batch is its summed answer-token
cross-entropy divided by Trainer's `num_items_in_batch`, the labelled tokens of the whole accumulation window
summed over all ranks: token-weighted, independent of how tokens fall into micro-batches), gradient clipping,
AdamW, the learning-rate schedule (`lr_factor`, as a `LambdaLR`), DDP under `torchrun` / `accelerate launch`,
checkpoints (`checkpoint-N`: adapter, optimizer, scheduler, per-rank RNG states, trainer state) and
`resume_from_checkpoint` (the data order fast-forwarded, the RNG streams restored). What stays ours
(`_SFTTrainer`): the loss (`compute_loss` → `answer_loss` through `LossModule`, so that DDP's hooks see it;
the frozen vision tower under no_grad, features from the feature cache when on), the deterministic epoch order
(`EpochSampler` via `_get_train_sampler`; accelerate gives rank r the micro-batches r, r + W, ..., so
micro-batch k of all ranks together is a contiguous chunk of the one-process order), the adapter-only
checkpoint weights (`_save` / `_load_from_checkpoint`), and `_Progress`, the callback that reports events
(start, eval, progress, checkpoint, done; rank 0 only) and writes `run_state.json` (the resume keys, the
world size and the run's loss history) into each checkpoint.

Why not trl's `SFTTrainer`: it keeps the pitfalls out by construction — no `max_length=1024` truncation
(P1; our collator drops frames instead and never cuts the answer), labels built from token offsets (P2), no
`prepare_model_for_kbit_training` blanket upcast (P3), the frozen vision tower runs under `no_grad` and
checkpointing is on the text model only (P4), and no torchvision processor (P8).

With `resume=True`, a run continues after the latest complete checkpoint in `output_dir/checkpoints` (one
holding `run_state.json`, written last); a checkpoint made with other data, model, adapter or schedule
settings (RESUME_KEYS: learning rate, its schedule and warmup, epochs, max steps, ...) or another world size
is refused with a `ResumeError` naming each change. The Dagster asset names the output dir after the data
version + config hash (`config.run_name`), so a retried or re-executed run resumes.

Samples that cannot fit `max_length` even with a single frame (`SampleTooLongError`) are found before
training (text only, no frame decoded), reported as `skipped` events, listed in `output_dir/skipped.json`
and left out; the rest trains.

Effective batch = batch_size × grad_accum × world size. The model is trained in the dtype it is loaded in
(`TrainConfig.dtype`; bf16 on CUDA): no autocast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import resource
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from anime_pipeline.paths import atomic_path
from anime_pipeline.training.config import TrainConfig, TrainResult

__all__ = ["ResumeError", "TrainConfig", "TrainResult", "evaluate", "lr_factor", "save_adapter", "train"]

Reporter = Callable[[dict], None]
RUN_STATE = "run_state.json"
_PATH_KEYS = ("base_model", "train_samples")  # compared relative to data_home (`_resume_view`)
# Fields that must match for a checkpoint to be resumed: data, model, adapter and the whole optimisation
# schedule (a resumed run must continue the same learning-rate curve over the same number of steps).
RESUME_KEYS = (
    "base_model",
    "train_samples",
    "train_split",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "use_dora",
    "qlora",
    "batch_size",
    "grad_accum",
    "max_frames",
    "max_length",
    "max_side",
    "seed",
    "mask_policy",
    "lr",
    "weight_decay",
    "warmup_steps",
    "lr_schedule",
    "max_grad_norm",
    "epochs",
    "max_steps",
)


class ResumeError(RuntimeError):
    """The checkpoint in output_dir belongs to a different run configuration."""


# Helpers -----------------------------------------------------------------------------------------
def lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    """Learning rate for optimizer step `step` (0-based) as a fraction of `cfg.lr`: linear warmup over
    `warmup_steps` (the first step already at 1/warmup_steps), then constant, linear or cosine decay to 0."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return 1.0
    span = max(1, total - cfg.warmup_steps)
    frac = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.lr_schedule == "linear":
        return 1.0 - frac
    return 0.5 * (1.0 + math.cos(math.pi * frac))


def peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "cpu_max_rss"


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _atomic_dir(final: Path, write: Callable[[Path], None]) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        write(tmp)
        if final.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
            os.replace(final, old / "x")
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_adapter(model, dest: Path) -> Path:
    """Standard peft adapter dir (adapter_config.json + adapter_model.safetensors), written atomically."""
    _atomic_dir(Path(dest), lambda tmp: model.save_pretrained(str(tmp), safe_serialization=True))
    return Path(dest)


def prepare_batch(batch: dict, device: torch.device, processor=None, *, non_blocking: bool = False) -> dict:
    """The model input step: batch → device, then uint8 `pixel_values` (collator `uint8_pixels`)
    normalised there."""
    from anime_pipeline.training.model import to_device

    batch = to_device(batch, device, non_blocking=non_blocking)
    pv = batch.get("pixel_values")
    if pv is not None and pv.dtype == torch.uint8:
        if processor is None:
            raise ValueError("uint8 pixel_values need the processor to normalise them")
        batch["pixel_values"] = processor.normalize_pixels(pv, batch.get("pixel_attention_mask"))
    return batch


def cached_features(cache, model, batch: dict):
    """Image features from the feature cache (None without one): keyed by the batch's `frame_ids` when
    present (pixels only for frames not cached yet), else by pixels."""
    if cache is None:
        return None
    return cache.get(
        model, batch.get("pixel_values"), batch.get("pixel_attention_mask"), frame_ids=batch.get("frame_ids")
    )


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over ranks (float64: integer counts stay exact); identity on one process."""
    if not _distributed():
        return [float(v) for v in values]
    import torch.distributed as dist

    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def _barrier() -> None:
    if _distributed():
        import torch.distributed as dist

        dist.barrier()


# Evaluation --------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model, loader, device: torch.device, *, cache=None, processor=None) -> float | None:
    """Mean answer-token loss over a loader of SFT batches (token-weighted). Under data parallelism each
    rank's loader holds its shard and the sums are added over ranks (every rank gets the result)."""
    from anime_pipeline.training.model import summed_answer_loss

    def prepared():
        for batch in loader:
            batch.pop("frames_kept", None)
            batch.pop("frames_total", None)
            batch = prepare_batch(batch, device, processor)
            yield batch, cached_features(cache, model, batch)

    total, count = summed_answer_loss(model, prepared())
    loss_total, token_count = _all_reduce_sum([total, count], device)
    return loss_total / token_count if token_count else None


# Trainer pieces ----------------------------------------------------------------------------------
class LossModule(torch.nn.Module):
    """`forward(batch, image_features)` → `answer_loss(model, ...)` (summed loss, labelled tokens): the module
    Trainer wraps in DDP, so that DDP's forward/backward hooks see the loss computation (which calls the
    base model's parts directly, not the peft wrapper's forward)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict, image_features=None):
        from anime_pipeline.training.model import answer_loss

        return answer_loss(self.model, batch, image_features=image_features)


def _ddp_ignore_frozen(module: torch.nn.Module) -> None:
    """Keep frozen weights and buffers out of DDP (loaded identically from disk on every rank; also keeps
    4-bit QLoRA weights out): DDP then neither broadcasts nor tracks them."""
    from torch.nn.parallel import DistributedDataParallel

    ignore = [n for n, p in module.named_parameters() if not p.requires_grad]
    ignore += [n for n, _ in module.named_buffers()]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, ignore)


def _make_trainer_class():
    from transformers import Trainer

    class _SFTTrainer(Trainer):
        """Trainer with our loss, sampler, schedule and adapter-only checkpoint weights (see module doc)."""

        def __init__(self, *args, cfg: TrainConfig, peft_model, cache, processor, sampler, **kwargs):
            self.cfg, self.peft_model, self.cache, self.processor, self.sampler = (
                cfg,
                peft_model,
                cache,
                processor,
                sampler,
            )
            self.window = {"loss": 0.0, "samples": 0, "items": 0}  # the current optimizer step, this rank
            self.frames_dropped = 0
            super().__init__(*args, **kwargs)
            # our loss is normalised by `num_items_in_batch` (counted over labels[:, 1:]), so Trainer must
            # count it and must not divide by the accumulation steps again
            self.model_accepts_loss_kwargs = True
            self._loss_shifts_labels = True
            self.loss_is_scaled_for_ga = True

        def _move_model_to_device(self, model, device):
            pass  # load_for_training placed it (4-bit weights cannot be moved)

        def _get_train_sampler(self, train_dataset=None):
            return self.sampler

        def create_scheduler(self, num_training_steps: int, optimizer=None):
            if self.lr_scheduler is None:
                cfg = self.cfg
                opt = optimizer or self.optimizer
                if opt is None:
                    raise RuntimeError("create_scheduler called before the optimizer was created")
                self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(
                    opt, lambda step: lr_factor(cfg, step, num_training_steps)
                )
                self._created_lr_scheduler = True
            return self.lr_scheduler

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            kept, total = inputs.pop("frames_kept", None), inputs.pop("frames_total", None)
            if kept is not None:
                self.frames_dropped += int((total - kept).sum())
            batch = prepare_batch(inputs, self.args.device, self.processor)
            feats = cached_features(self.cache, self.peft_model, batch)
            loss_sum, n = model(batch, feats)
            items = int(num_items_in_batch) if num_items_in_batch is not None else n
            self.window["loss"] += float(loss_sum.detach())
            self.window["samples"] += int(batch["input_ids"].shape[0])
            self.window["items"] = items
            # DDP averages gradients over ranks; × world size makes the step's gradient
            # Σ_ranks Σ token losses / labelled tokens of the whole window
            loss = loss_sum * self.accelerator.num_processes / max(items, 1)
            return (loss, None) if return_outputs else loss

        def _save(self, output_dir=None, state_dict=None):
            if self.args.should_save:
                self.peft_model.save_pretrained(
                    str(output_dir or self.args.output_dir), safe_serialization=True
                )

        def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
            from peft import set_peft_model_state_dict
            from safetensors.torch import load_file

            # loaded on the CPU and copied into the adapter parameters (wherever they are)
            weights = load_file(str(Path(resume_from_checkpoint) / "adapter_model.safetensors"))
            set_peft_model_state_dict(self.peft_model, weights)

    return _SFTTrainer


def _make_progress_callback():
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        """Events for the reporter (rank 0), the run's loss history, and `run_state.json` in each checkpoint."""

        def __init__(
            self,
            cfg: TrainConfig,
            report: Reporter,
            run: dict,
            *,
            n_train: int,
            world_size: int,
            device: torch.device,
            start_info: dict,
            evaluate_before=None,
        ):
            self.cfg, self.report, self.run, self.n_train = cfg, report, run, n_train
            self.world_size, self.device, self.start_info = world_size, device, start_info
            self.evaluate_before = evaluate_before  # val loss of the base model, once per run (not on resume)
            self.trainer = None
            self.t0 = time.perf_counter()
            self.run_samples = 0
            self.last_loss = float("nan")

        def on_train_begin(self, args, state, control, **kwargs):
            self.report(
                {
                    "event": "start",
                    "total_steps": state.max_steps,
                    "start_step": state.global_step,
                    **self.start_info,
                }
            )
            if self.evaluate_before is not None and self.run["val_loss_before"] is None:
                self.run["val_loss_before"] = self.evaluate_before()
                self.report({"event": "eval", "phase": "before", "val_loss": self.run["val_loss_before"]})
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):  # every rank: collectives
            w = self.trainer.window
            loss_sum, samples = _all_reduce_sum([w["loss"], w["samples"]], self.device)
            self.last_loss = loss_sum / w["items"] if w["items"] else float("nan")
            self.run["loss_history"].append(self.last_loss)
            self.run["samples_seen"] += int(samples)
            self.run_samples += int(samples)
            self.trainer.window = {"loss": 0.0, "samples": 0, "items": 0}

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            step = state.global_step
            if "loss" not in logs or not (step % self.cfg.log_every == 0 or step == state.max_steps):
                return
            elapsed = time.perf_counter() - self.t0
            event = {
                "event": "progress",
                "step": step,
                "total_steps": state.max_steps,
                "loss": self.last_loss,
                "lr": logs.get("learning_rate"),
                "samples_per_s": self.run_samples / elapsed if elapsed > 0 else 0.0,
                "epoch": self.run["samples_seen"] / self.n_train,
                "elapsed_s": elapsed,
            }
            if self.cfg.max_grad_norm and logs.get("grad_norm") is not None:
                event["grad_norm"] = float(logs["grad_norm"])  # before clipping
            self.report(event)

        def on_save(self, args, state, control, **kwargs):
            path = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            if args.should_save:  # written last: marks the checkpoint complete
                with atomic_path(path / RUN_STATE) as tmp:
                    tmp.write_text(
                        json.dumps(
                            {"config": self.cfg.to_dict(), "world_size": self.world_size, "state": self.run}
                        )
                    )
            self.report({"event": "checkpoint", "step": state.global_step, "path": str(path)})

    return _Progress


def _resume_view(config: dict) -> dict:
    """The resume keys of a config, a path inside its `data_home` written relative to it: the same data in
    another machine's own dir (a retry on a fresh pod, a subprocess with its own cache dir) is the same run."""
    home = config.get("data_home")
    out = {}
    for k in RESUME_KEYS:
        v = config.get(k)
        if k in _PATH_KEYS and home and isinstance(v, str):
            with contextlib.suppress(ValueError, OSError):
                v = "{data_home}/" + Path(v).resolve().relative_to(Path(home).resolve()).as_posix()
        out[k] = v
    return out


def _checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints (`checkpoint-N` holding run_state.json), oldest first."""
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        name, _, num = p.name.partition("-")
        if name == "checkpoint" and num.isdigit() and (p / RUN_STATE).is_file():
            out.append((int(num), p))
    return sorted(out)


# Training ----------------------------------------------------------------------------------------
def train(cfg: TrainConfig, reporter: Reporter | None = None) -> TrainResult:
    """Fine-tune `cfg.base_model` with adapters; returns metrics and the final adapter's location.

    Under `torchrun` / `accelerate launch` (`WORLD_SIZE` > 1) every rank calls this: data-parallel training,
    `reporter` called and files written on rank 0 only (every rank returns the result)."""
    from transformers import PrinterCallback, TrainingArguments

    from anime_pipeline.training.collator import VideoSFTCollator
    from anime_pipeline.training.data import EpochSampler, ShardVideoDataset, make_dataloader
    from anime_pipeline.training.model import load_for_training, param_report, resolve_device
    from anime_pipeline.training.processor import load_processor

    out_dir = Path(cfg.output_dir)
    ckpt_root = out_dir / "checkpoints"
    if cfg.torch_threads:
        torch.set_num_threads(int(cfg.torch_threads))
    wanted = resolve_device(cfg.device)
    workers = int(cfg.num_workers)
    pin = (wanted.type == "cuda") if cfg.pin_memory is None else bool(cfg.pin_memory)
    # the launcher's process group (gloo on CPU, nccl on CUDA) is joined here (accelerate's PartialState)
    args = TrainingArguments(
        output_dir=str(ckpt_root),
        per_device_train_batch_size=cfg.batch_size,
        gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.lr,
        weight_decay=cfg.weight_decay,
        max_grad_norm=float(cfg.max_grad_norm or 0.0),
        num_train_epochs=float(cfg.epochs),
        max_steps=cfg.max_steps or -1,
        optim="adamw_torch",
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="steps",
        save_steps=cfg.save_steps or 10**9,
        save_total_limit=cfg.keep_checkpoints,
        seed=cfg.seed,
        use_cpu=wanted.type == "cpu",
        report_to="none",
        disable_tqdm=True,
        remove_unused_columns=False,
        ddp_find_unused_parameters=False,
        ddp_broadcast_buffers=False,
        dataloader_num_workers=workers,
        dataloader_pin_memory=pin,
        dataloader_persistent_workers=workers > 0,
        dataloader_prefetch_factor=cfg.prefetch_factor if workers > 0 else None,
        # spawned, not forked: polars (and OpenMP) thread pools deadlock in forked children
        dataloader_multiprocessing_context="spawn" if workers > 0 else None,
        average_tokens_across_devices=True,
        bf16=False,
        fp16=False,
    )
    device = args.device
    rank, world_size = args.process_index, args.world_size
    main = rank == 0
    dp = world_size > 1
    report = (reporter or (lambda event: None)) if main else (lambda event: None)
    out_dir.mkdir(parents=True, exist_ok=True)
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    # Data ----------------------------------------------------------------------------------------
    processor = load_processor(cfg.base_model, max_side=cfg.max_side)
    uint8_pixels = (device.type == "cuda") if cfg.uint8_pixels is None else bool(cfg.uint8_pixels)
    collator = VideoSFTCollator(
        processor,
        max_length=cfg.max_length,
        mask_policy=cfg.mask_policy,
        padding_side="right",
        return_stats=True,
        uint8_pixels=uint8_pixels,
    )
    train_ds = ShardVideoDataset(
        cfg.train_samples, Path(cfg.data_home), cfg.max_frames, split=cfg.train_split
    )
    # a sample that cannot fit max_length even with one frame is recorded and left out, not fatal
    skipped = [dict(r, split="train") for r in train_ds.drop_too_long(collator)]
    if len(train_ds) == 0:
        raise ValueError(
            f"no training samples in {cfg.train_samples}"
            + (f" ({len(skipped)} longer than max_length={cfg.max_length})" if skipped else "")
        )
    val_ds = None
    if cfg.val_samples:
        val_ds = ShardVideoDataset(cfg.val_samples, Path(cfg.data_home), cfg.max_frames, split=cfg.val_split)
        skipped += [dict(r, split="val") for r in val_ds.drop_too_long(collator)]
        if cfg.val_max_samples is not None:
            val_ds.rows = val_ds.rows[: cfg.val_max_samples]
        if len(val_ds) == 0:
            val_ds = None
    for item in skipped:
        report({"event": "skipped", **item})
    if skipped and main:
        (out_dir / "skipped.json").write_text(json.dumps(skipped, indent=2) + "\n")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    val_loader = None
    if val_ds is not None:
        val_sampler = EpochSampler(len(val_ds), shuffle=False, rank=rank, world_size=world_size, pad=False)
        val_loader = make_dataloader(
            val_ds,
            collator,
            batch_size=cfg.eval_batch_size,
            shuffle=False,
            num_workers=workers,
            pin_memory=pin,
            prefetch_factor=cfg.prefetch_factor,
            sampler=val_sampler,
        )

    # Model ---------------------------------------------------------------------------------------
    model = load_for_training(cfg.base_model, dataclasses.replace(cfg, device=str(device)))
    params = param_report(model)
    dtype = next(p for p in model.parameters() if p.is_floating_point() and not p.requires_grad).dtype
    cache = None
    if cfg.feature_cache:
        from anime_pipeline.training.feature_cache import FeatureCache

        # shared by the ranks: entries are written atomically (same key → same features)
        cache = FeatureCache(
            Path(cfg.feature_cache_dir or out_dir / "feature-cache"),
            model,
            preprocessing=processor.preprocessing_id(),
        )
        collator.feature_cache = cache  # before any loader iterates: workers get it with the collator

    # Resume (every rank reads the checkpoint) ------------------------------------------------------
    run: dict[str, Any] = {"samples_seen": 0, "loss_history": [], "val_loss_before": None}
    resume_from = None
    existing = _checkpoints(ckpt_root)
    if existing and cfg.resume:
        step_no, ck = existing[-1]
        saved = json.loads((ck / RUN_STATE).read_text())
        then, now = _resume_view(saved["config"]), _resume_view(cfg.to_dict())
        mismatch = {k: (then[k], now[k]) for k in RESUME_KEYS if then[k] != now[k]}
        if saved.get("world_size", 1) != world_size:
            mismatch["world_size"] = (saved.get("world_size", 1), world_size)
        if mismatch:
            changes = ", ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, (a, b) in mismatch.items())
            raise ResumeError(
                f"cannot resume {ck}: it was made with other settings ({changes}); a resumed "
                "run must keep the data, model and schedule. Use another output_dir, or "
                "resume=false to start afresh"
            )
        run = saved["state"]
        resume_from = (step_no, ck)
        report({"event": "resume", "step": step_no, "checkpoint": str(ck)})
    _barrier()  # every rank has read the checkpoints before rank 0 deletes any
    if resume_from is None and ckpt_root.exists() and main:
        shutil.rmtree(ckpt_root)

    # Trainer -------------------------------------------------------------------------------------
    module = LossModule(model)
    if dp:
        _ddp_ignore_frozen(module)
    progress = _make_progress_callback()(
        cfg,
        report,
        run,
        n_train=len(train_ds),
        world_size=world_size,
        device=device,
        start_info={
            "device": str(device),
            "dtype": str(dtype).replace("torch.", ""),
            "train_samples": len(train_ds),
            "val_samples": len(val_ds) if val_ds else 0,
            "params": params,
            **({"world_size": world_size} if dp else {}),
        },
        evaluate_before=(lambda: evaluate(model, val_loader, device, cache=cache, processor=processor))
        if val_loader is not None
        else None,
    )
    trainer = _make_trainer_class()(
        model=module,
        args=args,
        train_dataset=train_ds,
        data_collator=collator,
        callbacks=[progress],
        cfg=cfg,
        peft_model=model,
        cache=cache,
        processor=processor,
        sampler=EpochSampler(len(train_ds), shuffle=True, seed=cfg.seed),
    )
    trainer.remove_callback(PrinterCallback)  # would print Trainer's log dicts on stdout
    progress.trainer = trainer
    trainer.train(resume_from_checkpoint=str(resume_from[1]) if resume_from else None)
    train_seconds = time.perf_counter() - progress.t0
    total_steps = trainer.state.max_steps

    # Final ---------------------------------------------------------------------------------------
    val_after = None
    if val_loader is not None:
        val_after = evaluate(model, val_loader, device, cache=cache, processor=processor)
        report({"event": "eval", "phase": "after", "val_loss": val_after})
    adapter_dir = out_dir / "adapter"
    if main:
        save_adapter(model, adapter_dir)
    hits, misses = (cache.hits, cache.misses) if cache else (0, 0)
    frames_dropped, hits, misses = (
        int(x) for x in _all_reduce_sum([trainer.frames_dropped, hits, misses], device)
    )
    _barrier()  # the adapter is written
    mem, mem_kind = peak_memory(device)
    hist = run["loss_history"]
    result = TrainResult(
        steps=trainer.state.global_step,
        total_steps=total_steps,
        resumed_from_step=resume_from[0] if resume_from else None,
        epochs=run["samples_seen"] / len(train_ds),
        train_samples=len(train_ds),
        val_samples=len(val_ds) if val_ds else 0,
        samples_seen=run["samples_seen"],
        loss_start=hist[0] if hist else None,
        loss_end=hist[-1] if hist else None,
        loss_history=list(hist),
        val_loss_before=run["val_loss_before"],
        val_loss_after=val_after,
        samples_per_s=progress.run_samples / train_seconds if train_seconds > 0 else 0.0,
        train_seconds=train_seconds,
        peak_memory_bytes=mem,
        peak_memory_kind=mem_kind,
        device=str(device),
        dtype=str(dtype).replace("torch.", ""),
        adapter_path=str(adapter_dir),
        adapter_bytes=dir_bytes(adapter_dir),
        trainable_params=params["total"]["trainable"],
        frozen_params=params["total"]["frozen"],
        params=params,
        frames_dropped=frames_dropped,
        feature_cache_hits=hits,
        feature_cache_misses=misses,
        world_size=world_size,
        skipped_samples=len(skipped),
    )
    if main:
        cfg.to_json(out_dir / "train_config.json")
        (out_dir / "train_result.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    report({"event": "done", **result.metadata()})
    return result
