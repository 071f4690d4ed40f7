"""Jobs and schedules: the catalog is re-collected on a schedule; the finetune runs on demand or weekly.

Everything configurable comes from `Settings.automation` (settings.py reads the environment once);
nothing here reads `os.environ`.
"""

from __future__ import annotations

import dagster as dg

from anime_pipeline.defs.partitions import mal_id_partitions
from anime_pipeline.settings import AutomationSettings

CATALOG_ASSETS = ("titles", "synopses")
MEDIA_ASSETS = ("episodes", "frame_shards")
TRAINING_ASSETS = ("train_val_split", "dataset_export", "finetuned_adapter", "caption_eval")
CATALOG_SCHEDULE_RUN_CONFIG = {"ops": {"titles": {"config": {"listing_max_age_s": 0.0}}}}


def build_jobs(automation: AutomationSettings) -> list[dg.UnresolvedAssetJobDefinition]:
    return [
        dg.define_asset_job(
            "catalog_job",
            selection=dg.AssetSelection.assets(*CATALOG_ASSETS),
            description="Re-collect the catalog: new titles become new partitions (media runs follow via a sensor).",
            # Bounded: a server that drips bytes forever or a day-long 429 storm cannot hold the run open.
            tags={"dagster/max_runtime": str(automation.catalog_max_runtime_s)},
        ),
        dg.define_asset_job(
            "media_job",
            selection=dg.AssetSelection.assets(*MEDIA_ASSETS),
            partitions_def=mal_id_partitions,
            description="Acquire episode 1 and extract its frame shard for one title (partition = MAL id).",
            # one run per title: by default both steps run in the run worker, so a title pays one interpreter
            # start and one import of the project, not one per step (ANIME_PIPELINE_MEDIA_EXECUTOR)
            executor_def=dg.in_process_executor
            if automation.media_executor == "in_process"
            else dg.multi_or_in_process_executor,  # Dagster's default: a process per step
        ),
        dg.define_asset_job(
            "training_job",
            selection=dg.AssetSelection.assets(*TRAINING_ASSETS),
            description="Split, fine-tune and evaluate on everything collected so far (once per batch of changes).",
        ),
    ]


def _status(on: bool) -> dg.DefaultScheduleStatus:
    return dg.DefaultScheduleStatus.RUNNING if on else dg.DefaultScheduleStatus.STOPPED


def build_schedules(automation: AutomationSettings, jobs: list) -> list[dg.ScheduleDefinition]:
    by_name = {j.name: j for j in jobs}
    return [
        dg.ScheduleDefinition(
            name="catalog_daily",
            job=by_name["catalog_job"],
            cron_schedule=automation.catalog_cron,
            default_status=_status(automation.catalog_schedule),
            # A scheduled re-collection always fetches the listing afresh (new titles); per-title synopses are
            # revalidated through the HTTP cache, so unchanged ones cost a 304 and no body.
            run_config=CATALOG_SCHEDULE_RUN_CONFIG,
            description="Re-collect titles and synopses (cron from ANIME_PIPELINE_CATALOG_CRON, default daily 03:00).",
        ),
        dg.ScheduleDefinition(
            name="training_weekly",
            job=by_name["training_job"],
            cron_schedule=automation.training_cron,
            default_status=_status(automation.training_schedule),
            description="Fine-tune once per batch of changes (weekly; off by default, turn on in the UI or with "
            "ANIME_PIPELINE_TRAINING_SCHEDULE=on).",
        ),
    ]
