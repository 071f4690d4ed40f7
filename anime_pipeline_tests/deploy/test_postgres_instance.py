"""deploy/dagster-postgres.yaml against a real PostgreSQL: the instance stores runs and materializations there."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest

from anime_pipeline.settings import Settings

REPO = Path(__file__).resolve().parents[2]
PG_YAML = REPO / "deploy" / "dagster-postgres.yaml"

pytestmark = pytest.mark.slow


@pytest.fixture
def pg_instance(postgres_server, tmp_path, monkeypatch):
    pytest.importorskip("dagster_postgres", reason="dagster-postgres is not installed")
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(PG_YAML, dagster_home / "dagster.yaml")
    for k, v in postgres_server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("DAGSTER_HOME", str(dagster_home))
    with dg.DagsterInstance.get() as instance:
        yield instance


def test_instance_uses_postgres_storage_and_pools(pg_instance):
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

    assert isinstance(pg_instance.run_storage, PostgresRunStorage)
    assert isinstance(pg_instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(pg_instance.schedule_storage, PostgresScheduleStorage)
    pool_config = pg_instance.get_concurrency_config().pool_config
    assert pool_config.default_pool_limit == 1
    # the limit the docs tell operators to set is stored in PostgreSQL
    pg_instance.event_log_storage.set_concurrency_slots("gpu", 1)
    assert pg_instance.event_log_storage.get_concurrency_info("gpu").slot_count == 1


def test_titles_materialization_is_stored_in_postgres(pg_instance, postgres_server, tmp_path):
    from anime_pipeline.defs.catalog import titles
    from anime_pipeline.defs.resources import build_resources

    home = tmp_path / "data"
    settings = Settings.from_env({"ANIME_PIPELINE_HOME": str(home), "ANIME_PIPELINE_PROFILE": "demo"})

    @dg.asset
    def ping() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"answer": 42})

    result = dg.materialize(
        [titles, ping], instance=pg_instance, resources=build_resources(env={}, settings=settings)
    )
    assert result.success

    # read it back through the instance (PostgreSQL event log)
    event = pg_instance.get_latest_materialization_event(dg.AssetKey("titles"))
    assert event is not None and event.run_id == result.run_id
    meta = event.asset_materialization.metadata
    assert meta["num_titles"].value > 0
    assert (
        pg_instance.get_latest_materialization_event(dg.AssetKey("ping"))
        .asset_materialization.metadata["answer"]
        .value
        == 42
    )
    assert pg_instance.get_run_by_id(result.run_id).status == dg.DagsterRunStatus.SUCCESS
    assert (home / "catalog" / "titles.parquet").exists()

    # and straight from the database, with its own connection
    import psycopg2

    with (
        psycopg2.connect(
            host=postgres_server.host,
            port=postgres_server.port,
            user=postgres_server.user,
            password=postgres_server.password,
            dbname=postgres_server.db_name,
        ) as conn,
        conn.cursor() as cur,
    ):
        cur.execute(
            "SELECT count(*) FROM event_logs WHERE run_id = %s AND dagster_event_type = 'ASSET_MATERIALIZATION'"
            " AND asset_key = %s",
            (result.run_id, dg.AssetKey("titles").to_string()),
        )
        assert cur.fetchone()[0] == 1
        cur.execute("SELECT status FROM runs WHERE run_id = %s", (result.run_id,))
        assert cur.fetchone()[0] == "SUCCESS"
