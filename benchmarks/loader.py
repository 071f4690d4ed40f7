"""Data loading throughput: Parquet frame shards → `ShardVideoDataset` → `VideoSFTCollator` batches.

Shards are real ones: `--frames` frames sampled (the project's sampler, max_side 512 as the
`frame_shards` asset stores them, i.e. 512×288 JPEG for 16:9) from a cached 720p testsrc2 clip and written
with `write_frame_shard` for `--titles` titles. Each measured sample is one title (batch size 1).

Processors:
  * tiny        `load_processor()` of the tiny test model (64 px frames, 4 tokens per frame)
  * real500m    `load_processor()` of a directory configured like SmolVLM2-500M-Video-Instruct: the real
                model config and preprocessor config (512 px frames, 64 tokens per frame), with the tiny
                model's tokenizer (the real tokenizer is not available offline)
  * real500m_presquashed  what-if: as real500m, but the dataset hands over frames already resized to
                512×512 (PIL), so the processor takes its fast path (no HF image processor). Not what
                the package does today; it measures the cost of the image-processor path.

For each processor and `--workers` value: samples/s over one epoch of `--samples` samples through
`make_dataloader` (spawned, persistent workers; a 2-sample warm-up epoch first so worker start-up is not
counted) and samples/s per core = samples/s / max(1, workers). A worker-0 breakdown times
`dataset[i]` (Parquet read + JPEG decode) and the collator separately.

Then the one-core limit (`--limit`, on by default): the first epoch's samples of the real 512-px processor
with uint8 pixels (what training ships on CUDA), loaded on one core (`num_workers=0`, no feature cache, a
fresh dataset: every JPEG decoded) vs the limit of that work on one core, both in this process,
interleaved, best of `--limit-repeats`. The limit is the same three operations on the same JPEG bytes in
a bare loop and nothing else: PIL JPEG decode, the processor's resize (its `frame_uint8`: LANCZOS to
512x512, the stage the HF image processor runs, bit-exact), and the copy into a preallocated uint8
(F, 3, 512, 512) tensor. The ratio loader / limit is what the loader adds on top (Parquet read, frame
selection, tokenizing the prompt and synopsis, label masks, padding): target <= 1.5.

    python benchmarks/loader.py            # 64 frames, 16 samples, workers 0 1 2, then the limit
    python benchmarks/loader.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

TARGET_PER_CORE = 10.0
TARGET_VS_LIMIT = 1.5
PROCESSORS = ("tiny", "real500m", "real500m_presquashed")


class Presquashed:
    """Dataset wrapper: frames resized to size×size (PIL bicubic) before the collator sees them."""

    def __init__(self, ds, size: int):
        self.ds, self.size = ds, size

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        from PIL import Image

        item = self.ds[i]
        item["images"] = [
            im.resize((self.size, self.size), Image.Resampling.BICUBIC) for im in item["images"]
        ]
        return item


def run_loader(ds, collator, workers: int, n: int) -> float:
    from anime_pipeline.training.data import EpochSampler, make_dataloader

    sampler = EpochSampler(len(ds), shuffle=False)
    loader = make_dataloader(
        ds, collator, batch_size=1, num_workers=workers, sampler=sampler, pin_memory=False
    )
    sampler.set_epoch(0, start=max(0, len(ds) - 2))  # warm-up: start workers, import, first batches
    for _ in loader:
        pass
    sampler.set_epoch(1, start=len(ds) - n)
    got = 0
    with C.Timer() as t:
        for batch in loader:
            got += int(batch["input_ids"].shape[0])
    del loader
    assert got == n, (got, n)
    return n / t.s


def breakdown(ds, collator, k: int) -> dict:
    get = col = 0.0
    seq = 0
    for i in range(k):
        with C.Timer() as t1:
            item = ds[i]
        with C.Timer() as t2:
            b = collator([item])
        get += t1.s
        col += t2.s
        seq = int(b["input_ids"].shape[1])
    return {"getitem_s": get / k, "collate_s": col / k, "collate_share": col / (get + col), "seq_len": seq}


class CpuTimer:
    """Wall and CPU seconds of this process (CPU time is far less disturbed by other jobs on the machine)."""

    def __enter__(self):
        import time

        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        import time

        self.s, self.cpu = time.perf_counter() - self._w, time.process_time() - self._c


def limit_loop(jpegs: list[list[bytes]], proc) -> tuple[float, float]:
    """(wall, CPU) seconds for the bare work: decode every JPEG, resize like the processor, copy into uint8
    tensors."""
    import io

    import numpy as np
    import torch
    from PIL import Image

    s = proc.image_size
    with CpuTimer() as t:
        for frames in jpegs:
            pv = torch.empty((len(frames), 3, s, s), dtype=torch.uint8)
            out = pv.numpy()
            for j, data in enumerate(frames):
                img = Image.open(io.BytesIO(data))
                img.load()
                out[j] = np.asarray(proc.frame_uint8(img)).transpose(2, 0, 1)
    return t.s, t.cpu


def loader_epoch(samples, root: Path, frames: int, proc, n: int) -> tuple[float, float]:
    """(wall, CPU) seconds for the first epoch of n samples on one core (fresh dataset, no cache, uint8
    pixels)."""
    from anime_pipeline.training.collator import VideoSFTCollator
    from anime_pipeline.training.data import EpochSampler, ShardVideoDataset, make_dataloader

    ds = ShardVideoDataset(samples, root, frames)
    collator = VideoSFTCollator(proc, padding_side="right", uint8_pixels=True)
    loader = make_dataloader(
        ds,
        collator,
        batch_size=1,
        num_workers=0,
        sampler=EpochSampler(len(ds), shuffle=False),
        pin_memory=False,
    )
    got = 0
    with CpuTimer() as t:
        for batch in loader:
            got += int(batch["input_ids"].shape[0])
            assert batch["pixel_values"].dtype.is_floating_point is False
    assert got == n, (got, n)
    return t.s, t.cpu


def vs_limit(samples, root: Path, frames: int, proc, repeats: int) -> dict:
    from anime_pipeline.training.data import ShardVideoDataset

    ds = ShardVideoDataset(samples, root, frames)
    jpegs = [ds.read_frames(row)["image"].to_list()[:frames] for row in ds.rows]
    n = len(ds)
    lim, load = [], []
    for _ in range(repeats):  # interleaved: machine load hits both alike
        lim.append(limit_loop(jpegs, proc))
        load.append(loader_epoch(samples, root, frames, proc, n))
    lw, lc = C.best([w for w, _ in lim]), C.best([c for _, c in lim])
    dw, dc = C.best([w for w, _ in load]), C.best([c for _, c in load])
    return {
        "samples": n,
        "frames": sum(len(j) for j in jpegs),
        "limit_s_per_sample": lw / n,
        "loader_s_per_sample": dw / n,
        "ratio": dw / lw,
        "limit_cpu_s_per_sample": lc / n,
        "loader_cpu_s_per_sample": dc / n,
        "ratio_cpu": dc / lc,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument("--titles", type=int, default=4, help="distinct shards")
    ap.add_argument("--samples", type=int, default=16, help="samples timed per (processor, workers)")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--processors", nargs="+", default=list(PROCESSORS), choices=PROCESSORS)
    ap.add_argument("--breakdown", type=int, default=4, help="samples timed in the worker-0 breakdown")
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="smoke run: 8 frames, 4 samples, workers 0 1")
    ap.add_argument("--no-limit", action="store_true", help="skip the one-core limit comparison")
    ap.add_argument("--limit-only", action="store_true", help="only the one-core limit comparison")
    ap.add_argument("--limit-repeats", type=int, default=3)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    if a.quick:
        a.frames, a.titles, a.samples, a.workers, a.breakdown = 8, 2, 4, [0, 1], 2
    cache = a.cache_dir or C.default_cache_dir()
    import torch

    from anime_pipeline.training.collator import VideoSFTCollator
    from anime_pipeline.training.data import ShardVideoDataset
    from anime_pipeline.training.processor import load_processor

    tiny = C.tiny_model(cache)
    clip = C.ensure_clip(cache, 70 if a.frames > 16 else 20)
    rows, sps, per_core, shares = [], {}, {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as td:
        root = Path(td)
        samples = C.make_dataset(
            root,
            clip=clip,
            titles=a.titles,
            frames=a.frames,
            samples_per_title=math.ceil(a.samples / a.titles),
        )
        real = C.real_processor_dir(root / "real500m-processor", tiny)
        limit = None
        if not a.no_limit:
            limit = vs_limit(samples, root, a.frames, load_processor(str(real)), a.limit_repeats)
            print(f"done limit: {limit}", file=sys.stderr, flush=True)
        for name in [] if a.limit_only else a.processors:
            proc = load_processor(str(tiny if name == "tiny" else real))
            ds = ShardVideoDataset(samples, root, a.frames)
            if name == "real500m_presquashed":
                ds = Presquashed(ds, proc.image_size)
            collator = VideoSFTCollator(proc, padding_side="right", return_stats=True)
            bd = breakdown(ds, collator, min(a.breakdown, len(ds)))
            shares[name] = C.r3(bd["collate_share"])
            sps[name], per_core[name] = {}, {}
            for w in a.workers:
                torch.manual_seed(0)
                s = run_loader(ds, collator, w, min(a.samples, len(ds)))
                cores = max(1, min(w, os.cpu_count() or 1))
                sps[name][str(w)] = C.r3(s)
                per_core[name][str(w)] = C.r3(s / cores)
                rows.append(
                    {
                        "processor": name,
                        "image_px": proc.image_size,
                        "seq_len": bd["seq_len"],
                        "workers": w,
                        "samples_per_s": s,
                        "per_core": s / cores,
                        "target": "met" if s / cores >= TARGET_PER_CORE else "NOT met",
                    }
                )
                print(f"done {name} workers={w}", file=sys.stderr, flush=True)
            rows[-1]["collate_share_w0"] = bd["collate_share"]

    if limit:
        print(
            f"\nfirst epoch on one core, real500m processor, uint8 pixels, {a.frames}-frame samples: "
            f"{limit['samples']} samples, {limit['frames']} frames"
        )
        print(
            C.table(
                [
                    {
                        "what": "limit: JPEG decode + resize + uint8 tensor, bare loop",
                        "wall_s_per_sample": limit["limit_s_per_sample"],
                        "cpu_s_per_sample": limit["limit_cpu_s_per_sample"],
                    },
                    {
                        "what": "loader: make_dataloader(num_workers=0) + VideoSFTCollator",
                        "wall_s_per_sample": limit["loader_s_per_sample"],
                        "cpu_s_per_sample": limit["loader_cpu_s_per_sample"],
                    },
                ],
                ["what", "wall_s_per_sample", "cpu_s_per_sample"],
            )
        )
        print(
            f"loader / limit = {limit['ratio']:.3f} wall, {limit['ratio_cpu']:.3f} CPU (target <= "
            f"{TARGET_VS_LIMIT}: {'met' if max(limit['ratio'], limit['ratio_cpu']) <= TARGET_VS_LIMIT else 'NOT met'})"
        )
    print(f"\nloader: {a.frames}-frame samples, batch 1, {C.machine()['cpus']} CPUs\n")
    print(
        C.table(rows, ["processor", "image_px", "seq_len", "workers", "samples_per_s", "per_core", "target"])
    )
    print(
        "\nworker-0 share of time in the collator (rest: Parquet read + JPEG decode): "
        + ", ".join(f"{k} {v}" for k, v in shares.items())
    )
    met = {p: {w: v >= TARGET_PER_CORE for w, v in d.items()} for p, d in per_core.items()}
    C.emit(
        {
            "benchmark": "loader",
            "frames": a.frames,
            "samples_per_s": sps,
            "samples_per_s_per_core": per_core,
            "collate_share": shares,
            "target_per_core": TARGET_PER_CORE,
            "target_met": met,
            "vs_limit": {k: (C.r3(v) if isinstance(v, float) else v) for k, v in (limit or {}).items()},
            "target_vs_limit": TARGET_VS_LIMIT,
            "machine": C.machine(),
        },
        a.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
