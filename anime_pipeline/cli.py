"""Command line: `python -m anime_pipeline demo | job NAME | dagster-home`.

`demo` runs the project's jobs (catalog_job, media_job per title, training_job) on the current settings
against the Dagster instance under the data dir, so `dagster dev` (./scripts/dev) shows the same runs
under their jobs afterwards (and can re-execute them). `job NAME` is one run of one job on the instance
at DAGSTER_HOME: what one step of a deployment (one pod / task) does.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from anime_pipeline.defs.schedules import CATALOG_ASSETS, MEDIA_ASSETS, TRAINING_ASSETS
from anime_pipeline.settings import Settings

JOB_ASSETS = {"catalog_job": CATALOG_ASSETS, "media_job": MEDIA_ASSETS, "training_job": TRAINING_ASSETS}

REPO_ROOT = Path(__file__).resolve().parent.parent
DAGSTER_YAML = REPO_ROOT / "dagster.yaml"


def ensure_dagster_home(settings: Settings) -> Path:
    """DAGSTER_HOME under the data dir, holding the project's dagster.yaml (instance config)."""
    home = settings.dagster_home
    home.mkdir(parents=True, exist_ok=True)
    target = home / "dagster.yaml"
    if DAGSTER_YAML.exists() and (not target.exists() or target.read_bytes() != DAGSTER_YAML.read_bytes()):
        shutil.copyfile(DAGSTER_YAML, target)
    return home


def _instance(settings: Settings):
    import dagster as dg

    os.environ["DAGSTER_HOME"] = str(ensure_dagster_home(settings))
    return dg.DagsterInstance.get()


def run_job(
    defs,
    job_name: str,
    *,
    instance,
    partition_key: str | None = None,
    run_config: dict | None = None,
    log_level: str = "INFO",
    tags: dict | None = None,
):
    """One run of a job of the definitions (so the UI shows it under that job and can re-execute it)."""
    job = defs.resolve_job_def(job_name)
    ops = {k: v for k, v in (run_config or {}).items() if k in JOB_ASSETS[job_name]}
    return job.execute_in_process(
        instance=instance,
        partition_key=partition_key,
        raise_on_error=False,
        run_config={"ops": ops, "loggers": {"console": {"config": {"log_level": log_level}}}},
        tags={"anime_pipeline/launched_by": "cli", **(tags or {})},
    )


def run_job_multiprocess(
    job_name: str,
    *,
    instance,
    partition_key: str | None = None,
    run_config: dict | None = None,
    tags: dict | None = None,
):
    """One run of a job with every step in its own process (the job is reloaded from
    `anime_pipeline.definitions` in each, so each step resolves its own settings and local dir)."""
    import dagster as dg
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    job = ReconstructableRepository.for_module(
        "anime_pipeline.definitions", "defs", working_directory=str(REPO_ROOT)
    ).get_reconstructable_job(job_name)
    run_tags = {"anime_pipeline/launched_by": "cli", **(tags or {})}
    if partition_key:
        run_tags["dagster/partition"] = partition_key
    ops = {k: v for k, v in (run_config or {}).items() if k in JOB_ASSETS[job_name]}
    return dg.execute_job(job, instance=instance, tags=run_tags, run_config={"ops": ops} if ops else None)


def run_all(
    settings: Settings,
    *,
    out=sys.stdout,
    run_config: dict | None = None,
    instance=None,
    log_level: str = "INFO",
) -> dict:
    """Run the project's jobs: catalog_job, then media_job for each title partition, then training_job
    (split → export → fine-tune → eval), each a run of that job on the instance.

    A title whose episode or frames fail is reported and skipped; the rest of the graph still runs.
    Returns a summary dict (also printed).
    """
    from anime_pipeline.definitions import build_defs
    from anime_pipeline.defs.partitions import MAL_ID_PARTITIONS_NAME

    instance = instance or _instance(settings)
    defs = build_defs(settings)
    started = time.monotonic()

    def step(job_name, partition_key=None):
        t0 = time.monotonic()
        result = run_job(
            defs,
            job_name,
            instance=instance,
            partition_key=partition_key,
            run_config=run_config,
            log_level=log_level,
        )
        label = job_name + (f" [{partition_key}]" if partition_key else "")
        print(
            f"  {'ok  ' if result.success else 'FAIL'} {label} ({time.monotonic() - t0:.1f}s)",
            file=out,
            flush=True,
        )
        return result

    print(f"anime_pipeline: profile={settings.profile} data={settings.store_uri}", file=out, flush=True)
    if not step("catalog_job").success:
        raise SystemExit("catalog stage failed; see the run in `./scripts/dev`")
    keys = instance.get_dynamic_partitions(MAL_ID_PARTITIONS_NAME)
    failed = [k for k in keys if not step("media_job", partition_key=k).success]
    if not step("training_job").success:
        raise SystemExit("training_job failed; see the run in `./scripts/dev`")
    summary = summarize(settings, instance)
    summary.update(
        {"titles": len(keys), "failed_titles": failed, "wall_s": round(time.monotonic() - started, 1)}
    )
    return summary


def summarize(settings: Settings, instance) -> dict:
    import dagster as dg

    def meta(key: str) -> dict:
        ev = instance.get_latest_materialization_event(dg.AssetKey(key))
        if ev is None or ev.asset_materialization is None:
            return {}
        return {k: getattr(v, "value", v) for k, v in ev.asset_materialization.metadata.items()}

    adapter = meta("finetuned_adapter")
    ev = meta("caption_eval")
    base = settings.store_uri
    return {
        "data_dir": base,
        "catalog": f"{base}/catalog",
        "frames": f"{base}/frames",
        "splits": f"{base}/splits",
        "release": f"{base}/release",
        "adapter": adapter.get("adapter_path"),
        "eval": ev.get("captions_path"),
        "val_loss_base": ev.get("val_loss_base"),
        "val_loss_finetuned": ev.get("val_loss_finetuned"),
        "content_score_base": ev.get("content_score_base"),
        "content_score_finetuned": ev.get("content_score_finetuned"),
        "dagster_home": str(settings.dagster_home),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m anime_pipeline")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "demo",
        help="run catalog_job, media_job per title and training_job (profile from ANIME_PIPELINE_PROFILE)",
    )
    sub.add_parser("dagster-home", help="print (and prepare) the DAGSTER_HOME under the data dir")
    jp = sub.add_parser(
        "job", help="one run of one job on the instance at DAGSTER_HOME (e.g. a step of a deployment)"
    )
    jp.add_argument("name", choices=sorted(JOB_ASSETS))
    jp.add_argument("--partition", default=None, help="partition key (MAL id) for media_job")
    jp.add_argument("--all-partitions", action="store_true", help="media_job: one run per title partition")
    jp.add_argument(
        "--multiprocess",
        action="store_true",
        help="each step in its own process (Dagster's multiprocess executor), as a run worker does",
    )
    jp.add_argument(
        "--config", default=None, help='op config as JSON: {"finetuned_adapter": {"max_steps": 20}, …}'
    )
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if args.command == "dagster-home":
        print(ensure_dagster_home(settings))
        return 0
    if args.command == "job":
        import dagster as dg

        from anime_pipeline.definitions import build_defs
        from anime_pipeline.defs.partitions import MAL_ID_PARTITIONS_NAME

        instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else _instance(settings)
        defs = build_defs(settings)
        op_config = {k: {"config": v} for k, v in json.loads(args.config).items()} if args.config else None
        keys = [args.partition]
        if args.all_partitions:
            keys = list(instance.get_dynamic_partitions(MAL_ID_PARTITIONS_NAME))
        ok = True
        for key in keys:
            if args.multiprocess:
                result = run_job_multiprocess(
                    args.name, instance=instance, partition_key=key, run_config=op_config
                )
            else:
                result = run_job(defs, args.name, instance=instance, partition_key=key, run_config=op_config)
            print(
                f"{'ok  ' if result.success else 'FAIL'} {args.name}"
                + (f" [{key}]" if key else "")
                + f" run {result.run_id}"
            )
            ok = ok and result.success
        return 0 if ok else 1
    summary = run_all(settings)
    print("\nResults:", file=sys.stdout)
    for k, v in summary.items():
        print(f"  {k:<24} {v}")
    print(f"\nOpen the UI on the same instance:  ./scripts/dev   (DAGSTER_HOME={summary['dagster_home']})")
    return 0 if not summary["failed_titles"] else 1
