"""Sensors: new title partitions get their media runs automatically, old titles are never recomputed."""

from __future__ import annotations

import dagster as dg

from anime_pipeline.defs.partitions import MAL_ID_PARTITIONS_NAME
from anime_pipeline.settings import AutomationSettings

MAX_RUNS_PER_TICK = 50


def pending_media_partitions(instance: dg.DagsterInstance) -> list[str]:
    """Partitions (MAL ids) whose frame shard has never been materialized, in catalog order."""
    keys = instance.get_dynamic_partitions(MAL_ID_PARTITIONS_NAME)
    done = instance.get_materialized_partitions(dg.AssetKey("frame_shards"))
    return [k for k in keys if k not in done]


def build_sensors(automation: AutomationSettings, media_job) -> list[dg.SensorDefinition]:
    @dg.sensor(
        name="new_titles_sensor",
        job=media_job,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING
        if automation.media_sensor
        else dg.DefaultSensorStatus.STOPPED,
        description="Launches media_job (episodes → frame_shards) for each new title partition (one run per title, "
        "once: the run key is the MAL id, so a title that failed is not retried automatically; re-run it from the UI).",
    )
    def new_titles_sensor(context: dg.SensorEvaluationContext):
        pending = pending_media_partitions(context.instance)
        launched = set(filter(None, (context.cursor or "").split(",")))
        todo = [k for k in pending if k not in launched][:MAX_RUNS_PER_TICK]
        if not todo:
            return dg.SkipReason(f"no new titles ({len(pending)} pending already launched)")
        context.update_cursor(",".join(sorted(launched | set(todo))))
        return [dg.RunRequest(run_key=f"media-{k}", partition_key=k) for k in todo]

    return [new_titles_sensor]
