"""fetch_synopses: fallback chain MAL → Jikan → AniList, per-title failures, secrets."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import polars as pl
import pytest

from anime_pipeline.catalog.checks import check_synopses_clean
from anime_pipeline.catalog.synopses import SynopsisSources, fetch_synopses
from anime_pipeline.schemas import REJECTED, SYNOPSES, TITLES, conform, empty
from anime_pipeline_tests.fixtures.catalog_server import DEFAULT_MAL_CLIENT_ID, Canned

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
LONG = "A quiet courier crosses a flooded city to deliver letters nobody expects, and learns why they were never sent. "


def _titles(*ids: int, ru: dict[int, str] | None = None) -> pl.DataFrame:
    rows = [{"mal_id": i, "name": f"Title {i}", "description_ru": (ru or {}).get(i)} for i in ids]
    return conform(pl.DataFrame(rows), TITLES) if rows else empty(TITLES)


def _sources(server, *, client_id: str | None = DEFAULT_MAL_CLIENT_ID, **kw) -> SynopsisSources:
    args = dict(
        mal_url=server.mal_url,
        mal_client_id=client_id,
        jikan_url=server.jikan_url,
        anilist_url=server.anilist_url,
    )
    args.update(kw)
    return SynopsisSources(**args)


def _all_text(res) -> str:
    parts = [str(res.synopses.to_dicts()), str(res.rejected.to_dicts()), " ".join(res.errors)]
    return "\n".join(parts)


def test_mal_first_with_reference_payload(catalog_server, make_client):
    client = make_client()
    res = fetch_synopses(
        client, _titles(5114, ru={5114: "Братья ищут камень."}), sources=_sources(catalog_server), now=NOW
    )
    assert res.synopses.schema == pl.Schema(SYNOPSES)
    row = res.synopses.row(0, named=True)
    assert row["source"] == "mal"
    assert row["synopsis"].startswith("Two brothers lose far more than they bargained for")
    assert "[Written by MAL Rewrite]" not in row["synopsis"]
    assert row["synopsis"].endswith("not MAL's synopsis.)")
    assert row["synopsis_ru"] == "Братья ищут камень."
    assert row["url"] == catalog_server.mal_url + "/anime/5114?fields=synopsis"
    assert row["fetched_at"] == NOW
    assert row["content_sha256"] == hashlib.sha256(row["synopsis"].encode()).hexdigest()
    assert res.by_source == {"mal": 1, "jikan": 0, "anilist": 0}
    assert res.errors == [] and res.rejected.height == 0
    assert catalog_server.requests[0].headers["X-MAL-CLIENT-ID"] == DEFAULT_MAL_CLIENT_ID
    assert check_synopses_clean(res.synopses) == (True, "1 synopses clean")


def test_fallback_chain_and_per_title_failures(catalog_server, make_client):
    s = catalog_server
    s.mal_synopses = {1: LONG + "\n\n(Source: Crunchyroll)"}
    # 2: MAL 404 → Jikan ok
    s.jikan_synopses = {2: LONG + "\n\n[Written by MAL Rewrite]", 3: None, 4: LONG, 5: LONG}
    # 3: MAL 404, Jikan null synopsis → AniList (HTML + AniList attribution)
    s.anilist_descriptions = {
        3: LONG + "<br><br>\n(Source: MAL Rewrite)",
        6: "No synopsis information has been added to this title. Help improve our "
        "database by adding a synopsis here.",
    }
    # 4: MAL answers malformed JSON → Jikan ok
    s.mal_synopses[4] = LONG
    s.script("/mal/v2/anime/4", Canned(200, "{not json", {"Content-Type": "application/json"}))
    # 5: MAL 500 after retries → Jikan ok
    s.mal_synopses[5] = LONG
    s.script("/mal/v2/anime/5", *[Canned.example("jikan-error-examples.json", "upstream_failure_500")] * 3)
    # 6: everything fails: MAL 404, Jikan 404, AniList placeholder
    # 7: everything 404
    client = make_client()
    res = fetch_synopses(client, _titles(1, 2, 3, 4, 5, 6, 7), sources=_sources(s), now=NOW)
    by_id = {r["mal_id"]: r for r in res.synopses.iter_rows(named=True)}
    assert {k: v["source"] for k, v in by_id.items()} == {
        1: "mal",
        2: "jikan",
        3: "anilist",
        4: "jikan",
        5: "jikan",
    }
    assert all(v["synopsis"] == LONG.strip() for v in by_id.values())
    assert by_id[3]["url"] == s.anilist_url + "#idMal=3"
    assert by_id[2]["url"] == s.jikan_url + "/anime/2"
    assert res.by_source == {"mal": 1, "jikan": 3, "anilist": 1}
    assert res.rejected.schema == pl.Schema(REJECTED)
    reasons = {r["mal_id"]: r["reason"] for r in res.rejected.iter_rows(named=True)}
    assert set(reasons) == {6, 7}
    assert "anilist: placeholder text" in reasons[6] and "jikan:" in reasons[6] and "HTTP 404" in reasons[6]
    assert reasons[7].count("HTTP 404") == 3
    assert set(res.rejected["stage"].to_list()) == {"synopses"}
    errors = "\n".join(res.errors)
    assert "mal mal_id=4" in errors and "malformed JSON" in errors
    assert "mal mal_id=5" in errors and "HTTP 500 after 2 retries" in errors
    ok, detail = check_synopses_clean(res.synopses)
    assert ok, detail


def test_mal_skipped_without_client_id(catalog_server, make_client):
    client = make_client()
    res = fetch_synopses(client, _titles(5114), sources=_sources(catalog_server, client_id=None), now=NOW)
    assert res.synopses["source"].to_list() == ["jikan"]
    assert res.by_source == {"jikan": 1, "anilist": 0}
    assert catalog_server.count("/mal") == 0


def test_placeholder_and_short_texts_fall_through(catalog_server, make_client):
    s = catalog_server
    s.mal_synopses = {9: "Too short."}
    s.jikan_synopses = {
        9: "No synopsis information has been added to this title. Help improve our database "
        "by adding a synopsis here."
    }
    s.anilist_descriptions = {9: LONG}
    client = make_client()
    res = fetch_synopses(client, _titles(9), sources=_sources(s), now=NOW)
    assert res.synopses["source"].to_list() == ["anilist"]
    assert res.errors == []  # placeholders are not errors

    res = fetch_synopses(client, _titles(9), sources=_sources(s, anilist_url=None), min_chars=5, now=NOW)
    assert res.synopses["source"].to_list() == ["mal"]  # min_chars is configurable


def test_invalid_client_id_disables_mal_and_never_leaks(catalog_server, make_client):
    secret = "wrong-secret-client-id-ffffffffffff"
    s = catalog_server
    s.jikan_synopses = {1: LONG, 2: LONG}
    client = make_client()
    res = fetch_synopses(client, _titles(1, 2, 3), sources=_sources(s, client_id=secret), now=NOW)
    assert res.synopses["source"].to_list() == ["jikan", "jikan"]
    assert s.count("/mal") == 1  # disabled after the 400 "Invalid client id"
    assert any("mal: skipped after HTTP 400" in e for e in res.errors)
    text = _all_text(res)
    assert secret not in text
    assert "Invalid client id" in text
    assert secret not in repr(_sources(s, client_id=secret))


def test_secret_never_in_rows_errors_or_urls_even_when_echoed(catalog_server, make_client):
    s = catalog_server
    secret = DEFAULT_MAL_CLIENT_ID
    s.mal_synopses = {1: LONG, 2: LONG}
    s.script("/mal/v2/anime/2", *[Canned(503, f"upstream rejected key {secret}")] * 3)
    s.jikan_synopses = {}
    s.anilist_descriptions = {}
    client = make_client()
    res = fetch_synopses(client, _titles(1, 2), sources=_sources(s), now=NOW)
    assert res.synopses["url"].to_list() == [s.mal_url + "/anime/1?fields=synopsis"]
    text = _all_text(res)
    assert secret not in text
    assert "HTTP 503" in text


def test_timeout_for_one_title_does_not_fail_others(catalog_server, make_client):
    s = catalog_server
    s.jikan_synopses = {1: LONG, 2: LONG}
    slow = Canned(200, {"data": {"synopsis": LONG}}, delay=0.5)
    s.script("/jikan/v4/anime/1", slow, slow)
    client = make_client(read_timeout=0.15, total_retries=1)
    res = fetch_synopses(
        client, _titles(1, 2), sources=_sources(s, client_id=None, anilist_url=None), now=NOW
    )
    assert res.synopses["mal_id"].to_list() == [2]
    assert "timed out" in res.rejected["reason"][0]


def test_titles_without_mal_id_and_duplicates(catalog_server, make_client):
    s = catalog_server
    s.jikan_synopses = {1: LONG}
    titles = conform(pl.DataFrame({"mal_id": [None, 1, 1], "name": ["Orphan", "A", "A again"]}), TITLES)
    client = make_client()
    res = fetch_synopses(client, titles, sources=_sources(s, client_id=None), now=NOW)
    assert res.synopses["mal_id"].to_list() == [1]
    assert res.rejected.to_dicts() == [
        {"mal_id": None, "name": "Orphan", "stage": "synopses", "reason": "no MAL id"}
    ]


def test_unicode_synopsis_is_nfc_and_otherwise_exact(catalog_server, make_client):
    s = catalog_server
    text = ("Cafe\u0301 «Ёлка» — 東京の夜、🌸 “quotes” and ellipsis… " * 3).strip()
    s.jikan_synopses = {1: text + "\n\n[Written by MAL Rewrite]"}
    client = make_client()
    res = fetch_synopses(client, _titles(1), sources=_sources(s, client_id=None), now=NOW)
    import unicodedata

    assert res.synopses["synopsis"][0] == unicodedata.normalize("NFC", text)


def test_empty_titles(make_client):
    client = make_client()
    res = fetch_synopses(
        client, _titles(), sources=SynopsisSources(mal_url=None, jikan_url=None, anilist_url=None)
    )
    assert res.synopses.height == 0 and res.rejected.height == 0 and res.by_source == {}
    assert res.synopses.schema == pl.Schema(SYNOPSES)


@pytest.mark.parametrize("source", ["mal", "jikan", "anilist"])
def test_cache_makes_second_run_free(catalog_server, make_client, source):
    s = catalog_server
    s.mal_synopses = {1: LONG} if source == "mal" else {}
    s.jikan_synopses = {1: LONG} if source == "jikan" else {}
    s.anilist_descriptions = {1: LONG}
    first = make_client(cache=True)
    a = fetch_synopses(first, _titles(1), sources=_sources(s), now=NOW)
    sent = s.count()
    first.close()
    second = make_client(cache=True)
    b = fetch_synopses(second, _titles(1), sources=_sources(s), now=NOW)
    assert a.synopses["source"].to_list() == [source]
    # only the successful source is cached (404s are asked again): the winning source costs nothing
    assert second.stats.total() == s.count() - sent
    assert b.synopses.equals(a.synopses)


def test_breaker_is_reset_by_a_per_title_answer(catalog_server, make_client):
    """404s are about one title, not an outage: they never open the breaker."""
    import polars as pl

    from anime_pipeline.catalog.synopses import SynopsisSources, fetch_synopses
    from anime_pipeline_tests.fixtures.catalog_server import Canned

    ids = list(range(1, 9))
    text = "A synopsis long enough to be accepted by the cleaning rules of the pipeline, for title {i}."
    catalog_server.jikan_synopses = {i: text.format(i=i) for i in ids if i % 2 == 0}  # odd ids: Jikan 404
    catalog_server.anilist_descriptions = {i: text.format(i=i) for i in ids}
    titles = pl.DataFrame(
        {"mal_id": ids, "name": [f"T{i}" for i in ids], "description_ru": [None] * len(ids)}
    )
    sources = SynopsisSources(
        mal_url=catalog_server.mal_url,
        mal_client_id=None,
        jikan_url=catalog_server.jikan_url,
        anilist_url=catalog_server.anilist_url,
    )
    res = fetch_synopses(make_client(), titles, sources=sources, outage_threshold=2)
    assert res.synopses.height == len(ids)
    assert catalog_server.count("/jikan/") == len(ids)  # never skipped
    assert not any("consecutive outage" in e for e in res.errors)
    # A real outage opens it after `outage_threshold` titles.
    for i in ids:
        catalog_server.script(f"/jikan/v4/anime/{i}", *[Canned(503, "down")] * 3)
    before = catalog_server.count("/jikan/")
    res = fetch_synopses(make_client(total_retries=0), titles, sources=sources, outage_threshold=2)
    assert res.synopses.height == len(ids) and set(res.synopses["source"]) == {"anilist"}
    assert catalog_server.count("/jikan/") - before == 2


@pytest.mark.parametrize("ru", ["Нет описания", "нет описания.", "  "])
def test_russian_placeholder_never_becomes_synopsis_ru(catalog_server, make_client, ru):
    res = fetch_synopses(
        make_client(), _titles(5114, ru={5114: ru}), sources=_sources(catalog_server), now=NOW
    )
    assert res.synopses["mal_id"].to_list() == [5114]
    assert res.synopses["synopsis_ru"].to_list() == [None]
