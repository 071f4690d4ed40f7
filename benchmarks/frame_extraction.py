"""Frame extraction: the project's shard extraction vs the reference dataset's method, side by side.

For each clip length (720p H.264 testsrc2, 24 fps, GOP 250; generated once and cached under
`<tmp>/anime_pipeline_bench_cache`, see `_common.ensure_clip`) times, interleaved, best of `--repeats`:
  * reference     ffmpeg decodes the whole file with `-vf fps=0.16` to JPEG (the reference dataset's method)
  * keyframe      `extract_frame_shard(mode="keyframe")` (the live default): sample in the decoder worker
                  (PyAV seek, one decoded keyframe per sample, swscale resize to 512 px in the RGB
                  conversion, JPEG in the worker), then write the Parquet shard
  * exact         the same with `mode="exact"` (decodes from the previous keyframe: ~half a GOP per sample),
                  the samples split in contiguous runs across decoder processes (one per core, at most 4)
  * exact_1worker exact mode in one decoder process with FFmpeg's frame threads (`workers=1`, the method
                  before the split)
  * inproc_keyframe  the same keyframe sampling + JPEG in this process (`timeout_s=None`): the worker's cost
                  is the difference to `keyframe`
`extract_frame_shard` gets the probe made beforehand (with sha256, as the asset passes the recorded
probe.json) and a warm worker, so these rows measure the per-episode work. What a title pays on top is
printed as "per-title overhead": ffprobe, hashing the file (sha256), starting a decoder worker (cold,
including PyAV/PIL imports), the Parquet write alone and the contact-sheet preview.

Printed ratios: speedup = t(reference) / t(method) on the same clip in the same run; flatness =
t(longest clip) / t(shortest clip) per method (1.0 = independent of episode length). Targets (issue 15):
keyframe >= 50x and exact >= 4x on the 24-min clip at 64 frames, keyframe flat from 10 to 24 min.

    python benchmarks/frame_extraction.py                  # 10 and 24 min, 64 frames, best of 2
    python benchmarks/frame_extraction.py --quick          # 20 s and 40 s clips, 8 frames (smoke run)
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

METHODS = ("keyframe", "exact", "exact_1worker", "inproc_keyframe")
TARGETS = {"keyframe": 50.0, "exact": 4.0}
FLAT_LIMIT = 1.25  # keyframe t(longest)/t(shortest) counted as flat


def reference(clip: Path, fps: float, workdir: Path) -> tuple[float, int]:
    out = Path(tempfile.mkdtemp(prefix="ref-", dir=workdir))
    cmd = [
        C.FFMPEG,
        "-nostdin",
        "-loglevel",
        "error",
        "-y",
        "-i",
        str(clip),
        "-vf",
        f"fps={fps}",
        "-q:v",
        "2",
        str(out / "%05d.jpg"),
    ]
    with C.Timer() as t:
        subprocess.run(cmd, check=True)
    n = len(list(out.glob("*.jpg")))
    for f in out.glob("*.jpg"):
        f.unlink()
    out.rmdir()
    return t.s, n


def extract(clip: Path, probe, frames: int, method: str, workdir: Path) -> tuple[float, int]:
    from anime_pipeline.media.sampling import SamplingConfig, sample_frames
    from anime_pipeline.media.shards import extract_frame_shard, shard_path, write_frame_shard

    mode = "exact" if method.startswith("exact") else "keyframe"
    if method == "inproc_keyframe":
        cfg = SamplingConfig(num_frames=frames, max_side=512, mode=mode, timeout_s=None)
        with C.Timer() as t:
            got = sample_frames(clip, cfg, probe, jpeg_quality=90)
            info = write_frame_shard(
                got, mal_id=1, episode=1, source_sha256=probe.sha256, dest=shard_path(workdir / "inproc", 1)
            )
        return t.s, info.num_frames
    workers = 1 if method == "exact_1worker" else 0
    cfg = SamplingConfig(num_frames=frames, max_side=512, mode=mode, timeout_s=1800.0, workers=workers)
    with C.Timer() as t:
        info = extract_frame_shard(clip, mal_id=1, dest=shard_path(workdir / method, 1), cfg=cfg, probe=probe)
    return t.s, info.num_frames


def keyframes_in_window(clip: Path, duration_s: float, skip_s: float = 1.0) -> int:
    """Keyframes inside the sampled window (from the MP4 index): with fewer keyframes than samples, at least
    the difference must be decoded as exact frames in keyframe mode (each keyframe is taken once)."""
    import av

    with av.open(str(clip)) as c:
        s = c.streams.video[0]
        tb = float(s.time_base)
        return sum(
            1 for e in s.index_entries if e.is_keyframe and skip_s <= e.timestamp * tb <= duration_s - skip_s
        )


def overhead(clip: Path, probe, frames: int, workdir: Path) -> dict:
    """Seconds a title pays besides sampling: probe, hash, worker start, Parquet write, preview."""
    from anime_pipeline.media.preview import contact_sheet
    from anime_pipeline.media.probe import probe_video
    from anime_pipeline.media.sampling import SamplingConfig, close_workers, sample_frames
    from anime_pipeline.media.shards import read_frame_shard, shard_path, write_frame_shard
    from anime_pipeline.paths import file_sha256

    out = {}
    with C.Timer() as t:
        probe_video(clip, sha256=False)
    out["ffprobe_s"] = t.s
    with C.Timer() as t:
        file_sha256(clip)
    out["sha256_s"] = t.s
    one = SamplingConfig(num_frames=1, max_side=512, mode="keyframe", timeout_s=600.0)
    sample_frames(clip, one, probe)  # warm
    warm = []
    for _ in range(3):
        with C.Timer() as t:
            sample_frames(clip, one, probe)
        warm.append(t.s)
    cold = []
    for _ in range(2):
        close_workers()
        with C.Timer() as t:
            sample_frames(clip, one, probe)
        cold.append(t.s)
    out["worker_start_s"] = max(0.0, C.best(cold) - C.best(warm))
    got = sample_frames(
        clip,
        SamplingConfig(num_frames=frames, max_side=512, mode="keyframe", timeout_s=600.0),
        probe,
        jpeg_quality=90,
    )
    dest = shard_path(workdir / "overhead", 1)
    with C.Timer() as t:
        write_frame_shard(got, mal_id=1, episode=1, source_sha256=probe.sha256 or "0" * 64, dest=dest)
    out["parquet_write_s"] = t.s
    df = read_frame_shard(dest)
    with C.Timer() as t:
        contact_sheet(df["image"].to_list(), columns=min(8, df.height))
    out["preview_s"] = t.s
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, nargs="+", default=[10, 24], help="clip lengths")
    ap.add_argument("--frames", type=int, default=64, help="frames per episode")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--fps", type=float, default=0.16, help="reference decode rate (reference dataset: 0.16)")
    ap.add_argument("--repeats", type=int, default=2, help="repeats per measurement (the best is kept)")
    ap.add_argument(
        "--cache-dir", type=Path, default=None, help="clip cache (default: <tmp>/anime_pipeline_bench_cache)"
    )
    ap.add_argument("--quick", action="store_true", help="smoke run: 20 s / 40 s clips, 8 frames, 1 repeat")
    ap.add_argument("--out", help="also write the JSON result to this file")
    a = ap.parse_args(argv)
    if a.quick:
        a.minutes, a.frames, a.repeats = [1 / 3, 2 / 3], 8, 1
    cache = a.cache_dir or C.default_cache_dir()
    from anime_pipeline.media.probe import probe_video
    from anime_pipeline.media.sampling import SamplingConfig, decode_split, prestart_worker, sample_frames

    processes, threads = decode_split("exact", a.frames)
    clips = {m: C.ensure_clip(cache, round(m * 60)) for m in a.minutes}
    rows, times, over, keys = [], {}, {}, {}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-frames-") as td:
        work = Path(td)
        for m, clip in clips.items():
            probe = probe_video(clip)  # with sha256, as recorded by the `episodes` asset
            sample_frames(clip, SamplingConfig(num_frames=1, timeout_s=600.0), probe)  # a warm worker
            prestart_worker(processes)  # ... and as many as exact mode uses
            ref, n_ref = [], 0
            got: dict[str, list[float]] = {}
            counts = {}
            for _ in range(a.repeats):  # interleaved so drift in machine load hits all methods alike
                s, n_ref = reference(clip, a.fps, work)
                ref.append(s)
                for meth in a.methods:
                    s, n = extract(clip, probe, a.frames, meth, work)
                    got.setdefault(meth, []).append(s)
                    counts[meth] = n
            tr = C.best(ref)
            times[(m, "reference")] = tr
            rows.append(
                {
                    "minutes": m,
                    "method": "reference (ffmpeg fps=0.16 → JPEG)",
                    "frames": n_ref,
                    "seconds": tr,
                    "speedup": 1.0,
                }
            )
            for meth, ss in got.items():
                times[(m, meth)] = C.best(ss)
                rows.append(
                    {
                        "minutes": m,
                        "method": meth,
                        "frames": counts[meth],
                        "seconds": C.best(ss),
                        "speedup": tr / C.best(ss),
                    }
                )
            over[m] = overhead(clip, probe, a.frames, work)
            keys[m] = keyframes_in_window(clip, probe.duration_s)
            print(f"done {m:g} min ({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)

    longest, shortest = max(a.minutes), min(a.minutes)
    speedup = {
        f"{m:g}min": {meth: C.r3(times[(m, "reference")] / times[(m, meth)]) for meth in a.methods}
        for m in a.minutes
    }
    flat = {
        meth: C.r3(times[(longest, meth)] / times[(shortest, meth)]) for meth in ["reference", *a.methods]
    }
    on_longest = speedup[f"{longest:g}min"]
    met = {k: on_longest[k] >= v for k, v in TARGETS.items() if k in on_longest}
    if "keyframe" in flat and len(a.minutes) > 1:
        met["keyframe_flat"] = flat["keyframe"] <= FLAT_LIMIT

    print(
        f"\nframe extraction, {C.machine()['cpus']} CPUs; clips 720p H.264 24 fps GOP 250; {a.frames} frames, "
        f"512 px JPEG; best of {a.repeats}\n"
    )
    print(C.table(rows, ["minutes", "method", "frames", "seconds", "speedup"]))
    print(
        f"exact mode here: {processes} decoder process(es) × {threads or 'auto'} thread(s); "
        "exact_1worker: 1 process × auto threads"
    )
    print("\nside by side (speedup vs the reference, same clip, same run):")
    print(C.table([{"minutes": m, **speedup[f"{m:g}min"]} for m in a.minutes], ["minutes", *a.methods]))
    print(
        f"\nflatness t({longest:g} min)/t({shortest:g} min): "
        + ", ".join(f"{k} {v}" for k, v in flat.items())
    )
    print(
        "keyframes in the sampled window: "
        + ", ".join(
            f"{m:g} min {keys[m]} (samples that must be exact frames in keyframe mode: {max(0, a.frames - keys[m])})"
            for m in a.minutes
        )
    )
    print("\nper-title overhead (seconds, not in the rows above):")
    print(
        C.table(
            [{"minutes": m, **{k: C.r3(v) for k, v in o.items()}} for m, o in over.items()],
            ["minutes", "ffprobe_s", "sha256_s", "worker_start_s", "parquet_write_s", "preview_s"],
        )
    )
    print(
        "\ntargets: "
        + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in met.items())
        + f" (keyframe >= {TARGETS['keyframe']:g}x, exact >= {TARGETS['exact']:g}x on {longest:g} min; "
        f"flat: <= {FLAT_LIMIT})"
    )
    C.emit(
        {
            "benchmark": "frame_extraction",
            "frames": a.frames,
            "speedup": speedup,
            "flatness": flat,
            "seconds": {f"{m:g}min_{k}": C.r3(v) for (m, k), v in times.items()},
            "overhead_s": {f"{m:g}min": {k: C.r3(v) for k, v in o.items()} for m, o in over.items()},
            "keyframes_in_window": {f"{m:g}min": k for m, k in keys.items()},
            "exact_decoders": {"processes": processes, "threads_each": threads},
            "targets_met": met,
            "machine": C.machine(),
        },
        a.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
