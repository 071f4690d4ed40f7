"""Live catalog runs with the data home on S3 (moto_server): each run starts in an empty local dir, yet the
second run revalidates unchanged synopses (304s) because the HTTP cache travels through the store, and
the titles collected before are read back from the bucket."""

import dagster as dg
import pytest

from anime_pipeline.cli import run_job
from anime_pipeline.definitions import build_defs
from anime_pipeline.settings import Settings
from anime_pipeline_tests.fixtures.catalog_server import CatalogServer, shikimori_anime

from .conftest import object_store

pytestmark = pytest.mark.slow
IDS = [101, 102, 103]


def synopsis(mal_id: int) -> str:
    return (
        f"Title {mal_id} follows a group of friends through their first summer in a quiet harbour town, "
        "where a mystery slowly unfolds. [Written by MAL Rewrite]"
    )


def test_catalog_runs_in_fresh_dirs_share_the_http_cache_through_the_bucket(s3_env, tmp_path):
    with CatalogServer() as server, dg.instance_for_test() as instance:
        server.shikimori_titles = [shikimori_anime(i) for i in IDS]
        server.jikan_synopses = {i: synopsis(i) for i in IDS}
        server.mal_synopses, server.anilist_descriptions = {}, {}
        env = server.live_env(**s3_env)

        def run(n: int):
            defs = build_defs(
                Settings.from_env({**env, "ANIME_PIPELINE_CACHE_DIR": str(tmp_path / f"run-{n}")}), env={}
            )
            assert run_job(defs, "catalog_job", instance=instance).success

        run(1)
        assert server.count("/jikan/") == len(IDS)
        store = object_store(s3_env)
        assert "http-cache/catalog_http.sqlite" in store.list_paths("http-cache")
        before = server.not_modified
        run(2)  # a new empty local dir: the cache comes from the bucket
        assert server.not_modified - before == len(IDS)  # every unchanged synopsis answered 304
    assert {"catalog/titles.parquet", "catalog/synopses.parquet"} <= set(store.list_paths("catalog"))
