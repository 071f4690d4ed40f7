"""The one Definitions object (loaded by workspace.yaml, `dagster dev` and `dagster definitions validate`)."""

import dagster as dg

from anime_pipeline.defs import catalog, dataset, evaluation, media, schedules, sensors, training
from anime_pipeline.defs.resources import build_resources

defs = dg.Definitions(
    assets=[
        catalog.CATALOG_SOURCE,
        catalog.titles,
        catalog.synopses,
        media.episodes,
        media.frame_shards,
        dataset.train_val_split,
        dataset.dataset_export,
        training.finetuned_adapter,
        evaluation.caption_eval,
    ],
    asset_checks=[
        catalog.titles_unique_mal_ids,
        catalog.synopses_clean,
        media.frame_shards_contract,
        dataset.split_disjoint_by_title,
        dataset.samples_well_formed,
        evaluation.finetuned_not_worse_than_base,
    ],
    jobs=schedules.JOBS,
    schedules=schedules.SCHEDULES,
    sensors=sensors.SENSORS,
    resources=build_resources(),
)
