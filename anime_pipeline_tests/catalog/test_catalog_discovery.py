"""discover_titles on Shikimori and AniList fixture servers."""

from __future__ import annotations

import json

import polars as pl
import pytest

from anime_pipeline.catalog.discovery import discover_titles
from anime_pipeline.catalog.errors import CatalogHTTPError
from anime_pipeline.catalog.shikimori import shikimori_score_arg
from anime_pipeline.schemas import REJECTED, TITLES
from anime_pipeline_tests.fixtures.catalog_server import Canned, anilist_media, shikimori_anime

SHIKI = "/shikimori/api/graphql"


def _reasons(rejected: pl.DataFrame) -> dict:
    return {r["mal_id"]: r["reason"] for r in rejected.iter_rows(named=True)}


def test_shikimori_reference_page(catalog_server, make_client):
    client = make_client()
    res = discover_titles(client, catalog="shikimori", url=catalog_server.shikimori_url, max_titles=10)
    assert res.titles.schema == pl.Schema(TITLES)
    assert res.rejected.schema == pl.Schema(REJECTED)
    assert res.pages == 1 and res.stop_reason == "last page"
    # FMA:B is rated R → rejected; Steins;Gate (pg_13, 9.08) passes
    assert res.titles["mal_id"].to_list() == [9253]
    row = res.titles.row(0, named=True)
    assert row["name"] == "Steins;Gate" and row["name_russian"] == "Врата Штейна"
    assert row["name_native"] == "STEINS;GATE" and row["name_english"] == "Steins;Gate"
    assert row["rating"] == "pg_13" and row["score"] == pytest.approx(9.08)
    assert row["kind"] == "tv" and row["status"] == "released" and row["episodes"] == 24
    assert row["genres"] == ["Drama", "Sci-Fi", "Suspense", "Psychological", "Time Travel"]
    assert row["main_characters"] == ["Rintarou Okabe", "Mayuri Shiina"]
    assert row["catalog"] == "shikimori" and row["catalog_id"] == "9253"
    assert row["popularity"] == 2
    assert row["description_ru"].startswith("Самопровозглашённый безумный учёный Окабэ Ринтаро вместе")
    assert "[character" not in row["description_ru"]
    reasons = _reasons(res.rejected)
    assert "rating r is not one of g, pg, pg_13" in reasons[5114]
    assert set(res.rejected["stage"].to_list()) == {"titles"}
    # the request carried the documented filters
    body = catalog_server.requests[0].json()
    assert "order: popularity" in body["query"] and 'kind: "tv"' in body["query"]
    assert 'status: "released"' in body["query"] and 'rating: "g,pg,pg_13"' in body["query"]
    assert body["variables"] == {"page": 1, "limit": 50, "score": 7}


def test_shikimori_pagination_filters_sequels_and_dedup(catalog_server, make_client):
    catalog_server.shikimori_titles = [
        shikimori_anime(1, score=8.5),
        shikimori_anime(2, related=(("sequel", 3, "Title 3"),)),  # has a sequel: still a first season
        shikimori_anime(3, related=(("prequel", 2, "Title 2"),)),  # second season → dropped
        shikimori_anime(4, related=(("parent_story", 1, "Title 1"),)),  # side story → dropped
        shikimori_anime(5, mal_id=None),  # no MAL id → rejected
        shikimori_anime(6, score=7.4),  # below 7.5 (server filter is Int 7)
        shikimori_anime(7, mal_id=1),  # duplicate MAL id
        shikimori_anime(8, rating="g"),
        shikimori_anime(9, kind="movie"),
    ]
    client = make_client()
    res = discover_titles(
        client,
        catalog="shikimori",
        url=catalog_server.shikimori_url,
        max_titles=10,
        min_score=7.5,
        page_size=2,
    )
    assert res.titles["mal_id"].to_list() == [1, 2, 8]
    assert res.titles["popularity"].to_list() == [1, 2, 8]
    assert res.pages == 5 and res.stop_reason == "last page"
    rows = {r["name"]: r["reason"] for r in res.rejected.iter_rows(named=True)}
    assert "not a first season: has prequel 'Title 2'" in rows["Title 3"]
    assert "not a first season: has parent_story 'Title 1'" in rows["Title 4"]
    assert "no MAL id" in rows["Title 5"]
    assert res.rejected.filter(pl.col("name") == "Title 5")["mal_id"].to_list() == [None]
    assert "score 7.4 < 7.5" in rows["Title 6"]
    assert "duplicate mal_id 1" in rows["Title 7"]
    assert "kind movie is not tv" in rows["Title 9"]
    assert [r.json()["variables"]["score"] for r in catalog_server.requests] == [7] * 5


def test_shikimori_stops_at_max_titles(catalog_server, make_client):
    catalog_server.shikimori_titles = [shikimori_anime(i) for i in range(1, 30)]
    client = make_client()
    res = discover_titles(
        client, catalog="shikimori", url=catalog_server.shikimori_url, max_titles=5, page_size=3
    )
    assert res.titles.height == 5 and res.pages == 2 and res.stop_reason == "max_titles reached"


def test_repeating_page_terminates(catalog_server, make_client):
    catalog_server.shikimori_titles = [shikimori_anime(i) for i in range(1, 4)]
    catalog_server.shikimori_repeat = True  # every page answers with the same 3 entries
    client = make_client()
    res = discover_titles(
        client, catalog="shikimori", url=catalog_server.shikimori_url, max_titles=100, page_size=3
    )
    assert res.titles["mal_id"].to_list() == [1, 2, 3]
    assert res.pages == 2 and "no new ids" in res.stop_reason


def test_hard_page_cap(catalog_server, make_client):
    catalog_server.shikimori_titles = [shikimori_anime(i, score=5.0) for i in range(1, 100)]
    client = make_client()
    res = discover_titles(
        client, catalog="shikimori", url=catalog_server.shikimori_url, max_titles=5, page_size=2, max_pages=4
    )
    assert res.titles.height == 0 and res.pages == 4 and "page cap" in res.stop_reason
    assert res.rejected.height == 8


def test_unicode_titles_preserved_byte_exactly(catalog_server, make_client):
    names = {
        "name": "Pok\u0065\u0301mon: \u00c9t\u00e9 \u2014 \u300cテスト\u300d",  # NFD é kept as is
        "russian": "Кот\u00a0учёный «Тест» 🐱",
        "english": "Re:Zero \u2013 Starting Life in Another World \ufb01",
        "japanese": "ﾃｽﾄ　半角と全角 \U0001f338",
    }
    catalog_server.shikimori_titles = [shikimori_anime(42, **names)]
    client = make_client()
    res = discover_titles(client, catalog="shikimori", url=catalog_server.shikimori_url, max_titles=5)
    row = res.titles.row(0, named=True)
    assert row["name"].encode() == names["name"].encode()
    assert row["name_russian"].encode() == names["russian"].encode()
    assert row["name_english"].encode() == names["english"].encode()
    assert row["name_native"].encode() == names["japanese"].encode()


def test_unicode_escaped_json_is_decoded_exactly(catalog_server, make_client):
    entry = shikimori_anime(43, russian="Ёжик в тумане")
    body = json.dumps({"data": {"animes": [entry]}}, ensure_ascii=True)  # \u escapes on the wire
    catalog_server.script(SHIKI, Canned(200, body, {"Content-Type": "application/json"}))
    client = make_client()
    res = discover_titles(client, catalog="shikimori", url=catalog_server.shikimori_url, max_titles=5)
    assert res.titles["name_russian"].to_list() == ["Ёжик в тумане"]


def test_discovery_http_error_propagates(catalog_server, make_client):
    catalog_server.script(
        SHIKI, Canned.example("shikimori-error-examples.json", "graphql_validation_error_200")
    )
    client = make_client()
    with pytest.raises(CatalogHTTPError, match="Field 'foo' doesn't exist"):
        discover_titles(client, catalog="shikimori", url=catalog_server.shikimori_url, max_titles=5)


def test_discovery_cache_hit_on_second_run(catalog_server, make_client):
    catalog_server.shikimori_titles = [shikimori_anime(i) for i in range(1, 8)]
    first = make_client(cache=True)
    a = discover_titles(
        first, catalog="shikimori", url=catalog_server.shikimori_url, max_titles=50, page_size=3
    )
    sent = catalog_server.count()
    assert sent == 3 and first.network_requests == 3
    first.close()
    second = make_client(cache=True)
    b = discover_titles(
        second, catalog="shikimori", url=catalog_server.shikimori_url, max_titles=50, page_size=3
    )
    assert catalog_server.count() == sent
    assert second.network_requests == 0
    assert a.titles.equals(b.titles) and b.pages == 3


def test_anilist_reference_page(catalog_server, make_client):
    client = make_client()
    res = discover_titles(client, catalog="anilist", url=catalog_server.anilist_url, max_titles=10)
    assert res.titles.schema == pl.Schema(TITLES)
    assert res.titles["mal_id"].to_list() == [5114, 9253]
    fma = res.titles.row(0, named=True)
    assert fma["name"] == "Hagane no Renkinjutsushi: FULLMETAL ALCHEMIST"
    assert fma["name_native"] == "鋼の錬金術師 FULLMETAL ALCHEMIST"
    assert fma["score"] == pytest.approx(9.0) and fma["rating"] == "none"
    assert fma["genres"] == ["Action", "Adventure", "Drama", "Fantasy"]
    assert fma["main_characters"] == ["Edward Elric", "Alphonse Elric"]
    assert fma["catalog"] == "anilist" and fma["episode_duration_min"] == 24.0
    assert res.pages == 1 and res.stop_reason == "last page"
    body = catalog_server.requests[0].json()
    assert "isAdult: false" in body["query"] and "sort: POPULARITY_DESC" in body["query"]
    assert body["variables"] == {"page": 1, "perPage": 50, "minScore": 69}


def test_anilist_pagination_and_first_season(catalog_server, make_client):
    catalog_server.anilist_media = [
        anilist_media(10),
        anilist_media(11, relations=(("PREQUEL", 10, "ANIME"),)),
        anilist_media(12, relations=(("PARENT", 10, "ANIME"), ("SEQUEL", 13, "ANIME"))),
        anilist_media(13, id_mal=None),
        anilist_media(14, average_score=65),
        anilist_media(15, relations=(("ADAPTATION", 99, "MANGA"),)),
    ]
    client = make_client()
    res = discover_titles(
        client, catalog="anilist", url=catalog_server.anilist_url, max_titles=10, page_size=2
    )
    assert res.titles["mal_id"].to_list() == [10, 15]
    assert res.pages == 3
    reasons = {r["name"]: r["reason"] for r in res.rejected.iter_rows(named=True)}
    assert "has prequel" in reasons["Title 11"]
    assert "has parent" in reasons["Title 12"]
    assert "no MAL id" in reasons["Title 13"]
    assert "score 6.5 < 7.0" in reasons["Title 14"]


def test_unknown_catalog():
    with pytest.raises(ValueError, match="not one of"):
        discover_titles(None, catalog="kitsu", url="http://127.0.0.1:1", max_titles=1)  # type: ignore[arg-type]


def test_score_arg():
    assert shikimori_score_arg(7.0) == 7
    assert shikimori_score_arg(7.9) == 7
    assert shikimori_score_arg(0.5) == 1
    assert shikimori_score_arg(9.5) == 9
    assert shikimori_score_arg(0) is None


NOTHING_HERE_HTML = "<p class='b-nothing_here'>Нет описания</p>"


@pytest.mark.parametrize(
    "description, description_html",
    [
        (None, NOTHING_HERE_HTML),
        ("", NOTHING_HERE_HTML),
        ("Нет описания", None),
        ("  нет описания. ", None),
        (None, "<div class='b-text_with_paragraphs'>Нет описания</div>"),
        (None, None),
    ],
    ids=["nothing-here-html", "empty-text-nothing-here-html", "text", "text-lower-dot", "html-text", "none"],
)
def test_shikimori_no_description_placeholder_is_not_a_description(
    catalog_server, make_client, description, description_html
):
    """Shikimori renders a missing description as `<p class='b-nothing_here'>Нет описания</p>`."""
    entry = shikimori_anime(1, description=description)
    entry["descriptionHtml"] = description_html
    catalog_server.shikimori_titles = [entry]
    res = discover_titles(make_client(), catalog="shikimori", url=catalog_server.shikimori_url, max_titles=5)
    assert res.titles["mal_id"].to_list() == [1]
    assert res.titles["description_ru"].to_list() == [None]


def test_shikimori_short_real_description_is_kept(catalog_server, make_client):
    catalog_server.shikimori_titles = [shikimori_anime(1, description=None)]
    catalog_server.shikimori_titles[0]["descriptionHtml"] = "<div>Братья <b>ищут</b> камень.</div>"
    res = discover_titles(make_client(), catalog="shikimori", url=catalog_server.shikimori_url, max_titles=5)
    assert res.titles["description_ru"].to_list() == ["Братья ищут камень."]


def _many_anilist(n: int) -> list[dict]:
    base = anilist_media(1)
    return [
        dict(base, id=i, idMal=i, title={"romaji": f"Title {i}", "english": None, "native": None})
        for i in range(1, n + 1)
    ]


def test_anilist_discovery_stops_at_the_listing_depth_limit(catalog_server, make_client):
    """AniList refuses page × perPage > 5000 with HTTP 400: discovery stops at the last page it serves and
    says why, instead of asking for the page that fails."""
    from anime_pipeline.catalog import anilist

    assert anilist.LISTING.max_pages(30) == 166 and anilist.LISTING.max_pages(50) == 100
    page_size, pages = 50, 100
    catalog_server.anilist_media = _many_anilist(5100)
    res = discover_titles(
        make_client(),
        catalog="anilist",
        url=catalog_server.anilist_url,
        max_titles=6000,
        page_size=page_size,
        max_pages=200,
    )
    sent = [r.json()["variables"] for r in catalog_server.requests]
    assert max(v["page"] * v["perPage"] for v in sent) <= 5000
    assert res.pages == pages == len(sent)
    assert res.titles.height == pages * page_size
    assert (
        "depth of 5000 entries" in res.stop_reason
        and f"{pages * page_size} of 6000 titles" in res.stop_reason
    )


def test_fetch_page_refuses_a_page_past_the_depth_limit(make_client):
    from anime_pipeline.catalog import anilist
    from anime_pipeline.catalog.listing import fetch_page

    with pytest.raises(ValueError, match="5000-entry depth"):
        fetch_page(make_client(), anilist.LISTING, "http://127.0.0.1:1/", page=101, page_size=50, min_score=7)


def test_listing_queries_use_only_documented_arguments_and_fields():
    """Every argument, enum value and field the listing queries send exists in the reference docs
    (docs/CATALOG_APIS.md)."""
    from anime_pipeline.catalog import anilist, shikimori

    shiki = shikimori.SHIKIMORI_QUERY
    assert "$page: PositiveInt, $limit: PositiveInt, $score: Int" in shiki
    for part in (
        "order: popularity",
        'kind: "tv"',
        'status: "released"',
        'rating: "g,pg,pg_13"',
        "relationKind",
        "rolesEn",
        "descriptionHtml",
        "malId",
    ):
        assert part in shiki
    assert "relation " not in shiki and "relationRu" not in shiki  # REST-only / deprecated names
    ani = anilist.ANILIST_PAGE_QUERY
    for part in (
        "type: ANIME",
        "format: TV",
        "status: FINISHED",
        "sort: POPULARITY_DESC",
        "isAdult: false",
        "averageScore_greater: $minScore",
        "hasNextPage",
        "idMal",
        "characters(role: MAIN)",
    ):
        assert part in ani
    assert shikimori.LISTING.max_page_size == anilist.LISTING.max_page_size == 50
