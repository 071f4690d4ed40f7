"""Training-step throughput and peak memory of SmolVLM2-500M (random weights) on a GPU.

The model is the real architecture (config `benchmarks/data/smolvlm2-500m-config.json`, copied from the
reference model card) with random weights, saved once to a temp dir and loaded by the package's
`load_for_training` (bf16 on CUDA, LoRA r16 on the text projections, gradient checkpointing on the text
model, frozen vision tower under no_grad). The processor is configured like the real one (512 px, 64
tokens per frame; tiny tokenizer, see `_common.real_processor_dir`). One synthetic sample per frame count
(512×512 frames, ≈400-token answer), batch size 1. Each step mirrors `train()`'s: to_device → (features)
→ `answer_loss` → backward → clip → AdamW step.

Variants (`--variants`; names are `<attn>[_suffix]`, attn = flash | sdpa):
  <attn>            flash_attention_2 (needs CUDA + flash_attn) or SDPA, frozen tower under no_grad
  <attn>_towergrad  the no_grad wrapper removed: autograd runs through the frozen vision tower
                    (transformers' enable_input_require_grads hooks make its activations require grad)
  <attn>_cached     vision features from the package's `FeatureCache` as `train()` uses it: frames keyed by
                    identity (`frame_ids` + `processor.preprocessing_id()`), cache warmed before timing, the
                    batch re-collated with the cache-aware collator (no `pixel_values` for cached frames),
                    features fetched with `train.cached_features`
  <attn>_cachedmem  vision features precomputed in memory, no pixel_values moved (upper bound for the
                    cache: no safetensors loads)
  qlora_<attn>      4-bit NF4 text model (needs CUDA + bitsandbytes)

Reported: samples/s (best of `--steps` after `--warmup`), peak VRAM (max allocated, weights included),
GPU busy fraction (one extra step with the collation in it, profiled: kernel time / wall time), and the
projected epoch time of `--epoch-titles` titles at `--epoch-frames` frames.

On a GPU:   python benchmarks/gpu.py
On CPU:     python benchmarks/gpu.py --tiny --device cpu      (tiny model; no VRAM, no flash-attn, no QLoRA)
Smoke run:  python benchmarks/gpu.py --tiny --device cpu --quick
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

TARGET_VRAM_GB_24 = 4.0
TARGET_EPOCH_MIN = 2.0
ALL_VARIANTS = [
    "flash",
    "flash_towergrad",
    "flash_cached",
    "flash_cachedmem",
    "sdpa",
    "sdpa_towergrad",
    "sdpa_cached",
    "sdpa_cachedmem",
    "qlora_flash",
    "qlora_sdpa",
]


def parse_variant(name: str) -> dict:
    qlora = name.startswith("qlora_")
    rest = name[len("qlora_") :] if qlora else name
    attn, _, suffix = rest.partition("_")
    return {
        "attn": {"flash": "flash_attention_2", "sdpa": "sdpa"}[attn],
        "qlora": qlora,
        "towergrad": suffix == "towergrad",
        "cached": suffix == "cached",
        "cachedmem": suffix == "cachedmem",
    }


def skip_reason(name: str, device) -> str | None:
    v = parse_variant(name)
    if device.type != "cuda":
        if v["attn"] == "flash_attention_2":
            return "flash-attn needs CUDA"
        if v["qlora"]:
            return "QLoRA (bitsandbytes 4-bit) needs CUDA"
    if v["attn"] == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        return "flash_attn is not installed"
    if v["qlora"] and importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed"
    return None


def build_real_model(dest: Path, tiny: Path) -> Path:
    """Processor files + random-init SmolVLM2-500M weights (bf16 safetensors) in `dest`."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    C.real_processor_dir(dest, tiny)
    cfg = AutoConfig.from_pretrained(str(dest))
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(str(dest))
    del model
    gc.collect()
    return dest


def make_sample(processor, frames: int, answer_repeat: int) -> dict:
    """One synthetic sample with dataset-style `frame_ids` (what `ShardVideoDataset` yields)."""
    import numpy as np
    from PIL import Image

    from anime_pipeline.training.data import frame_id

    rng = np.random.default_rng(frames)
    s = processor.image_size
    images = [Image.fromarray(rng.integers(0, 256, (s, s, 3), dtype=np.uint8), "RGB") for _ in range(frames)]
    ts = [10.0 + 20.0 * i for i in range(frames)]
    source = f"{frames:064x}"  # stands in for the episode file's SHA-256
    return {
        "images": images,
        "timestamps": ts,
        "duration_s": 1440.0,
        "frame_ids": [frame_id(source, 24 * i, t, s, s, b"") for i, t in enumerate(ts)],
        "prompt": "Summarize the first episode.",
        "answer": (C.ANSWER * answer_repeat).strip(),
    }


def make_batch(processor, sample: dict, feature_cache=None):
    """The collated batch; with a (warm) `feature_cache`, cached frames get no pixels, as in training."""
    from anime_pipeline.training.collator import VideoSFTCollator

    batch = VideoSFTCollator(processor, return_stats=True, feature_cache=feature_cache)([sample])
    batch.pop("frames_kept")
    batch.pop("frames_total")
    return batch


def remove_tower_no_grad(model) -> None:
    from anime_pipeline.training.model import restore_forward, smolvlm_parts

    vision, connector, _ = smolvlm_parts(model)
    for m in (vision, connector):
        restore_forward(m)  # back to the class's forward


def gpu_busy_fraction(step, device) -> float:  # pragma: no cover - GPU only
    """Share of one step's wall time during which a CUDA kernel ran (torch.profiler's device time of the
    step's kernels / wall time, capped at 1): what a data-bound loop leaves idle."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize(device)
        wall = time.perf_counter() - t0
    kernel_us = sum(
        e.self_device_time_total
        for e in prof.key_averages()
        if getattr(e, "device_type", None) == torch.autograd.DeviceType.CUDA
    )
    return min(1.0, kernel_us / 1e6 / wall) if wall > 0 else 0.0


def measure(model_dir: Path, name: str, samples: dict, processor, args, device, workdir: Path) -> list[dict]:
    import torch

    from anime_pipeline.training.config import TrainConfig
    from anime_pipeline.training.feature_cache import FeatureCache
    from anime_pipeline.training.model import answer_loss, encode_frames, load_for_training, to_device
    from anime_pipeline.training.train import cached_features

    v = parse_variant(name)
    cuda = device.type == "cuda"
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    # the real TrainConfig; load_for_training reads only its model fields (train_samples is never opened)
    cfg = TrainConfig(
        base_model=str(model_dir),
        train_samples="unused.parquet",
        output_dir=str(workdir),
        device=str(device),
        dtype="auto",
        attn_implementation=v["attn"],
        qlora=v["qlora"],
        gradient_checkpointing=True,
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.05,
        use_dora=False,
    )
    model = load_for_training(str(model_dir), cfg)
    if v["towergrad"]:
        remove_tower_no_grad(model)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-4)
    cache = (
        FeatureCache(workdir / f"fc-{name}", model, preprocessing=processor.preprocessing_id())
        if v["cached"]
        else None
    )
    rows = []
    for frames, sample in samples.items():
        cpu_batch = make_batch(processor, sample)
        mem_feats = None
        if v["cachedmem"]:
            b = to_device(cpu_batch, device)
            mem_feats = [
                f.detach() for f in encode_frames(model, b["pixel_values"], b.get("pixel_attention_mask"))
            ]
            cpu_batch = {
                k: t for k, t in cpu_batch.items() if k not in ("pixel_values", "pixel_attention_mask")
            }
            del b
        if cache is not None:  # warm the cache (the first epoch's cost), then collate as a cached epoch does
            b = to_device(cpu_batch, device)
            cache.get(model, b["pixel_values"], b.get("pixel_attention_mask"), frame_ids=b["frame_ids"])
            del b
            cpu_batch = make_batch(processor, sample, feature_cache=cache)
            assert "pixel_values" not in cpu_batch, "a warm cache should leave no pixels to move"
        if cuda:
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        error = None
        try:
            for i in range(args.warmup + args.steps):
                t0 = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                b = to_device(cpu_batch, device, non_blocking=False)
                if cache is not None:
                    feats = cached_features(cache, model, b)  # keyed by frame_ids, loads the stored features
                else:
                    feats = mem_feats
                loss_sum, n = answer_loss(model, b, image_features=feats)
                (loss_sum / max(1, n)).backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                opt.step()
                if cuda:
                    torch.cuda.synchronize(device)
                if i >= args.warmup:
                    times.append(time.perf_counter() - t0)
                del b, loss_sum
        except torch.cuda.OutOfMemoryError as e:  # pragma: no cover - GPU only
            error = f"OOM: {str(e).splitlines()[0][:120]}"
        peak = torch.cuda.max_memory_allocated(device) / 1e9 if cuda else None
        sps = 1.0 / C.best(times) if times and not error else None
        busy = None
        if cuda and not error:  # one more step, profiled, with the collation (the loader's work) in it

            def step(
                sample=sample, cpu_batch=cpu_batch, mem_feats=mem_feats, cache=cache, model=model, opt=opt
            ):
                batch = (
                    make_batch(processor, sample, feature_cache=cache) if not v["cachedmem"] else cpu_batch
                )
                opt.zero_grad(set_to_none=True)
                b = to_device(batch, device, non_blocking=False)
                feats = cached_features(cache, model, b) if cache is not None else mem_feats
                loss_sum, n = answer_loss(model, b, image_features=feats)
                (loss_sum / max(1, n)).backward()
                torch.nn.utils.clip_grad_norm_(trainable, 1.0)
                opt.step()

            busy = gpu_busy_fraction(step, device)
        rows.append(
            {
                "variant": name,
                "frames": frames,
                "seq_len": int(cpu_batch["input_ids"].shape[1]),
                "samples_per_s": sps,
                "peak_vram_gb": peak,
                "gpu_busy": busy,
                "error": error,
            }
        )
        print(f"done {name} frames={frames}" + (f" ({error})" if error else ""), file=sys.stderr, flush=True)
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.empty_cache()
    del model, opt, cache
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, nargs="+", default=[24, 32, 64])
    ap.add_argument("--variants", nargs="+", default=ALL_VARIANTS, choices=ALL_VARIANTS)
    ap.add_argument("--tiny", action="store_true", help="the tiny test model instead of SmolVLM2-500M")
    ap.add_argument("--device", default="auto", help="auto (cuda if available) | cuda | cpu | cuda:N")
    ap.add_argument(
        "--steps", type=int, default=5, help="timed steps per (variant, frames); the best is kept"
    )
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument(
        "--answer-repeat", type=int, default=8, help="answer = the sample paragraph × this (≈400 tokens)"
    )
    ap.add_argument("--epoch-titles", type=int, default=584)
    ap.add_argument("--epoch-frames", type=int, default=64)
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="smoke run: 4 and 8 frames, 1 warm-up + 2 steps")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    if a.quick:
        a.frames, a.steps, a.warmup, a.answer_repeat, a.epoch_frames = [4, 8], 2, 1, 2, 8
    import torch

    from anime_pipeline.training.model import resolve_device
    from anime_pipeline.training.processor import load_processor

    device = resolve_device(a.device)
    if device.type != "cuda" and not a.tiny:
        ap.error("the 500M model is GPU-only here; on CPU use --tiny (--device cpu)")
    cache = a.cache_dir or C.default_cache_dir()
    tiny = C.tiny_model(cache)
    skipped = {n: why for n in a.variants if (why := skip_reason(n, device))}
    variants = [n for n in a.variants if n not in skipped]
    for n, why in skipped.items():
        print(f"skipping {n}: {why}", file=sys.stderr)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as td:
        work = Path(td)
        model_dir = tiny if a.tiny else build_real_model(work / "smolvlm2-500m-random", tiny)
        processor = load_processor(str(model_dir))
        samples = {f: make_sample(processor, f, a.answer_repeat) for f in sorted(a.frames)}
        for name in variants:
            rows.extend(measure(model_dir, name, samples, processor, a, device, work))

    cuda = device.type == "cuda"
    ep_frames = a.epoch_frames if a.epoch_frames in samples else max(samples)
    epoch_min = {
        r["variant"]: C.r3(a.epoch_titles / r["samples_per_s"] / 60)
        for r in rows
        if r["frames"] == ep_frames and r["samples_per_s"]
    }
    for r in rows:
        if r["frames"] == ep_frames and r["samples_per_s"]:
            r["epoch_min"] = a.epoch_titles / r["samples_per_s"] / 60
    base = {(r["variant"], r["frames"]): r["samples_per_s"] for r in rows}
    ratios: dict[str, dict[str, float]] = {}
    for r in rows:
        attn = parse_variant(r["variant"])["attn"].split("_")[0]
        ref = base.get(("sdpa" if attn == "sdpa" else "flash", r["frames"]))
        if ref and r["samples_per_s"]:
            r["vs_plain"] = r["samples_per_s"] / ref
            ratios.setdefault(r["variant"], {})[str(r["frames"])] = C.r3(r["vs_plain"])
    model_name = "tiny" if a.tiny else "smolvlm2-500m-random"
    print(
        f"\ntraining step, {model_name}, device {device} ({torch.cuda.get_device_name(device) if cuda else 'CPU'}), "
        f"batch 1, LoRA r16, grad checkpointing on the text model\n"
    )
    cols = ["variant", "frames", "seq_len", "samples_per_s", "vs_plain", "epoch_min"]
    cols += ["peak_vram_gb", "gpu_busy"] if cuda else []
    cols += ["error"] if any(r["error"] for r in rows) else []
    print(C.table(rows, cols))
    print(
        f"\nepoch_min: {a.epoch_titles} titles × {ep_frames} frames at the measured rate; vs_plain: samples/s "
        "relative to the plain variant of the same attention at the same frame count"
    )
    if skipped:
        print("skipped: " + "; ".join(f"{k} ({v})" for k, v in skipped.items()))
    targets = {}
    if cuda and not a.tiny:
        v24 = [
            r["peak_vram_gb"]
            for r in rows
            if r["frames"] == 24 and r["peak_vram_gb"] is not None and not r["error"]
        ]
        cached = [m for k, m in epoch_min.items() if "cached" in k]
        targets = {
            "vram_24_frames_le_4gb": (min(v24) <= TARGET_VRAM_GB_24) if v24 else None,
            "epoch_cached_le_2min": (min(cached) <= TARGET_EPOCH_MIN) if cached else None,
        }
        print(
            f"targets: peak VRAM at 24 frames <= {TARGET_VRAM_GB_24} GB (best variant): "
            f"{targets['vram_24_frames_le_4gb']}; epoch with cached features <= {TARGET_EPOCH_MIN} min: "
            f"{targets['epoch_cached_le_2min']}"
        )
    else:
        print(
            "no CUDA device or tiny model: VRAM and the epoch-time target are not evaluated (GPU-only numbers)"
        )
    C.emit(
        {
            "benchmark": "gpu",
            "device": str(device),
            "model": model_name,
            "results": rows,
            "epoch_minutes": epoch_min,
            "vs_plain": ratios,
            "skipped": skipped,
            "targets_met": targets,
            "machine": C.machine(),
        },
        a.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
