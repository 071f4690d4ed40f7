"""Command line: `python -m anime_pipeline demo | materialize | dagster-home`.

`demo` materializes every asset of the graph on the current profile (demo by default) against the
Dagster instance under the data dir, so `dagster dev` (./scripts/dev) shows the same runs afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from anime_pipeline.settings import Settings

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


def run_all(
    settings: Settings, *, out=sys.stdout, run_config: dict | None = None, instance=None, log_level: str = "INFO"
) -> dict:
    """Materialize titles → synopses → (episodes → frame_shards per title) → split → finetune → eval.

    A title whose episode or frames fail is reported and skipped; the rest of the graph still runs.
    Returns a summary dict (also printed).
    """
    import dagster as dg

    from anime_pipeline.definitions import defs
    from anime_pipeline.defs.partitions import MAL_ID_PARTITIONS_NAME
    from anime_pipeline.defs.resources import build_resources

    instance = instance or _instance(settings)
    assets = list(defs.assets or []) + list(defs.asset_checks or [])
    resources = build_resources(settings=settings)
    run_config = run_config or {}
    started = time.monotonic()

    def step(selection, partition_key=None):
        t0 = time.monotonic()
        result = dg.materialize(
            assets,
            selection=selection,
            instance=instance,
            resources=resources,
            partition_key=partition_key,
            raise_on_error=False,
            run_config={
                "ops": {k: v for k, v in run_config.items() if k in selection},
                "loggers": {"console": {"config": {"log_level": log_level}}},
            },
            tags={"anime_pipeline/launched_by": "cli"},
        )
        label = ",".join(selection) + (f" [{partition_key}]" if partition_key else "")
        print(f"  {'ok  ' if result.success else 'FAIL'} {label} ({time.monotonic() - t0:.1f}s)", file=out, flush=True)
        return result

    print(f"anime_pipeline: profile={settings.profile} home={settings.home}", file=out, flush=True)
    if not step(["titles", "synopses"]).success:
        raise SystemExit("catalog stage failed; see the run in `./scripts/dev`")
    keys = instance.get_dynamic_partitions(MAL_ID_PARTITIONS_NAME)
    failed = [k for k in keys if not step(["episodes", "frame_shards"], partition_key=k).success]
    for name in ("train_val_split", "dataset_export", "finetuned_adapter", "caption_eval"):
        if not step([name]).success:
            raise SystemExit(f"{name} failed; see the run in `./scripts/dev`")
    summary = summarize(settings, instance)
    summary.update({"titles": len(keys), "failed_titles": failed, "wall_s": round(time.monotonic() - started, 1)})
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
    return {
        "data_dir": str(settings.home),
        "catalog": str(settings.catalog_dir),
        "frames": str(settings.frames_dir),
        "splits": str(settings.splits_dir),
        "release": str(settings.home / "release"),
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
    sub.add_parser("demo", help="materialize every asset (profile from ANIME_PIPELINE_PROFILE, default demo)")
    sub.add_parser("dagster-home", help="print (and prepare) the DAGSTER_HOME under the data dir")
    args = parser.parse_args(argv)
    settings = Settings.from_env()
    if args.command == "dagster-home":
        print(ensure_dagster_home(settings))
        return 0
    summary = run_all(settings)
    print("\nResults:", file=sys.stdout)
    for k, v in summary.items():
        print(f"  {k:<24} {v}")
    print(f"\nOpen the UI on the same instance:  ./scripts/dev   (DAGSTER_HOME={summary['dagster_home']})")
    return 0 if not summary["failed_titles"] else 1
