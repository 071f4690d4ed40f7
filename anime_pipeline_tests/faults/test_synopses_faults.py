"""fetch_synopses (MAL → Jikan → AniList) and discovery under per-title faults: one bad title never fails
the others. Every good title ends with a synopsis, every bad one in `rejected` with each source's reason,
and nothing vanishes in between (titles lost = titles in neither table)."""

from __future__ import annotations

import io
import json

import polars as pl
import pytest

from anime_pipeline.catalog.discovery import discover_titles
from anime_pipeline.catalog.synopses import SynopsisSources, fetch_synopses
from anime_pipeline.schemas import TITLES, conform
from anime_pipeline_tests.faults.servers import PartialBody, Reset
from anime_pipeline_tests.fixtures.catalog_server import DEFAULT_MAL_CLIENT_ID, Canned, shikimori_anime

LONG = (
    "A quiet courier crosses a flooded city to deliver letters nobody expects, and learns why they were "
    "never sent. "
)
PLACEHOLDER = (
    "No synopsis information has been added to this title. Help improve our database by adding a synopsis."
)


def _titles(ids) -> pl.DataFrame:
    rows = [{"mal_id": i, "name": f"Title {i}" if i is not None else "No id"} for i in ids]
    return conform(pl.DataFrame(rows, schema_overrides={"mal_id": pl.Int64}), TITLES)


def _sources(server, **kw) -> SynopsisSources:
    args = dict(
        mal_url=server.mal_url,
        mal_client_id=DEFAULT_MAL_CLIENT_ID,
        jikan_url=server.jikan_url,
        anilist_url=server.anilist_url,
    )
    args.update(kw)
    return SynopsisSources(**args)


def _accounting(titles: pl.DataFrame, res) -> tuple[set, set, set]:
    """(ids with a synopsis, ids rejected, ids in neither: lost)."""
    ids = set(titles["mal_id"].to_list())
    got = set(res.synopses["mal_id"].to_list())
    rejected = set(res.rejected["mal_id"].to_list())
    return got, rejected, ids - got - rejected


def test_bad_titles_never_fail_the_good_ones(fault, server, make_client):
    fault.record(
        "12 titles, 6 with a different fault on every source (5xx/timeouts/resets/garbage/GraphQL "
        "errors/placeholders), others with transient faults",
        "every good title has a synopsis (falling back source by source); every bad one is in "
        "`rejected` with each source's reason; nothing lost",
    )
    s = server
    good = {1, 2, 3, 4, 5, 6, 11}
    bad = {7, 8, 9, 10, 12}
    s.mal_synopses = {i: f"{LONG}(title {i})" for i in (1, 2, 4)}
    s.jikan_synopses = {i: f"{LONG}(title {i})" for i in (3, 5, 11)}
    s.anilist_descriptions = {6: f"{LONG}<br>(title 6)", 8: PLACEHOLDER}
    # good titles with transient faults
    s.script("/mal/v2/anime/2", Canned(503, "busy"), Canned(502, "bad gateway"))  # burst, then MAL
    s.always("/mal/v2/anime/3", Canned(500, {"message": "boom"}))  # MAL down → Jikan
    s.script("/mal/v2/anime/4", PartialBody(200, {"synopsis": LONG}, keep=6))  # reset mid-body → MAL
    s.always("/mal/v2/anime/5", Canned(200, {"synopsis": LONG}, delay=0.5))  # too slow → Jikan
    s.always("/mal/v2/anime/6", Canned(200, "<html>maintenance</html>", {"Content-Type": "text/html"}))
    s.always(
        "/jikan/v4/anime/6", Canned(200, '{"data": {"synopsis": "cut', {"Content-Type": "application/json"})
    )
    s.script("/jikan/v4/anime/11", Canned(429, {"message": "slow down"}, {"Retry-After": "2"}))
    # bad titles: every source fails, each differently
    s.always("/jikan/v4/anime/7", Canned(500, "<html>oops</html>"))
    s.anilist_always[7] = Canned(
        200, {"data": None, "errors": [{"message": "Internal Server Error", "status": 500}]}
    )
    s.mal_synopses[8] = "Too short."
    s.jikan_synopses[8] = "TBA"
    for src in ("/mal/v2/anime/9", "/jikan/v4/anime/9"):
        s.always(src, Reset())
    s.anilist_always[9] = Reset()
    s.always("/mal/v2/anime/10", Canned(200, {"synopsis": ["not", "a", "string"]}))
    s.always("/jikan/v4/anime/10", Canned(200, {"data": "nope"}))
    s.anilist_always[10] = Canned(200, {"data": {"Media": {"description": 42}}})
    s.always("/mal/v2/anime/12", Canned(200, b'{"synopsis": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"))
    s.always("/jikan/v4/anime/12", PartialBody(200, {"data": {"synopsis": LONG}}, keep=3, rst=False))
    s.anilist_always[12] = Canned(200, {"data": {"Media": None}})

    titles = _titles([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, None])
    client = make_client(read_timeout=0.2, total_retries=2, max_retry_after=0.05)
    res = fetch_synopses(client, titles, sources=_sources(s))

    got, rejected, lost = _accounting(titles.drop_nulls("mal_id"), res)
    assert got == good, res.rejected.to_dicts()
    assert rejected - {None} == bad
    assert None in set(res.rejected["mal_id"].to_list())  # the title without an id, with its reason
    assert lost == set()
    by = {r["mal_id"]: r["source"] for r in res.synopses.iter_rows(named=True)}
    assert by == {1: "mal", 2: "mal", 3: "jikan", 4: "mal", 5: "jikan", 6: "anilist", 11: "jikan"}
    reasons = {r["mal_id"]: r["reason"] for r in res.rejected.iter_rows(named=True)}
    for mal_id in bad:  # every source is accounted for in the reason
        assert all(f"{src}:" in reasons[mal_id] for src in ("mal", "jikan", "anilist")), reasons[mal_id]
    assert "HTTP 500" in reasons[7] and "GraphQL error: Internal Server Error" in reasons[7]
    assert "too short" in reasons[8] and "placeholder" in reasons[8]
    assert reasons[9].count("connection") >= 3
    assert "not a string" in reasons[10]
    assert "malformed JSON" in reasons[12] and "connection broken mid-response" in reasons[12]
    assert reasons[None] == "no MAL id"
    assert DEFAULT_MAL_CLIENT_ID not in json.dumps(
        [res.synopses.to_dicts(), res.rejected.to_dicts(), res.errors], default=str
    )
    # the client's own waits (backoff, capped Retry-After) stay bounded: at most one per request sent
    assert len(client.clock.sleeps) < client.network_requests
    assert max(client.clock.sleeps, default=0) <= max(
        client.config.backoff_max, client.config.max_retry_after
    )
    fault.titles_lost = len(lost) + len(good - got)
    fault.note = (
        f"{len(got)} synopses, {len(rejected)} rejected, {client.network_requests} requests, "
        f"{client.clock.slept:.2f} s of waits"
    )


def test_source_down_for_every_title_falls_back_with_bounded_requests(fault, server, make_client):
    fault.record(
        "MAL answers 503 to every title (outage)",
        "each title falls back to Jikan; after 5 consecutive outage failures MAL is skipped for the run",
    )
    s = server
    ids = list(range(1, 9))
    s.jikan_synopses = {i: f"{LONG}(title {i})" for i in ids}
    for i in ids:
        s.always(f"/mal/v2/anime/{i}", Canned(503, "Service Unavailable"))
    client = make_client(total_retries=2)
    res = fetch_synopses(client, _titles(ids), sources=_sources(s))
    got, _, lost = _accounting(_titles(ids), res)
    assert got == set(ids) and set(res.synopses["source"].to_list()) == {"jikan"}
    assert s.count("/mal") == 3 * 5  # (1 + total_retries) for each of the 5 titles before the breaker opens
    assert any("skipped after 5 consecutive outage failures" in e for e in res.errors), res.errors
    fault.titles_lost = len(lost) + len(set(ids) - got)
    fault.note = f"{s.count('/mal')} MAL requests for {len(ids)} titles"


def test_mal_throttled_403_disables_mal_not_titles(fault, server, make_client):
    fault.record(
        "MAL 403 (throttled / key banned) mid-run",
        "MAL disabled for the rest of the run, later titles use Jikan; no title lost",
    )
    s = server
    ids = [1, 2, 3, 4]
    s.mal_synopses = {i: LONG for i in ids}
    s.jikan_synopses = {i: LONG for i in ids}
    s.script("/mal/v2/anime/2", Canned.example("mal-error-examples.json", "throttled_403"))
    res = fetch_synopses(make_client(), _titles(ids), sources=_sources(s))
    by = {r["mal_id"]: r["source"] for r in res.synopses.iter_rows(named=True)}
    assert by == {1: "mal", 2: "jikan", 3: "jikan", 4: "jikan"}
    assert s.count("/mal") == 2
    fault.titles_lost = len(set(ids) - set(by))


@pytest.mark.parametrize("where", ["synopsis", "title name"])
def test_lone_surrogate_in_text_does_not_fail_the_table(fault, server, make_client, where):
    fault.record(
        f"a lone UTF-16 surrogate (\\ud800) in one {where}",
        "decoded as U+FFFD; that title kept, the table (Parquet) still writes",
    )
    s = server
    if where == "synopsis":
        body = b'{"data": {"mal_id": 1, "synopsis": "' + LONG.encode() + b'\\ud800 end"}}'
        s.always("/jikan/v4/anime/1", Canned(200, body, {"Content-Type": "application/json"}))
        s.jikan_synopses = {2: LONG}
        res = fetch_synopses(
            make_client(), _titles([1, 2]), sources=_sources(s, mal_client_id=None, anilist_url=None)
        )
        table = res.synopses
        assert "\ufffd end" in table.filter(pl.col("mal_id") == 1)["synopsis"][0]
        ids = {1, 2}
    else:
        s.shikimori_titles = [shikimori_anime(1), shikimori_anime(2)]
        payload = json.dumps({"data": {"animes": s.shikimori_titles}}).replace("Title 1", "Title \\ud800 1")
        s.script(
            "/shikimori/api/graphql", Canned(200, payload.encode(), {"Content-Type": "application/json"})
        )
        table = discover_titles(
            make_client(), catalog="shikimori", url=s.shikimori_url, max_titles=10, page_size=50
        ).titles
        assert "Title \ufffd 1" in table["name"].to_list()
        ids = {1, 2}
    table.write_parquet(io.BytesIO())  # the Parquet write must not raise
    fault.titles_lost = len(ids - set(table["mal_id"].to_list()))
