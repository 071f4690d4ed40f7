"""Incremental re-collection: the daily catalog schedule + the new-titles sensor, against a loopback catalog.

Version 1 of the fixture catalog has N titles; version 2 adds three and changes one synopsis. The second
tick runs media for exactly the three new partitions, refetches no unchanged synopsis (304s), and the
split keeps every old title on its side.
"""

import dagster as dg
import polars as pl
import pytest

from anime_pipeline.cli import run_job
from anime_pipeline.definitions import build_defs
from anime_pipeline.settings import Settings
from anime_pipeline_tests.fixtures.catalog_server import CatalogServer, shikimori_anime
from anime_pipeline_tests.fixtures.media import make_clip

pytestmark = pytest.mark.slow

V1_IDS = [101, 102, 103, 104, 105]
NEW_IDS = [201, 202, 203]
CHANGED = 103


def synopsis(mal_id: int, version: int = 1) -> str:
    return (
        f"Title {mal_id} follows a group of friends through their first summer in a quiet harbour town, "
        f"where a mystery slowly unfolds (version {version}). [Written by MAL Rewrite]"
    )


def tick_catalog(defs, instance):
    """The schedule's run request, run as a run of its job (catalog_job), as the daemon would launch it."""
    schedule = defs.get_schedule_def("catalog_daily")
    ctx = dg.build_schedule_context(instance=instance)
    (request,) = schedule.evaluate_tick(ctx).run_requests
    result = defs.resolve_job_def(schedule.job_name).execute_in_process(
        instance=instance, run_config=request.run_config
    )
    assert result.success
    assert instance.get_run_by_id(result.run_id).job_name == "catalog_job"


def tick_sensor(defs, instance, cursor):
    sensor = defs.get_sensor_def("new_titles_sensor")
    ctx = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
    with dg.partition_loading_context(dynamic_partitions_store=instance):  # as the daemon does
        result = sensor.evaluate_tick(ctx)
    keys = [r.partition_key for r in result.run_requests or []]
    for key in keys:
        res = run_job(defs, sensor.job_name, instance=instance, partition_key=key)
        assert res.success, key
        assert instance.get_run_by_id(res.run_id).job_name == "media_job"
    return keys, result.cursor


def split(defs, instance, home):
    run_config = {"ops": {"train_val_split": {"config": {"val_fraction": 0.4}}}}
    assert dg.materialize(
        list(defs.assets) + list(defs.asset_checks),
        selection=["train_val_split"],
        instance=instance,
        resources=defs.resources,
        run_config=run_config,
    ).success
    train = pl.read_parquet(home / "splits" / "train.parquet")
    val = pl.read_parquet(home / "splits" / "val.parquet")
    return {**{i: "train" for i in train["mal_id"]}, **{i: "val" for i in val["mal_id"]}}


def test_second_tick_runs_only_new_titles_and_refetches_nothing_unchanged(tmp_path):
    home = tmp_path / "data"
    videos = tmp_path / "videos"
    for mal_id in V1_IDS + NEW_IDS:
        make_clip(videos / f"{mal_id}.mp4", seconds=3.0, width=96, height=64, fps=8, gop=8)
    with CatalogServer() as server, dg.instance_for_test() as instance:
        server.shikimori_titles = [shikimori_anime(i) for i in V1_IDS]
        server.jikan_synopses = {i: synopsis(i) for i in V1_IDS}
        server.mal_synopses, server.anilist_descriptions = {}, {}
        env = server.live_env(ANIME_PIPELINE_HOME=str(home), ANIME_PIPELINE_VIDEO_DIR=str(videos))
        defs = build_defs(Settings.from_env(env))

        # Version 1 ------------------------------------------------------------------------------
        tick_catalog(defs, instance)
        assert sorted(instance.get_dynamic_partitions("mal_ids")) == sorted(map(str, V1_IDS))
        launched, cursor = tick_sensor(defs, instance, None)
        assert sorted(launched) == sorted(map(str, V1_IDS))
        sides_v1 = split(defs, instance, home)
        synopses_v1 = pl.read_parquet(home / "catalog" / "synopses.parquet")
        jikan_v1 = server.count("/jikan/")
        assert jikan_v1 == len(V1_IDS)

        # Nothing changed: a tick launches nothing, and synopses are revalidated, not refetched.
        assert tick_sensor(defs, instance, cursor)[0] == []

        # Version 2: three new titles, one changed synopsis ------------------------------------
        server.shikimori_titles += [shikimori_anime(i) for i in NEW_IDS]
        server.jikan_synopses.update({i: synopsis(i) for i in NEW_IDS})
        server.jikan_synopses[CHANGED] = synopsis(CHANGED, version=2)
        not_modified_before = server.not_modified
        tick_catalog(defs, instance)
        # Unchanged titles: a conditional request each, answered 304 (no body refetched).
        assert server.not_modified - not_modified_before == len(V1_IDS) - 1
        assert server.count("/jikan/") - jikan_v1 == len(V1_IDS) + len(NEW_IDS)

        launched2, cursor = tick_sensor(defs, instance, cursor)
        assert sorted(launched2) == sorted(map(str, NEW_IDS))  # exactly the new partitions
        # No old partition was recomputed: each has exactly one materialization of its episode.
        for mal_id in V1_IDS:
            records = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("episodes"), asset_partitions=[str(mal_id)]),
                limit=10,
            ).records
            assert len(records) == 1, mal_id

        synopses_v2 = pl.read_parquet(home / "catalog" / "synopses.parquet")
        changed = (
            synopses_v1.join(synopses_v2, on="mal_id", suffix="_v2")
            .filter(pl.col("content_sha256") != pl.col("content_sha256_v2"))["mal_id"]
            .to_list()
        )
        assert changed == [CHANGED]  # only its own row changes downstream
        sides_v2 = split(defs, instance, home)
        assert {k: sides_v2[k] for k in sides_v1} == sides_v1  # old titles keep their side
        assert set(sides_v2) == set(V1_IDS + NEW_IDS)
