"""No silent churn: titles once collected stay; retirement only with a reason in `rejected`.

The rules are tested on `catalog.retention` directly, and through the real code path: the `titles` and
`synopses` assets materialised twice (live profile, loopback catalog) with the listing changed between runs.
"""

from __future__ import annotations

import dagster as dg
import polars as pl
import pytest

from anime_pipeline.catalog.retention import RETIRED, retain_synopses, retain_titles
from anime_pipeline.defs.partitions import MAL_ID_PARTITIONS_NAME
from anime_pipeline.schemas import REJECTED, SYNOPSES, TITLES, conform, empty
from anime_pipeline_tests.fixtures.catalog_server import CatalogServer, shikimori_anime


def _titles(*ids: int, catalog: str = "shikimori", name: str = "v1") -> pl.DataFrame:
    return conform(
        pl.DataFrame([{"mal_id": i, "name": f"{name} {i}", "catalog": catalog} for i in ids]), TITLES
    )


def _rejected(reasons: dict[int, str]) -> pl.DataFrame:
    rows = [{"mal_id": i, "name": f"T{i}", "stage": "titles", "reason": r} for i, r in reasons.items()]
    return conform(pl.DataFrame(rows), REJECTED) if rows else empty(REJECTED)


def test_unlisted_titles_stay_and_the_cap_limits_only_additions():
    previous = _titles(1, 2, 3)
    listed = _titles(5, 1, 4, 3, name="v2")  # 2 dropped out of the listing; 5 and 4 are new (5 more popular)
    got = retain_titles(previous, listed, empty(REJECTED), catalog="shikimori", max_titles=4)
    assert got.titles["mal_id"].to_list() == [1, 2, 3, 5]
    names = dict(zip(got.titles["mal_id"], got.titles["name"]))
    assert names == {
        1: "v2 1",
        2: "v1 2",
        3: "v2 3",
        5: "v2 5",
    }  # listed rows refreshed, unlisted kept as they were
    assert got.kept_unlisted == [2] and got.added == [5] and got.not_added == 1 and got.retired == []


def test_a_title_is_retired_only_with_the_listings_reason():
    previous = _titles(1, 2)
    got = retain_titles(
        previous,
        _titles(1),
        _rejected({2: "shikimori 2: score 6.8 < 7.0"}),
        catalog="shikimori",
        max_titles=10,
    )
    assert got.titles["mal_id"].to_list() == [1]
    assert got.retired == [2]
    reason = dict(zip(got.rejected["mal_id"], got.rejected["reason"]))[2]
    assert reason == f"{RETIRED}: shikimori 2: score 6.8 < 7.0"


def test_switching_catalog_retires_with_a_reason():
    got = retain_titles(
        _titles(1, 2, catalog="demo"), _titles(7), empty(REJECTED), catalog="shikimori", max_titles=10
    )
    assert got.titles["mal_id"].to_list() == [7]
    reasons = dict(zip(got.rejected["mal_id"], got.rejected["reason"]))
    assert reasons == {
        1: f"{RETIRED}: catalog changed from demo to shikimori",
        2: f"{RETIRED}: catalog changed from demo to shikimori",
    }


def test_first_run_without_previous_titles():
    got = retain_titles(None, _titles(3, 1, 2), empty(REJECTED), catalog="shikimori", max_titles=2)
    assert got.titles["mal_id"].to_list() == [1, 3] and got.added == [1, 3] and got.not_added == 1


def test_previous_synopsis_kept_when_this_run_found_none():
    prev = conform(
        pl.DataFrame({"mal_id": [1, 2, 9], "synopsis": ["old 1", "old 2", "old 9"], "source": "jikan"}),
        SYNOPSES,
    )
    fresh = conform(pl.DataFrame({"mal_id": [1], "synopsis": ["new 1"], "source": "mal"}), SYNOPSES)
    rejected = conform(
        pl.DataFrame([{"mal_id": 2, "name": "T2", "stage": "synopses", "reason": "jikan: HTTP 503"}]),
        REJECTED,
    )
    got = retain_synopses(prev, fresh, rejected, _titles(1, 2))  # 9 is no longer a title: not kept
    assert dict(zip(got.synopses["mal_id"], got.synopses["synopsis"])) == {1: "new 1", 2: "old 2"}
    assert got.kept_previous == {2: "jikan: HTTP 503"}
    assert got.rejected.height == 0


LONG = "A quiet courier crosses a flooded city to deliver letters nobody expects, and learns why they never sent. "


def _materialize_catalog(env: dict, instance) -> dg.ExecuteInProcessResult:
    from anime_pipeline.definitions import defs
    from anime_pipeline.defs.resources import build_resources

    assets = list(defs.assets or []) + list(defs.asset_checks or [])
    run_config = {"ops": {"titles": {"config": {"max_titles": 3, "page_size": 2, "listing_max_age_s": 0}}}}
    return dg.materialize(
        assets,
        selection=["titles", "synopses"],
        instance=instance,
        resources=build_resources(env=env),
        run_config=run_config,
        raise_on_error=False,
    )


@pytest.mark.slow
def test_titles_that_leave_the_listing_stay_in_titles_synopses_and_partitions(tmp_path):
    """Run 1 collects 1, 2, 3 (cap 3). Run 2: popularity moved (4 and 5 are now on top, 2 left the listing) and
    1 now fails the filters. 2 and 3 stay with their synopses, 1 is retired with its reason in `rejected`, and
    only one new title fills the room 1 left."""
    home = tmp_path / "data"
    with CatalogServer() as server, dg.instance_for_test() as instance:
        server.shikimori_titles = [shikimori_anime(i) for i in (1, 2, 3)]
        server.jikan_synopses = {i: f"{LONG}({i})" for i in range(1, 6)}
        server.mal_synopses, server.anilist_descriptions = {}, {}
        env = server.live_env(ANIME_PIPELINE_HOME=str(home))
        assert _materialize_catalog(env, instance).success
        assert pl.read_parquet(home / "catalog" / "titles.parquet")["mal_id"].to_list() == [1, 2, 3]

        server.shikimori_titles = [
            shikimori_anime(4),
            shikimori_anime(5),
            shikimori_anime(1, score=6.1),
            shikimori_anime(3),
        ]
        server.jikan_synopses.pop(3)  # 3's synopsis is gone this time: the one collected before stays
        result = _materialize_catalog(env, instance)
        assert result.success

        titles = pl.read_parquet(home / "catalog" / "titles.parquet")
        assert titles["mal_id"].to_list() == [
            2,
            3,
            4,
        ]  # 2 kept though unlisted; 4 fills 1's place; 5: no room
        synopses = pl.read_parquet(home / "catalog" / "synopses.parquet")
        assert synopses["mal_id"].to_list() == [2, 3, 4]
        assert synopses.filter(pl.col("mal_id") == 3)["synopsis"].item().endswith("(3)")
        rejected = pl.read_parquet(home / "catalog" / "rejected.parquet")
        reasons = dict(zip(rejected["mal_id"], rejected["reason"]))
        assert reasons[1].startswith(RETIRED) and "score 6.1 < 7.0" in reasons[1]
        assert 2 not in reasons and 3 not in reasons
        keys = set(instance.get_dynamic_partitions(MAL_ID_PARTITIONS_NAME))
        assert {"2", "3", "4"} <= keys

        meta = {
            e.asset_key.to_user_string(): e.step_materialization_data.materialization.metadata
            for e in result.get_asset_materialization_events()
        }
        assert meta["titles"]["num_retired"].value == 1 and meta["titles"]["num_kept_unlisted"].value == 1
        assert meta["titles"]["num_added"].value == 1 and meta["titles"]["not_added_cap"].value == 1
        assert meta["synopses"]["num_kept_previous"].value == 1


@pytest.mark.slow
def test_live_catalog_refuses_to_run_without_a_user_agent(tmp_path):
    with CatalogServer() as server, dg.instance_for_test() as instance:
        env = {
            "ANIME_PIPELINE_HOME": str(tmp_path),
            "ANIME_PIPELINE_PROFILE": "live",
            "ANIME_PIPELINE_SHIKIMORI_URL": server.shikimori_url,
        }
        result = _materialize_catalog(env, instance)
        assert not result.success
        failure = result.get_step_failure_events()[0].step_failure_data.error
        assert "ANIME_PIPELINE_USER_AGENT" in str(failure.cause or failure.message) + failure.message
        assert server.count() == 0  # nothing was sent with the placeholder
