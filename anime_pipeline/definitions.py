"""The one Definitions object (loaded by workspace.yaml, `dagster dev` and `dagster definitions validate`).

`build_defs(settings)` wires everything from one `Settings` (the environment, read once): resources,
jobs, schedules and sensors. An invalid setting fails here, at load, naming the variable.
"""

import dagster as dg

from anime_pipeline.defs import catalog, dataset, evaluation, media, training
from anime_pipeline.defs.resources import build_resources
from anime_pipeline.defs.schedules import build_jobs, build_schedules
from anime_pipeline.defs.sensors import build_sensors
from anime_pipeline.settings import Settings

ASSETS: list[dg.AssetsDefinition | dg.AssetSpec] = [
    catalog.CATALOG_SOURCE,
    catalog.titles,
    catalog.synopses,
    media.episodes,
    media.frame_shards,
    dataset.train_val_split,
    dataset.dataset_export,
    training.finetuned_adapter,
    evaluation.caption_eval,
]
ASSET_CHECKS = [
    catalog.titles_unique_mal_ids,
    catalog.synopses_clean,
    media.frame_shards_contract,
    media.episode_manifest_rows,
    dataset.split_disjoint_by_title,
    dataset.samples_well_formed,
    evaluation.finetuned_not_worse_than_base,
]


def build_defs(settings: Settings | None = None, env: dict[str, str] | None = None) -> dg.Definitions:
    s = settings or Settings.from_env(env)
    jobs = build_jobs(s.automation)
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=ASSET_CHECKS,
        jobs=jobs,
        schedules=build_schedules(s.automation, jobs),
        sensors=build_sensors(s.automation, next(j for j in jobs if j.name == "media_job")),
        resources=build_resources(env=env, settings=s),
    )


defs = build_defs()
