"""Per-title cost of a `media_job` run (episodes → frame_shards for one title) by executor.

The `new_titles_sensor` launches one `media_job` run per title; a run worker then executes the two steps.
With `ANIME_PIPELINE_MEDIA_EXECUTOR=multiprocess` (Dagster's default executor) every step gets a fresh
Python process (each imports Dagster and the project again); with `in_process` (the project's default)
both steps run in the run worker. This runs the demo catalog, then
`media_job` for `--titles` demo titles per executor (interleaved, each title once), each run in a fresh
Python process executing the reconstructable job with `dg.execute_job`, as the default run launcher's
run worker does. Printed per run: wall time of that process, the time inside the steps (Dagster's step
stats: episodes, frame_shards and its check) and the rest (process starts, imports, event writes).

    python benchmarks/media_run.py             # 4 titles per executor
    python benchmarks/media_run.py --quick     # 1 title per executor
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

EXECUTORS = ("multiprocess", "in_process")


def run_one(key: str, executor: str) -> None:
    """Child: one media_job run for partition `key` on the instance in DAGSTER_HOME (the job's executor is
    `executor`, set through ANIME_PIPELINE_MEDIA_EXECUTOR by the parent); prints its step stats."""
    import json

    import dagster as dg
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    job = ReconstructableRepository.for_module(
        "anime_pipeline.definitions", "defs", working_directory=str(C.REPO)
    ).get_reconstructable_job("media_job")
    with dg.DagsterInstance.get() as instance:
        result = dg.execute_job(job, instance=instance, tags={"dagster/partition": key})
        if not result.success:
            raise SystemExit(f"media_job failed for {key} ({executor})")
        stats = instance.get_run_step_stats(result.run_id)
    print(json.dumps({s.step_key: (s.end_time or 0) - (s.start_time or 0) for s in stats}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--titles", type=int, default=4, help="titles per executor")
    ap.add_argument("--quick", action="store_true", help="smoke run: 1 title per executor")
    ap.add_argument("--out")
    ap.add_argument("--run", nargs=2, metavar=("KEY", "EXECUTOR"), help=argparse.SUPPRESS)  # the child
    a = ap.parse_args(argv)
    if a.run:
        run_one(*a.run)
        return 0
    if a.quick:
        a.titles = 1
    with tempfile.TemporaryDirectory(prefix="bench-media-run-") as td:
        os.environ["ANIME_PIPELINE_HOME"] = str(Path(td) / "data")
        os.environ["ANIME_PIPELINE_PROFILE"] = "demo"
        import json
        import subprocess

        import dagster as dg

        from anime_pipeline.cli import ensure_dagster_home, run_job
        from anime_pipeline.definitions import build_defs
        from anime_pipeline.defs.partitions import MAL_ID_PARTITIONS_NAME
        from anime_pipeline.settings import Settings

        settings = Settings.from_env()
        dagster_home = ensure_dagster_home(settings)
        with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
            assert run_job(build_defs(settings), "catalog_job", instance=instance).success
            keys = instance.get_dynamic_partitions(MAL_ID_PARTITIONS_NAME)
        if len(keys) < a.titles * len(EXECUTORS):
            raise SystemExit(f"the demo has {len(keys)} titles; at most {len(keys) // 2} per executor")
        rows, per = [], {e: [] for e in EXECUTORS}
        env = dict(os.environ, DAGSTER_HOME=str(dagster_home))
        for i, key in enumerate(keys[: a.titles * len(EXECUTORS)]):
            executor = EXECUTORS[i % len(EXECUTORS)]  # interleaved: load drift hits both alike
            t0 = time.perf_counter()
            child = subprocess.run(
                [sys.executable, __file__, "--run", key, executor],
                env={**env, "ANIME_PIPELINE_MEDIA_EXECUTOR": executor},
                capture_output=True,
                text=True,
                check=False,
            )
            wall = time.perf_counter() - t0
            if child.returncode:
                raise SystemExit(f"run for {key} ({executor}) failed:\n{child.stderr[-3000:]}")
            steps = json.loads(child.stdout.strip().splitlines()[-1])
            inside = sum(steps.values())
            row = {
                "title": key,
                "executor": executor,
                "wall_s": C.r3(wall),
                "episodes_step_s": C.r3(steps.get("episodes", 0.0)),
                "frame_shards_step_s": C.r3(steps.get("frame_shards", 0.0)),
                "check_step_s": C.r3(
                    sum(v for k, v in steps.items() if k not in ("episodes", "frame_shards"))
                ),
                "outside_steps_s": C.r3(wall - inside),
            }
            rows.append(row)
            per[executor].append(row)
            print(f"{key} {executor}: {wall:.1f} s", file=sys.stderr, flush=True)

    def mean(e: str, k: str) -> float:
        return C.r3(statistics.mean(r[k] for r in per[e]))

    summary = [
        {
            "executor": e,
            "runs": len(per[e]),
            "wall_s": mean(e, "wall_s"),
            "inside_steps_s": C.r3(
                mean(e, "episodes_step_s") + mean(e, "frame_shards_step_s") + mean(e, "check_step_s")
            ),
            "outside_steps_s": mean(e, "outside_steps_s"),
        }
        for e in EXECUTORS
    ]
    ratio = C.r3(summary[0]["wall_s"] / summary[1]["wall_s"])
    print(f"\nmedia_job per title (demo titles), {C.machine()['cpus']} CPUs\n")
    print(C.table(rows, list(rows[0])))
    print()
    print(C.table(summary, list(summary[0])))
    print(f"\nwall time multiprocess / in_process: {ratio}x")
    C.emit(
        {"benchmark": "media_run", "runs": rows, "summary": summary, "ratio": ratio, "machine": C.machine()},
        a.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
