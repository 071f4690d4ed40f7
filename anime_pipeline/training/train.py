"""LoRA/DoRA/QLoRA fine-tuning of SmolVLM2 on video samples: a plain, resumable training loop.

Why a plain loop and not trl's `SFTTrainer`: it keeps the pitfalls out by construction — no
`max_length=1024` truncation (P1; our collator drops frames instead and never cuts the answer), labels
built from token offsets (P2), no `prepare_model_for_kbit_training` blanket upcast (P3), the frozen
vision tower runs under `no_grad` and checkpointing is on the text model only (P4), and no torchvision
processor (P8).

Per optimizer step: `grad_accum` micro-batches, loss = summed token cross-entropy / labelled tokens in
the whole window (token-weighted, independent of how tokens fall into micro-batches), gradient clipping,
torch AdamW over the adapter parameters, warmup + schedule set by hand each step.

Checkpoints (every `save_steps`, and at the end) hold the adapter (safetensors), the optimizer state
(`torch.save` of tensors/primitives, loaded with `weights_only=True`), the RNG states and a JSON state
(step, loss history, ...). With `resume=True`, a run continues after the latest complete checkpoint in
`output_dir/checkpoints`, with the same data order (deterministic per seed and epoch) and RNG streams; a
checkpoint made with other data, model, adapter or schedule settings (RESUME_KEYS: learning rate, its
schedule and warmup, epochs, max steps, ...) is refused with a `ResumeError` naming each change. The
Dagster asset names the output dir after the data version + config hash (`config.run_name`), so a retried
or re-executed run resumes.

Samples that cannot fit `max_length` even with a single frame (`SampleTooLongError`) are found before
training (text only, no frame decoded), reported as `skipped` events, listed in `output_dir/skipped.json`
and left out; the rest trains.

Data parallelism (launched by `torchrun` / `accelerate launch`, `WORLD_SIZE` > 1; see `distributed`):
one process per device (`cuda:LOCAL_RANK`, or CPU with Gloo), the adapter model wrapped in
`DistributedDataParallel`, each rank an interleaved slice of the epoch order (padded to the same number
of steps), the token-weighted loss normalised by the labelled-token count summed over all ranks, and only
rank 0 writing checkpoints / adapter / results and reporting. Effective batch = batch_size × grad_accum ×
world size; a checkpoint resumes only with the same world size. With one process nothing changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import random
import re
import resource
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from anime_pipeline.training.config import TrainConfig, TrainResult

__all__ = ["ResumeError", "TrainConfig", "TrainResult", "evaluate", "lr_at", "save_adapter", "train"]

Reporter = Callable[[dict], None]
CHECKPOINT_RE = re.compile(r"^step-(\d{8})$")
# Fields that must match for a checkpoint to be resumed: data, model, adapter and the whole optimisation
# schedule (a resumed run must continue the same learning-rate curve over the same number of steps).
RESUME_KEYS = ("base_model", "train_samples", "train_split", "lora_r", "lora_alpha", "lora_dropout", "use_dora",
               "qlora", "batch_size", "grad_accum", "max_frames", "max_length", "max_side", "seed", "mask_policy",
               "lr", "weight_decay", "warmup_steps", "lr_schedule", "max_grad_norm", "epochs", "max_steps")


class ResumeError(RuntimeError):
    """The checkpoint in output_dir belongs to a different run configuration."""


# Helpers -----------------------------------------------------------------------------------------
def lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    """Learning rate for optimizer step `step` (0-based)."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    span = max(1, total - cfg.warmup_steps)
    frac = min(1.0, (step - cfg.warmup_steps) / span)
    if cfg.lr_schedule == "linear":
        return cfg.lr * (1.0 - frac)
    return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * frac))


def peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "cuda_max_allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "cpu_max_rss"


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def _labelled(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != -100).sum())


def _checkpoints(root: Path) -> list[tuple[int, Path]]:
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = CHECKPOINT_RE.match(p.name)
        if m and (p / "state.json").is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def _rng_state(device: torch.device | None = None) -> tuple[dict, dict]:
    """RNG states; with `device` (data-parallel ranks) only that CUDA device's, as `cuda`."""
    tensors = {"torch": torch.get_rng_state()}
    if device is not None:
        if device.type == "cuda":
            tensors["cuda"] = torch.cuda.get_rng_state(device)
    elif torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{i}"] = s
    py = random.getstate()
    return tensors, {"python": [py[0], list(py[1]), py[2]]}


def _set_rng_state(tensors: dict, meta: dict, device: torch.device | None = None) -> None:
    torch.set_rng_state(tensors["torch"])
    if "cuda" in tensors and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(tensors["cuda"], device)
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda_")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    py = meta.get("python")
    if py:
        random.setstate((py[0], tuple(py[1]), py[2]))


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
    return cache.get(model, batch.get("pixel_values"), batch.get("pixel_attention_mask"),
                     frame_ids=batch.get("frame_ids"))


# Evaluation --------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model, loader, device: torch.device, *, cache=None, processor=None, world=None) -> float | None:
    """Mean answer-token loss over a loader of SFT batches (token-weighted). With a data-parallel `world`,
    each rank's loader holds its shard and the sums are added over ranks (every rank gets the result)."""
    from anime_pipeline.training.model import answer_loss

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in loader:
            batch.pop("frames_kept", None)
            batch.pop("frames_total", None)
            batch = prepare_batch(batch, device, processor)
            feats = cached_features(cache, model, batch)
            loss_sum, n = answer_loss(model, batch, image_features=feats)
            total += float(loss_sum)
            count += n
    finally:
        model.train(was_training)
    if world is not None and world.distributed:
        from anime_pipeline.training.distributed import all_reduce_sum

        total, count = all_reduce_sum([total, count], world, device)
    return total / count if count else None


# Training ----------------------------------------------------------------------------------------
def train(cfg: TrainConfig, reporter: Reporter | None = None) -> TrainResult:
    """Fine-tune `cfg.base_model` with adapters; returns metrics and the final adapter's location.

    Under `torchrun` / `accelerate launch` (`WORLD_SIZE` > 1) every rank calls this: data-parallel training,
    `reporter` called and files written on rank 0 only (every rank returns the result)."""
    from anime_pipeline.training.distributed import env_world, init_process_group, rank_device

    world = env_world()
    device = rank_device(cfg.device, world)
    created = init_process_group(world, device)
    try:
        return _train(cfg, reporter, world, device)
    finally:
        if created:
            import torch.distributed as dist

            dist.destroy_process_group()


def _train(cfg: TrainConfig, reporter: Reporter | None, world, device: torch.device) -> TrainResult:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    from anime_pipeline.training.collator import VideoSFTCollator
    from anime_pipeline.training.data import EpochSampler, ShardVideoDataset, make_dataloader
    from anime_pipeline.training.distributed import all_reduce_sum, barrier, gather_to_main, wrap_ddp
    from anime_pipeline.training.model import answer_loss, load_for_training, param_report
    from anime_pipeline.training.processor import load_processor

    dp = world.distributed
    main = world.is_main
    report = (reporter or (lambda event: None)) if main else (lambda event: None)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt_root = out_dir / "checkpoints"
    if cfg.torch_threads:
        torch.set_num_threads(int(cfg.torch_threads))
    random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)

    # Data ----------------------------------------------------------------------------------------
    processor = load_processor(cfg.base_model, max_side=cfg.max_side)
    uint8_pixels = (device.type == "cuda") if cfg.uint8_pixels is None else bool(cfg.uint8_pixels)
    collator = VideoSFTCollator(processor, max_length=cfg.max_length, mask_policy=cfg.mask_policy,
                                padding_side="right", return_stats=True, uint8_pixels=uint8_pixels)
    train_ds = ShardVideoDataset(cfg.train_samples, Path(cfg.data_home), cfg.max_frames, split=cfg.train_split)
    # a sample that cannot fit max_length even with one frame is recorded and left out, not fatal
    skipped = [dict(r, split="train") for r in train_ds.drop_too_long(collator)]
    if len(train_ds) == 0:
        raise ValueError(f"no training samples in {cfg.train_samples}"
                         + (f" ({len(skipped)} longer than max_length={cfg.max_length})" if skipped else ""))
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
    pin = (device.type == "cuda") if cfg.pin_memory is None else cfg.pin_memory
    # each rank: an interleaved slice of the epoch order, padded so that all ranks take the same steps
    sampler = EpochSampler(len(train_ds), shuffle=True, seed=cfg.seed, rank=world.rank, world_size=world.size)
    loader = make_dataloader(train_ds, collator, batch_size=cfg.batch_size, num_workers=cfg.num_workers,
                             pin_memory=pin, prefetch_factor=cfg.prefetch_factor, sampler=sampler)
    val_loader = None
    if val_ds is not None:
        val_sampler = (EpochSampler(len(val_ds), shuffle=False, rank=world.rank, world_size=world.size, pad=False)
                       if dp else None)
        val_loader = make_dataloader(val_ds, collator, batch_size=cfg.eval_batch_size, shuffle=False,
                                     num_workers=cfg.num_workers, pin_memory=pin,
                                     prefetch_factor=cfg.prefetch_factor, sampler=val_sampler)
    batches_per_epoch = math.ceil(sampler.shard_size() / cfg.batch_size)  # per rank
    total_steps = cfg.max_steps or max(1, math.ceil(cfg.epochs * batches_per_epoch / cfg.grad_accum))

    # Model ---------------------------------------------------------------------------------------
    model = load_for_training(cfg.base_model, dataclasses.replace(cfg, device=str(device)) if dp else cfg)
    params = param_report(model)
    dtype = next(p for p in model.parameters() if p.is_floating_point() and not p.requires_grad).dtype
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.lr, weight_decay=cfg.weight_decay)
    cache = None
    if cfg.feature_cache:
        from anime_pipeline.training.feature_cache import FeatureCache

        # shared by the ranks: entries are written atomically (same key → same features)
        cache = FeatureCache(Path(cfg.feature_cache_dir or out_dir / "feature-cache"), model,
                             preprocessing=processor.preprocessing_id())
        collator.feature_cache = cache  # before any loader iterates: workers get it with the collator

    # Resume (every rank loads the checkpoint) ------------------------------------------------------
    state: dict[str, Any] = {"step": 0, "micro": 0, "samples_seen": 0, "loss_history": [],
                             "val_loss_before": None}
    resumed_from = None
    existing = _checkpoints(ckpt_root)
    if existing and cfg.resume:
        step_no, ck = existing[-1]
        saved = json.loads((ck / "state.json").read_text())
        mismatch = {k: (saved["config"].get(k), getattr(cfg, k)) for k in RESUME_KEYS
                    if saved["config"].get(k) != getattr(cfg, k)}
        if saved.get("world_size", 1) != world.size:
            mismatch["world_size"] = (saved.get("world_size", 1), world.size)
        if mismatch:
            changes = ", ".join(f"{k}: {a!r} in the checkpoint, {b!r} now" for k, (a, b) in mismatch.items())
            raise ResumeError(f"cannot resume {ck}: it was made with other settings ({changes}); a resumed "
                              "run must keep the data, model and schedule. Use another output_dir, or "
                              "resume=false to start afresh")
        set_peft_model_state_dict(model, load_file(str(ck / "adapter" / "adapter_model.safetensors"),
                                                   device=str(device)))
        optimizer.load_state_dict(torch.load(ck / "optimizer.pt", map_location=device, weights_only=True))
        rng_file = "rng.pt" if world.rank == 0 else f"rng-rank{world.rank}.pt"
        rng_tensors = torch.load(ck / rng_file, weights_only=True)
        rng_meta = saved["rng_ranks"][world.rank] if dp else saved.get("rng", {})
        state = saved["state"]
        resumed_from = step_no
        report({"event": "resume", "step": step_no, "checkpoint": str(ck)})
    elif existing and main:
        shutil.rmtree(ckpt_root)
    barrier(world, device)  # every rank has read the checkpoints before rank 0 writes or deletes any

    ddp = wrap_ddp(model, device) if dp else None
    report({"event": "start", "total_steps": total_steps, "start_step": state["step"], "device": str(device),
            "dtype": str(dtype).replace("torch.", ""), "train_samples": len(train_ds),
            "val_samples": len(val_ds) if val_ds else 0, "params": params,
            **({"world_size": world.size} if dp else {})})

    if val_loader is not None and state["val_loss_before"] is None:
        state["val_loss_before"] = evaluate(model, val_loader, device, cache=cache, processor=processor,
                                            world=world)
        report({"event": "eval", "phase": "before", "val_loss": state["val_loss_before"]})
    if resumed_from is not None:
        _set_rng_state(rng_tensors, rng_meta, device if dp else None)

    def save_checkpoint(step: int) -> Path:
        tensors, meta = _rng_state(device if dp else None)
        final = ckpt_root / f"step-{step:08d}"
        ranks = gather_to_main((tensors, meta), world)  # collective: every rank calls save_checkpoint
        if not main:
            return final
        extra = {"world_size": world.size, "rng_ranks": [m for _, m in ranks]} if dp else {}

        def write(tmp: Path) -> None:
            model.save_pretrained(str(tmp / "adapter"), safe_serialization=True)
            torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
            torch.save(tensors, tmp / "rng.pt")
            for r in range(1, world.size):
                torch.save(ranks[r][0], tmp / f"rng-rank{r}.pt")
            (tmp / "state.json").write_text(json.dumps({"config": cfg.to_dict(), "state": state, "rng": meta,
                                                        **extra}))

        _atomic_dir(final, write)
        for _, old in _checkpoints(ckpt_root)[:-cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        report({"event": "checkpoint", "step": step, "path": str(final)})
        return final

    def micro_batches(start_micro: int) -> Iterator[dict]:
        epoch, pos = divmod(start_micro, batches_per_epoch)
        while True:
            sampler.set_epoch(epoch, start=pos * cfg.batch_size)
            yield from loader
            epoch, pos = epoch + 1, 0

    # Loop ----------------------------------------------------------------------------------------
    model.train()
    stream = micro_batches(state["micro"])
    t0 = time.perf_counter()
    run_samples = 0
    frames_dropped = 0
    non_blocking = pin and device.type == "cuda"
    while state["step"] < total_steps:
        step = state["step"]
        window = [next(stream) for _ in range(cfg.grad_accum)]
        n_tokens = sum(_labelled(b) for b in window)
        n_samples = sum(int(b["input_ids"].shape[0]) for b in window)
        if dp:  # the loss is normalised by the labelled tokens of the whole (all-rank) window
            n_tokens, n_samples = (int(x) for x in all_reduce_sum([n_tokens, n_samples], world, device))
        optimizer.zero_grad(set_to_none=True)
        loss_total = 0.0
        for i, batch in enumerate(window):
            kept, total = batch.pop("frames_kept"), batch.pop("frames_total")
            frames_dropped += int((total - kept).sum())
            batch = prepare_batch(batch, device, processor, non_blocking=non_blocking)
            feats = cached_features(cache, model, batch)
            if ddp is None:
                loss_sum, _ = answer_loss(model, batch, image_features=feats)
                if n_tokens:
                    (loss_sum / n_tokens).backward()
            else:
                # gradients are all-reduced (averaged) on the window's last micro-batch only; × world size
                # undoes DDP's averaging, so the step's gradient is Σ_ranks Σ token losses / n_tokens
                last = i == len(window) - 1
                with contextlib.nullcontext() if last else ddp.no_sync():
                    loss_sum, _ = ddp(batch, feats)
                    if n_tokens:
                        (loss_sum * world.size / n_tokens).backward()
            loss_total += float(loss_sum.detach())
        if dp:
            loss_total = all_reduce_sum([loss_total], world, device)[0]
        run_samples += n_samples
        grad_norm = None
        if cfg.max_grad_norm:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm))  # before clipping
        lr = lr_at(cfg, step, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()
        loss = loss_total / n_tokens if n_tokens else float("nan")
        state["step"] = step + 1
        state["micro"] += cfg.grad_accum
        state["samples_seen"] += n_samples
        state["loss_history"].append(loss)
        elapsed = time.perf_counter() - t0
        if cfg.save_steps and state["step"] % cfg.save_steps == 0 and state["step"] < total_steps:
            save_checkpoint(state["step"])
        if state["step"] % cfg.log_every == 0 or state["step"] == total_steps:
            report({"event": "progress", "step": state["step"], "total_steps": total_steps, "loss": loss,
                    "lr": lr, "samples_per_s": run_samples / elapsed if elapsed > 0 else 0.0,
                    "epoch": state["samples_seen"] / len(train_ds), "elapsed_s": elapsed,
                    **({"grad_norm": grad_norm} if grad_norm is not None else {})})
    train_seconds = time.perf_counter() - t0
    if resumed_from is None or resumed_from < total_steps:
        save_checkpoint(state["step"])

    # Final ---------------------------------------------------------------------------------------
    val_after = None
    if val_loader is not None:
        val_after = evaluate(model, val_loader, device, cache=cache, processor=processor, world=world)
        report({"event": "eval", "phase": "after", "val_loss": val_after})
    if main:
        adapter_dir = save_adapter(model, out_dir / "adapter")
    else:
        adapter_dir = out_dir / "adapter"
    hits, misses = (cache.hits, cache.misses) if cache else (0, 0)
    if dp:
        frames_dropped, hits, misses = (int(x) for x in all_reduce_sum([frames_dropped, hits, misses], world, device))
    barrier(world, device)  # the adapter is written
    mem, mem_kind = peak_memory(device)
    hist = state["loss_history"]
    result = TrainResult(
        steps=state["step"], total_steps=total_steps, resumed_from_step=resumed_from,
        epochs=state["samples_seen"] / len(train_ds), train_samples=len(train_ds),
        val_samples=len(val_ds) if val_ds else 0, samples_seen=state["samples_seen"],
        loss_start=hist[0] if hist else None, loss_end=hist[-1] if hist else None, loss_history=list(hist),
        val_loss_before=state["val_loss_before"], val_loss_after=val_after,
        samples_per_s=run_samples / train_seconds if train_seconds > 0 else 0.0, train_seconds=train_seconds,
        peak_memory_bytes=mem, peak_memory_kind=mem_kind, device=str(device),
        dtype=str(dtype).replace("torch.", ""), adapter_path=str(adapter_dir),
        adapter_bytes=dir_bytes(adapter_dir), trainable_params=params["total"]["trainable"],
        frozen_params=params["total"]["frozen"], params=params, frames_dropped=frames_dropped,
        feature_cache_hits=hits, feature_cache_misses=misses, world_size=world.size,
        skipped_samples=len(skipped),
    )
    if main:
        cfg.to_json(out_dir / "train_config.json")
        (out_dir / "train_result.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    report({"event": "done", **result.metadata()})
    return result
