"""Training step on CPU with the tiny model: how much of the step is spent waiting for data.

Runs the training package's real loop (`anime_pipeline.training.train.train`) on Parquet shards of
`--frames` real sampled frames (512×288 JPEG, as the `frame_shards` asset stores them). `train()` builds
its DataLoader with `anime_pipeline.training.data.make_dataloader`; this script wraps the loader it returns
(at run time, without changing the package) and times every `next()` on its iterator, i.e. the time the
loop is blocked waiting for a batch.

Data-wait fraction = Σ wait / loop time (`TrainResult.train_seconds`), for `--workers` 0 and 2:
  * all steps  (includes the first batch, i.e. spawning the workers)
  * steady     steps 2..N (per-step times from the loop's own progress events)

    python benchmarks/train_step.py            # 64 frames, 12 steps, workers 0 and 2
    python benchmarks/train_step.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

TARGET = 0.02


class TimedLoader:
    """Iterable proxy around a DataLoader recording the time blocked in each `next()`."""

    def __init__(self, loader):
        self.loader = loader
        self.waits: list[float] = []

    def __len__(self):
        return len(self.loader)

    def __getattr__(self, name):  # set_epoch, batch_sampler, ...: what Trainer asks of its loader
        return getattr(self.loader, name)

    def __iter__(self):
        it = iter(self.loader)
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.waits.append(time.perf_counter() - t0)
            yield batch


def run(
    samples: Path, root: Path, tiny: Path, workers: int, steps: int, frames: int, threads: int | None
) -> dict:
    from transformers import Trainer

    from anime_pipeline.training.train import TrainConfig, train

    timed: list[TimedLoader] = []
    original = Trainer.get_train_dataloader

    def patched(self):  # the training loader, as Trainer builds it (validation loaders are ours)
        timed.append(TimedLoader(original(self)))
        return timed[-1]

    events: list[dict] = []
    cfg = TrainConfig(
        base_model=str(tiny),
        train_samples=str(samples),
        output_dir=str(root / f"out-w{workers}"),
        data_home=str(root),
        max_frames=frames,
        num_workers=workers,
        max_steps=steps,
        save_steps=0,
        log_every=1,
        device="cpu",
        resume=False,
        torch_threads=threads,
        lr_schedule="constant",
    )
    Trainer.get_train_dataloader = patched  # type: ignore[method-assign]
    try:
        result = train(cfg, events.append)
    finally:
        Trainer.get_train_dataloader = original  # type: ignore[method-assign]
    waits = timed[0].waits[:steps]
    elapsed = [e["elapsed_s"] for e in events if e.get("event") == "progress"]
    step_s = [b - a for a, b in zip([0.0, *elapsed], elapsed)]
    steady_wait, steady_time = sum(waits[1:]), sum(step_s[1:])
    return {
        "workers": workers,
        "steps": result.steps,
        "loop_s": result.train_seconds,
        "wait_s": sum(waits),
        "wait_frac_all": sum(waits) / result.train_seconds,
        "wait_frac_steady": steady_wait / steady_time if steady_time > 0 else float("nan"),
        "first_wait_s": waits[0] if waits else float("nan"),
        "step_s_median": C.median(step_s[1:]),
        "samples_per_s": result.samples_per_s,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=64)
    ap.add_argument(
        "--steps", type=int, default=12, help="optimizer steps per run (batch 1, no accumulation)"
    )
    ap.add_argument("--titles", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--torch-threads", type=int, default=None, help="intra-op threads (default: torch's)")
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--quick", action="store_true", help="smoke run: 8 frames, 3 steps")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    if a.quick:
        a.frames, a.steps, a.titles = 8, 3, 2
    cache = a.cache_dir or C.default_cache_dir()
    tiny = C.tiny_model(cache)
    clip = C.ensure_clip(cache, 70 if a.frames > 16 else 20)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-train-") as td:
        root = Path(td)
        per_title = -(-(a.steps + 1) // a.titles)  # one epoch covers every step: no epoch boundary mid-run
        samples = C.make_dataset(
            root, clip=clip, titles=a.titles, frames=a.frames, samples_per_title=per_title
        )
        for w in a.workers:
            rows.append(run(samples, root, tiny, w, a.steps, a.frames, a.torch_threads))
            print(f"done workers={w}", file=sys.stderr, flush=True)
    for r in rows:
        r["target"] = "met" if r["wait_frac_steady"] < TARGET else "NOT met"
    print(f"\ntrain step (tiny model, CPU, {a.frames} frames, batch 1), {C.machine()['cpus']} CPUs\n")
    print(
        C.table(
            rows,
            [
                "workers",
                "steps",
                "loop_s",
                "step_s_median",
                "first_wait_s",
                "wait_frac_all",
                "wait_frac_steady",
                "target",
            ],
        )
    )
    C.emit(
        {
            "benchmark": "train_step",
            "frames": a.frames,
            "wait_fraction": {str(r["workers"]): C.r3(r["wait_frac_steady"]) for r in rows},
            "wait_fraction_incl_first": {str(r["workers"]): C.r3(r["wait_frac_all"]) for r in rows},
            "target": TARGET,
            "target_met": {str(r["workers"]): r["wait_frac_steady"] < TARGET for r in rows},
            "machine": C.machine(),
        },
        a.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
