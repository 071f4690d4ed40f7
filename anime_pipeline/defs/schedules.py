"""Jobs and schedules: the catalog is re-collected on a schedule; the finetune runs on demand or weekly."""

from __future__ import annotations

import os

import dagster as dg

from anime_pipeline.defs.partitions import mal_id_partitions

catalog_job = dg.define_asset_job(
    "catalog_job",
    selection=dg.AssetSelection.assets("titles", "synopses"),
    description="Re-collect the catalog: new titles become new partitions (media runs follow via a sensor).",
    # Bounded: a server that drips bytes forever or a day-long 429 storm cannot hold the run open.
    tags={"dagster/max_runtime": str(int(os.environ.get("ANIME_PIPELINE_CATALOG_MAX_RUNTIME_S", 6 * 3600)))},
)
media_job = dg.define_asset_job(
    "media_job",
    selection=dg.AssetSelection.assets("episodes", "frame_shards"),
    partitions_def=mal_id_partitions,
    description="Acquire episode 1 and extract its frame shard for one title (partition = MAL id).",
)
training_job = dg.define_asset_job(
    "training_job",
    selection=dg.AssetSelection.assets("train_val_split", "dataset_export", "finetuned_adapter", "caption_eval"),
    description="Split, fine-tune and evaluate on everything collected so far (once per batch of changes).",
)
JOBS = [catalog_job, media_job, training_job]


def _status(var: str, default_on: bool) -> dg.DefaultScheduleStatus:
    raw = os.environ.get(var, "").strip().lower()
    on = default_on if not raw else raw in ("1", "true", "on", "yes")
    return dg.DefaultScheduleStatus.RUNNING if on else dg.DefaultScheduleStatus.STOPPED


def _demo() -> bool:
    return os.environ.get("ANIME_PIPELINE_PROFILE", "demo").strip().lower() in ("", "demo")


CATALOG_SCHEDULE_RUN_CONFIG = {"ops": {"titles": {"config": {"listing_max_age_s": 0.0}}}}

catalog_schedule = dg.ScheduleDefinition(
    name="catalog_daily",
    job=catalog_job,
    cron_schedule=os.environ.get("ANIME_PIPELINE_CATALOG_CRON", "0 3 * * *"),
    default_status=_status("ANIME_PIPELINE_CATALOG_SCHEDULE", default_on=_demo()),
    # A scheduled re-collection always fetches the listing afresh (new titles); per-title synopses are
    # revalidated through the HTTP cache, so unchanged ones cost a 304 and no body.
    run_config=CATALOG_SCHEDULE_RUN_CONFIG,
    description="Re-collect titles and synopses (cron from ANIME_PIPELINE_CATALOG_CRON, default daily 03:00).",
)
training_schedule = dg.ScheduleDefinition(
    name="training_weekly",
    job=training_job,
    cron_schedule=os.environ.get("ANIME_PIPELINE_TRAINING_CRON", "0 5 * * 0"),
    default_status=_status("ANIME_PIPELINE_TRAINING_SCHEDULE", default_on=False),
    description="Fine-tune once per batch of changes (weekly; off by default, turn on in the UI or with "
    "ANIME_PIPELINE_TRAINING_SCHEDULE=on).",
)
SCHEDULES = [catalog_schedule, training_schedule]
