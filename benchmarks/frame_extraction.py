"""Frame extraction: seek-based sampling (the project's `sample_frames`) vs decoding the whole file.

For each clip length (720p H.264 testsrc2, 24 fps, GOP 250, cached) and each frame count, times:
  * full_decode   ffmpeg decodes the whole file with `-vf fps=0.16` to JPEG (the reference dataset's method;
                  independent of the frame count, timed once per clip and repeat)
  * decord_exact  sample_frames(mode="exact", decoder="decord")
  * pyav_exact    sample_frames(mode="exact", decoder="pyav")
  * pyav_keyframe sample_frames(mode="keyframe", decoder="pyav")
sample_frames runs as the asset runs it (decoding in its worker subprocess, with the time limit) on a
probe made beforehand (probing is not part of the comparison).

Then the process-pool ratio: `--titles` shards extracted (`extract_frame_shard`, probe with sha256 as in
the asset, the asset's default sampling: 64 frames exact) one after another vs by a
`ProcessPoolExecutor(2)`.

Results are ratios from one run: speedup = t(full_decode) / t(method) on the same clip, flatness =
t(longest clip) / t(shortest clip) per method (1.0 = independent of episode length), pool speedup =
t(sequential) / t(pool). Seconds are printed for context only.

    python benchmarks/frame_extraction.py                # 2, 10, 24 min; 32 and 64 frames
    python benchmarks/frame_extraction.py --quick        # 20 s and 40 s clips, 8 frames (smoke run)
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import multiprocessing as mp
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

METHODS = {
    "decord_exact": dict(mode="exact", decoder="decord"),
    "pyav_exact": dict(mode="exact", decoder="pyav"),
    "pyav_keyframe": dict(mode="keyframe", decoder="pyav"),
}
TARGET_SPEEDUP = 5.0


def full_decode(clip: Path, fps: float, workdir: Path) -> tuple[float, int]:
    out = Path(tempfile.mkdtemp(prefix="full-", dir=workdir))
    cmd = [C.FFMPEG, "-nostdin", "-loglevel", "error", "-y", "-i", str(clip), "-vf", f"fps={fps}",
           "-q:v", "2", str(out / "%05d.jpg")]
    with C.Timer() as t:
        subprocess.run(cmd, check=True)
    n = len(list(out.glob("*.jpg")))
    for f in out.glob("*.jpg"):
        f.unlink()
    out.rmdir()
    return t.s, n


def seek_sample(clip: Path, probe, frames: int, method: str) -> tuple[float, int]:
    from anime_pipeline.media.sampling import SamplingConfig, sample_frames

    cfg = SamplingConfig(num_frames=frames, max_side=512, timeout_s=1800.0, **METHODS[method])
    with C.Timer() as t:
        got = sample_frames(clip, cfg, probe)
    return t.s, len(got)


def _extract_one(args: tuple[str, int, str, int]) -> int:
    video, mal_id, dest_root, frames = args
    from anime_pipeline.media.sampling import SamplingConfig
    from anime_pipeline.media.shards import extract_frame_shard, shard_path

    info = extract_frame_shard(Path(video), mal_id=mal_id, dest=shard_path(Path(dest_root), mal_id),
                               cfg=SamplingConfig(num_frames=frames))
    return info.num_frames


def pool_ratio(clip: Path, titles: int, frames: int, workdir: Path) -> dict:
    jobs_seq = [(str(clip), 1 + i, str(workdir / "seq"), frames) for i in range(titles)]
    jobs_par = [(str(clip), 1 + i, str(workdir / "par"), frames) for i in range(titles)]
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(2, mp_context=ctx) as pool:
        list(pool.map(abs, [1, 2]))  # start (spawn + import) both workers before timing
        pool.submit(_extract_one, (str(clip), 999, str(workdir / "warm"), 4)).result()  # warm imports
        with C.Timer() as tp:
            n_par = list(pool.map(_extract_one, jobs_par))
    _extract_one((str(clip), 998, str(workdir / "warm"), 4))  # same warm-up in this process
    with C.Timer() as ts:
        n_seq = [_extract_one(j) for j in jobs_seq]
    assert n_seq == n_par, (n_seq, n_par)
    return {"titles": titles, "frames": frames, "sequential_s": ts.s, "pool2_s": tp.s, "speedup": ts.s / tp.s}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, nargs="+", default=[2, 10, 24], help="clip lengths")
    ap.add_argument("--frames", type=int, nargs="+", default=[32, 64], help="frames per episode")
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--fps", type=float, default=0.16, help="full decode rate (reference dataset: 0.16)")
    ap.add_argument("--repeats", type=int, default=1, help="repeats per measurement (the best is kept)")
    ap.add_argument("--titles", type=int, default=4, help="titles for the process-pool ratio (0: skip)")
    ap.add_argument("--pool-minutes", type=float, default=2, help="clip length for the process-pool ratio")
    ap.add_argument("--pool-frames", type=int, default=64)
    ap.add_argument("--cache-dir", type=Path, default=None, help="clip cache (default: <tmp>/anime_pipeline_bench_cache)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 20 s / 40 s clips, 8 frames, 2 titles")
    ap.add_argument("--out", help="also write the JSON result to this file")
    a = ap.parse_args(argv)
    if a.quick:
        a.minutes, a.frames, a.titles, a.pool_minutes, a.pool_frames = [1 / 3, 2 / 3], [8], 2, 1 / 3, 8
    cache = a.cache_dir or C.default_cache_dir()
    from anime_pipeline.media.probe import probe_video

    clips = {m: C.ensure_clip(cache, round(m * 60)) for m in a.minutes}
    rows, times = [], {}  # times[(minutes, method, frames)] = seconds
    with tempfile.TemporaryDirectory(prefix="bench-frames-") as td:
        work = Path(td)
        for m, clip in clips.items():
            probe = probe_video(clip, sha256=False)
            full, n_full = [], 0
            seek: dict[tuple[str, int], list[float]] = {}
            counts = {}
            for _ in range(a.repeats):  # interleaved so drift in machine speed hits all methods alike
                s, n_full = full_decode(clip, a.fps, work)
                full.append(s)
                for f in a.frames:
                    for meth in a.methods:
                        s, n = seek_sample(clip, probe, f, meth)
                        seek.setdefault((meth, f), []).append(s)
                        counts[(meth, f)] = n
            tf = C.best(full)
            times[(m, "full_decode", 0)] = tf
            rows.append({"minutes": m, "method": "full_decode", "frames": n_full, "seconds": tf, "speedup": 1.0})
            for (meth, f), ss in seek.items():
                times[(m, meth, f)] = C.best(ss)
                rows.append({"minutes": m, "method": meth, "frames": counts[(meth, f)], "seconds": C.best(ss),
                             "speedup": tf / C.best(ss)})
            print(f"done {m:g} min", file=sys.stderr, flush=True)
        pool = pool_ratio(C.ensure_clip(cache, round(a.pool_minutes * 60)), a.titles, a.pool_frames, work) \
            if a.titles > 0 else None

    longest, shortest = max(a.minutes), min(a.minutes)
    speedup = {f"{m:g}min": {f"{meth}_{f}": C.r3(times[(m, "full_decode", 0)] / times[(m, meth, f)])
                             for meth in a.methods for f in a.frames} for m in a.minutes}
    flat = {"full_decode": C.r3(times[(longest, "full_decode", 0)] / times[(shortest, "full_decode", 0)])}
    for meth in a.methods:
        for f in a.frames:
            flat[f"{meth}_{f}"] = C.r3(times[(longest, meth, f)] / times[(shortest, meth, f)])
    on_longest = speedup[f"{longest:g}min"]
    met = {k: v >= TARGET_SPEEDUP for k, v in on_longest.items()}

    print(f"\nframe extraction, {C.machine()['cpus']} CPUs; clips 720p H.264 24 fps GOP 250\n")
    print(C.table(rows, ["minutes", "method", "frames", "seconds", "speedup"]))
    print(f"\nflatness t({longest:g} min)/t({shortest:g} min): " + ", ".join(f"{k} {v}" for k, v in flat.items()))
    if pool:
        print("\n" + C.table([pool], ["titles", "frames", "sequential_s", "pool2_s", "speedup"]))
    print(f"\ntarget >= {TARGET_SPEEDUP:g}x vs full decode on the {longest:g}-min clip: "
          + ", ".join(f"{k} {'met' if v else 'NOT met'}" for k, v in met.items()))
    C.emit({"benchmark": "frame_extraction", "speedup": speedup, "flatness": flat,
            "pool_speedup": C.r3(pool["speedup"]) if pool else None,
            "target_speedup": TARGET_SPEEDUP, "target_met_longest": met, "machine": C.machine()}, a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
