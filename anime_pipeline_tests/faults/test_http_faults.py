"""HTTP faults against the real HttpClient and discover_titles, from a loopback server.

Every scenario is bounded: the server answers a fixed script (or the same fault forever) and the
client's retries/pages are capped, so each test ends in a result or a clear `CatalogHTTPError` naming
the URL. The waits the client chooses (Retry-After, backoff, rate limits) run on an injected clock
(`client.clock`) and are asserted exactly; only socket timeouts take real time.
"""

from __future__ import annotations

import json
import time
from email.utils import formatdate

import pytest

from anime_pipeline.catalog.discovery import discover_titles
from anime_pipeline.catalog.errors import CatalogHTTPError
from anime_pipeline.catalog.http import MAX_REDIRECTS
from anime_pipeline_tests.faults.servers import PartialBody, Reset, Trickle
from anime_pipeline_tests.fixtures.catalog_server import Canned, shikimori_anime

SHIKI = "/shikimori/api/graphql"
JIKAN_5114 = "/jikan/v4/anime/5114"
RATE_LIMITED = {"message": "Too many requests", "error": "RateLimitException"}


def _six_titles(server) -> list[int]:
    server.shikimori_titles = [shikimori_anime(i) for i in range(1, 7)]
    return list(range(1, 7))


def _discover(client, server, **kw):
    args = dict(catalog="shikimori", url=server.shikimori_url, max_titles=100, page_size=2)
    args.update(kw)
    return discover_titles(client, **args)


# ------------------------------------------------------------------------------------- 429 storms
@pytest.mark.parametrize(
    "retry_after",
    ["30", "86400", formatdate(time.time() + 7 * 86400, usegmt=True)],
    ids=["30s", "1day", "http-date+7d"],
)
def test_429_storm_with_retry_after_ends_in_clear_error(fault, server, make_client, retry_after):
    shown = retry_after if retry_after.isdigit() else "<HTTP date a week ahead>"
    fault.record(
        f"429 storm on every page request, Retry-After: {shown}",
        "Retry-After honoured but capped (max_retry_after); after total_retries a CatalogHTTPError "
        "naming the URL, HTTP 429 and the retry count; bounded time",
    )
    _six_titles(server)
    client = make_client(total_retries=3, max_retry_after=0.2, backoff_factor=0.0, backoff_jitter=0.0)
    server.always(SHIKI, Canned(429, RATE_LIMITED, {"Retry-After": retry_after}))
    with pytest.raises(CatalogHTTPError) as info:
        _discover(client, server)
    waits = client.clock.sleeps
    msg = str(info.value)
    assert info.value.status == 429 and info.value.kind == "status"
    assert server.shikimori_url in msg and "HTTP 429" in msg and "after 3 retries" in msg, msg
    assert "Too many requests" in msg
    assert server.count(SHIKI) == 4  # 1 + total_retries, then stop
    assert waits == [pytest.approx(0.2)] * 3, waits  # three capped waits of 0.2 s, no 30 s / 1 day sleep
    fault.titles_lost = 0  # the asset fails loudly; nothing is written
    fault.note = f"{server.count(SHIKI)} requests, waits {sum(waits):.2f} s"


def test_429_storm_without_retry_after_backs_off_and_ends(fault, server, make_client):
    fault.record(
        "429 storm without Retry-After (Shikimori style)",
        "exponential backoff (capped at backoff_max) between attempts, then a CatalogHTTPError naming "
        "the URL after total_retries",
    )
    _six_titles(server)
    client = make_client(total_retries=4, backoff_factor=0.05, backoff_jitter=0.0, backoff_max=0.2)
    server.always(SHIKI, Canned(429, "Retry later\n"))
    with pytest.raises(CatalogHTTPError) as info:
        _discover(client, server)
    waits = client.clock.sleeps
    assert server.count(SHIKI) == 5
    assert waits == pytest.approx([0.05, 0.1, 0.2, 0.2]), waits  # doubling backoff, capped at backoff_max
    msg = str(info.value)
    assert server.shikimori_url in msg and "HTTP 429 after 4 retries" in msg and "Retry later" in msg, msg
    fault.titles_lost = 0
    fault.note = f"{server.count(SHIKI)} requests, waits {sum(waits):.2f} s"


def per_page_script(*answers: Canned):
    """A server hook: the n-th request for each Shikimori page gets `answers[n]`, later ones the normal answer.
    `hook.attempts` counts requests per page."""
    attempts: dict[int, int] = {}

    def hook(rec):
        if rec.path != SHIKI:
            return None
        page = rec.json()["variables"]["page"]
        n = attempts.get(page, 0)
        attempts[page] = n + 1
        return answers[n] if n < len(answers) else None

    hook.attempts = attempts
    return hook


def test_rate_limited_then_recovers_keeps_every_title(fault, server, make_client):
    fault.record(
        "429 (Retry-After: 1) on every page's first attempt",
        "each page retried after the (capped) wait; all titles discovered",
    )
    ids = _six_titles(server)
    client = make_client(total_retries=2, max_retry_after=0.05)
    server.hook = per_page_script(Canned(429, RATE_LIMITED, {"Retry-After": "1"}))
    result = _discover(client, server)
    got = result.titles["mal_id"].to_list()
    assert sorted(got) == ids
    seen = server.hook.attempts
    assert seen and all(n == 2 for n in seen.values()), seen
    fault.titles_lost = len(set(ids) - set(got))


# ---------------------------------------------------------------------------------- 5xx bursts
@pytest.mark.parametrize("burst", [(500, 502), (503, 503), (502, 500)], ids=["500-502", "503-503", "502-500"])
def test_5xx_burst_on_every_page_then_success(fault, server, make_client, burst):
    fault.record(
        f"HTTP {burst[0]}, {burst[1]} before every page answers",
        "retried (total_retries=2); every title discovered, in popularity order",
    )
    ids = _six_titles(server)
    client = make_client(total_retries=2)
    server.hook = per_page_script(
        *(
            Canned(status, "<html><body>upstream error</body></html>", {"Content-Type": "text/html"})
            for status in burst
        )
    )
    attempts = server.hook.attempts
    result = _discover(client, server)
    got = result.titles.sort("popularity")["mal_id"].to_list()
    assert got == ids
    assert result.stop_reason in ("last page", "empty page")
    assert client.network_requests == server.count(SHIKI) == 3 * len(attempts)
    fault.titles_lost = len(set(ids) - set(got))
    fault.note = f"{len(attempts)} pages, {server.count(SHIKI)} requests"


def test_5xx_storm_ends_in_clear_error(fault, server, make_client):
    fault.record("HTTP 503 forever", "CatalogHTTPError naming the URL, the status and the retry count")
    _six_titles(server)
    client = make_client(total_retries=2)
    server.always(SHIKI, Canned(503, "<html>Service Unavailable</html>"))
    with pytest.raises(CatalogHTTPError) as info:
        _discover(client, server)
    assert len(client.clock.sleeps) == 2 and max(client.clock.sleeps) <= client.config.backoff_max
    assert "HTTP 503 after 2 retries" in str(info.value) and server.shikimori_url in str(info.value)
    assert server.count(SHIKI) == 3
    fault.titles_lost = 0


# ------------------------------------------------------------------------------------- timeouts
def test_response_slower_than_read_timeout(fault, server, make_client):
    fault.record(
        "every response 1 s late, read timeout 0.2 s",
        "each attempt cut at the read timeout, retried, then a CatalogHTTPError (kind timeout) naming "
        "the URL; bounded by attempts x timeout",
    )
    client = make_client(read_timeout=0.2, total_retries=2)
    server.always(JIKAN_5114, Canned(200, {"data": {"mal_id": 5114}}, delay=1.0))
    with pytest.raises(CatalogHTTPError) as info:
        client.get_json(server.jikan_url + "/anime/5114")
    assert info.value.kind == "timeout"
    assert "read timed out (0.2s) after 3 attempt(s)" in str(info.value)
    assert server.jikan_url + "/anime/5114" in str(info.value)
    assert len(client.clock.sleeps) == 2  # a backoff between attempts, no other wait
    assert server.count(JIKAN_5114) == 3
    fault.titles_lost = 0
    fault.note = "3 attempts x 0.2 s read timeout"


def test_slow_page_then_fast_keeps_every_title(fault, server, make_client):
    fault.record(
        "first attempt of each page slower than the read timeout",
        "timed-out attempt retried; every title discovered",
    )
    ids = _six_titles(server)
    client = make_client(read_timeout=0.2, total_retries=2)
    server.hook = per_page_script(Canned(200, {"data": {"animes": []}}, delay=0.6))
    got = _discover(client, server).titles["mal_id"].to_list()
    assert sorted(got) == ids
    fault.titles_lost = len(set(ids) - set(got))


def test_slow_drip_body_is_cut_at_a_total_deadline(fault, server, make_client):
    fault.record(
        "slow-drip body: 1 byte / 0.1 s, each read inside the 0.5 s read timeout",
        "the request is cut at the body deadline (1 s) and sent again, then a CatalogHTTPError "
        "(kind timeout) naming the URL and the deadline",
    )
    client = make_client(read_timeout=0.5, body_timeout=1.0, total_retries=1)
    body = {"data": {"mal_id": 5114}}
    server.always(JIKAN_5114, Trickle(200, body, step=1, interval=0.1))
    with pytest.raises(CatalogHTTPError) as info:  # a drip that were let through would arrive whole
        client.get_json(server.jikan_url + "/anime/5114")
    assert info.value.kind == "timeout"
    assert "response body not complete within 1.0s of its headers" in str(info.value)
    assert server.jikan_url + "/anime/5114" in str(info.value)
    assert server.count(JIKAN_5114) == 2 and len(client.clock.sleeps) == 1  # cut, one backoff, cut again
    fault.titles_lost = 0
    fault.note = f"{len(json.dumps(body))} bytes dripped at 0.1 s each: cut at 1 s per attempt, 2 attempts"


def test_slow_body_inside_the_deadline_is_used(fault, server, make_client):
    fault.record(
        "body 10 bytes / 0.1 s (about 0.3 s in all), deadline 5 s",
        "the response is used: the deadline cuts only a body that is late",
    )
    client = make_client(read_timeout=0.5, body_timeout=5.0, total_retries=0)
    server.script(JIKAN_5114, Trickle(200, {"data": {"mal_id": 5114}}, step=10, interval=0.1))
    assert client.get_json(server.jikan_url + "/anime/5114")["data"]["mal_id"] == 5114
    assert server.count(JIKAN_5114) == 1
    fault.titles_lost = 0


def test_body_stalls_mid_transfer_then_success(fault, server, make_client):
    fault.record(
        "headers arrive, then the body stalls longer than the read timeout",
        "the stalled transfer is cut at the read timeout and sent again; the response is used",
    )
    client = make_client(read_timeout=0.3, total_retries=2)
    server.script(
        JIKAN_5114, Trickle(200, {"data": {"mal_id": 5114, "pad": "x" * 40}}, step=10, interval=1.0)
    )
    doc = client.get_json(server.jikan_url + "/anime/5114")
    assert doc["data"]["mal_id"] == 5114
    assert (
        server.count(JIKAN_5114) == 2 and len(client.clock.sleeps) == 1
    )  # cut once, one backoff, sent again
    fault.titles_lost = 0


def test_body_stalls_forever_ends_in_timeout_error(fault, server, make_client):
    fault.record(
        "every body stalls longer than the read timeout",
        "bounded re-sends, then a CatalogHTTPError (kind timeout) naming the URL",
    )
    client = make_client(read_timeout=0.3, total_retries=2)
    server.always(
        JIKAN_5114, Trickle(200, {"data": {"mal_id": 5114, "pad": "x" * 40}}, step=10, interval=1.0)
    )
    with pytest.raises(CatalogHTTPError) as info:
        client.get_json(server.jikan_url + "/anime/5114")
    assert info.value.kind == "timeout" and server.jikan_url + "/anime/5114" in str(info.value)
    assert server.count(JIKAN_5114) == 3 and len(client.clock.sleeps) == 2, (
        server.count(JIKAN_5114),
        client.clock.sleeps,
    )
    fault.titles_lost = 0
    fault.note = "3 attempts, each cut at the 0.3 s read timeout"


# ------------------------------------------------------------------------- resets and truncation
def test_connection_reset_before_response_then_success(fault, server, make_client):
    fault.record(
        "connection reset (RST) before any response byte, twice",
        "retried as a connection error; every title discovered",
    )
    ids = _six_titles(server)
    client = make_client(total_retries=2)
    server.script(SHIKI, Reset(), Reset())
    got = _discover(client, server).titles["mal_id"].to_list()
    assert sorted(got) == ids
    fault.titles_lost = len(set(ids) - set(got))


def test_connection_reset_mid_body_then_success(fault, server, make_client):
    fault.record(
        "server resets the socket mid-response (headers + 8 body bytes, then RST)",
        "the broken transfer is retried; every title discovered",
    )
    ids = _six_titles(server)
    client = make_client(total_retries=2)
    server.script(SHIKI, PartialBody(200, {"data": {"animes": []}}, keep=8, rst=True))
    got = _discover(client, server).titles["mal_id"].to_list()
    assert sorted(got) == ids
    assert client.network_requests == server.count(SHIKI)
    fault.titles_lost = len(set(ids) - set(got))


def test_truncated_transfer_then_success(fault, server, make_client):
    fault.record(
        "truncated transfer: fewer bytes than Content-Length, then a clean close",
        "the incomplete body is retried; the synopsis is fetched",
    )
    client = make_client(total_retries=2)
    server.script(
        JIKAN_5114, PartialBody(200, {"data": {"mal_id": 5114, "synopsis": "x" * 100}}, keep=30, rst=False)
    )
    doc = client.get_json(server.jikan_url + "/anime/5114")
    assert doc["data"]["mal_id"] == 5114
    assert server.count(JIKAN_5114) == 2
    fault.titles_lost = 0


def test_reset_mid_body_forever_ends_in_clear_error(fault, server, make_client):
    fault.record(
        "every response reset mid-body",
        "at most 1 + total_retries attempts, then a CatalogHTTPError (kind connection) naming the URL",
    )
    client = make_client(total_retries=2)
    server.always(JIKAN_5114, PartialBody(200, {"data": {"mal_id": 5114}}, keep=5, rst=True))
    with pytest.raises(CatalogHTTPError) as info:
        client.get_json(server.jikan_url + "/anime/5114")
    assert len(client.clock.sleeps) <= 2 and sum(client.clock.sleeps) <= 2 * client.config.backoff_max
    assert info.value.kind == "connection"
    assert server.jikan_url + "/anime/5114" in str(info.value)
    assert server.count(JIKAN_5114) == 3
    fault.titles_lost = 0


def test_reset_before_response_forever_ends_in_clear_error(fault, server, make_client):
    fault.record(
        "every connection reset before a response",
        "1 + total_retries attempts, then a CatalogHTTPError (kind connection) naming the URL",
    )
    client = make_client(total_retries=2)
    server.always(SHIKI, Reset())
    with pytest.raises(CatalogHTTPError) as info:
        client.post_graphql(server.shikimori_url, "query { animes { id } }")
    assert info.value.kind == "connection" and server.shikimori_url in str(info.value)
    assert server.count(SHIKI) == 3
    fault.titles_lost = 0


# -------------------------------------------------------------------------------- bad bodies
@pytest.mark.parametrize(
    "body,ctype",
    [
        ('{"data": {"animes": [{"id": "1", "malId": "1", "na', "application/json"),
        (
            "<html><head><title>Just a moment...</title></head><body>Checking your browser</body></html>",
            "text/html",
        ),
        ("", "application/json"),
    ],
    ids=["truncated-json", "html-challenge", "empty"],
)
def test_malformed_body_is_a_clear_error_and_not_cached(fault, server, make_client, body, ctype):
    what = "a truncated JSON" if "animes" in body else "an HTML (non-JSON)" if body else "an empty"
    fault.record(
        f"HTTP 200 with {what} body",
        "CatalogHTTPError (kind json) naming the URL with a snippet; not cached, so the next run refetches",
    )
    ids = _six_titles(server)
    client = make_client(cache=True)
    server.script(SHIKI, Canned(200, body, {"Content-Type": ctype}))
    with pytest.raises(CatalogHTTPError) as info:
        _discover(client, server)
    assert info.value.kind == "json" and "malformed JSON" in str(info.value)
    assert server.shikimori_url in str(info.value)
    # the next materialisation (same cache) gets the real page, not the cached garbage
    got = _discover(make_client(cache=True), server).titles["mal_id"].to_list()
    assert sorted(got) == ids
    fault.titles_lost = len(set(ids) - set(got))


def test_graphql_errors_fail_loudly_and_are_not_cached(fault, server, make_client):
    fault.record(
        "GraphQL `errors` with HTTP 200 (data: null)",
        "CatalogHTTPError (kind graphql) with the server's message and URL; not cached",
    )
    ids = _six_titles(server)
    client = make_client(cache=True)
    server.script(
        SHIKI,
        Canned(
            200,
            {
                "data": None,
                "errors": [{"message": "Internal server error", "extensions": {"code": "INTERNAL"}}],
            },
        ),
    )
    with pytest.raises(CatalogHTTPError) as info:
        _discover(client, server)
    assert info.value.kind == "graphql"
    assert "GraphQL error: Internal server error" in str(info.value) and server.shikimori_url in str(
        info.value
    )
    got = _discover(client, server).titles["mal_id"].to_list()
    assert sorted(got) == ids
    fault.titles_lost = len(set(ids) - set(got))


def test_wrong_shape_is_a_data_error(fault, server, make_client):
    fault.record(
        "HTTP 200 JSON of the wrong shape (data.animes is an object)",
        "CatalogDataError naming the URL and the field; nothing written",
    )
    from anime_pipeline.catalog.errors import CatalogDataError

    client = make_client()
    server.script(SHIKI, Canned(200, {"data": {"animes": {"oops": 1}}}))
    with pytest.raises(CatalogDataError, match=r"data\.animes is not a list") as info:
        _discover(client, server)
    assert server.shikimori_url in str(info.value)
    fault.titles_lost = 0


# --------------------------------------------------------------------------------- redirects
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_redirect_loop_is_bounded(fault, server, make_client, method):
    fault.record(
        f"redirect loop ({method} /a → /b → /a …)",
        f"at most {MAX_REDIRECTS} hops, then a CatalogHTTPError naming the URL",
    )
    client = make_client()
    server.always("/a", Canned(302, "", {"Location": "/b"}))
    server.always("/b", Canned(307, "", {"Location": server.base_url + "/a"}))
    with pytest.raises(CatalogHTTPError) as info:
        if method == "GET":
            client.get_json(server.base_url + "/a")
        else:
            client.post_graphql(server.base_url + "/a", "query { x }")
    assert client.clock.sleeps == []  # hops are not retries: no waiting
    assert server.count("/a") + server.count("/b") == MAX_REDIRECTS + 1
    assert (info.value.status in (302, 307) and "/a" in str(info.value)) or "/b" in str(info.value)
    assert all(r.method == method for r in server.requests)
    fault.titles_lost = 0


# -------------------------------------------------------------------------------- pagination
def test_page_that_repeats_forever_terminates(fault, server, make_client):
    fault.record(
        "Shikimori answers page 1 for every page number (full pages)",
        "discovery stops at the first page with no new id; the titles of page 1 kept",
    )
    _six_titles(server)
    server.shikimori_repeat = True
    client = make_client()
    result = _discover(client, server, max_titles=1000)
    assert result.pages == 2 and "repeated page" in result.stop_reason
    assert result.titles["mal_id"].to_list() == [1, 2]
    assert server.count(SHIKI) == 2
    fault.titles_lost = 0


def test_anilist_repeating_page_with_has_next_forever_terminates(fault, server, make_client):
    fault.record(
        "AniList: the same page with hasNextPage: true forever",
        "discovery stops at the first page with no new id",
    )
    server.anilist_endless = True
    pages: list[int] = []

    def always_page_one(rec):
        if rec.path.rstrip("/") != "/anilist":
            return None
        doc = rec.json()
        pages.append(doc["variables"]["page"])
        doc["variables"]["page"] = 1  # answer page 1 whatever was asked
        rec2 = type(rec)(rec.method, rec.path, rec.query, rec.headers, json.dumps(doc).encode())
        return server._anilist(rec2)

    server.hook = always_page_one
    client = make_client()
    result = discover_titles(client, catalog="anilist", url=server.anilist_url, max_titles=1000, page_size=5)
    assert result.pages == 2 and "repeated page" in result.stop_reason
    assert result.titles.height == 5
    fault.titles_lost = 0


@pytest.mark.parametrize("catalog", ["shikimori", "anilist"])
def test_endless_catalog_stops_at_the_page_cap(fault, server, make_client, catalog):
    fault.record(
        f"{catalog}: new ids on every page, forever",
        "discovery stops at max_titles or the hard page cap (200); requests bounded",
    )
    setattr(server, f"{catalog}_endless", True)
    client = make_client()
    url = server.shikimori_url if catalog == "shikimori" else server.anilist_url
    result = discover_titles(client, catalog=catalog, url=url, max_titles=10**9, page_size=2)
    assert result.pages == 200 and "page cap (200)" in result.stop_reason
    assert client.network_requests == 200 and result.titles.height == 400
    # with a real target it stops as soon as it has enough
    result = discover_titles(make_client(), catalog=catalog, url=url, max_titles=7, page_size=2)
    assert result.titles.height == 7 and result.pages == 4 and result.stop_reason == "max_titles reached"
    fault.titles_lost = 0
    fault.note = "200 pages, then stop"


def test_anilist_endless_catalog_stops_at_the_listing_depth(fault, server, make_client):
    fault.record(
        "anilist: hasNextPage forever, 50 per page",
        "discovery stops at page 100 (page × perPage ≤ 5000, AniList's listing depth) with a message "
        "saying so; page 101, which AniList answers with HTTP 400, is never requested",
    )
    server.anilist_endless = True
    client = make_client(read_timeout=10.0)  # the server builds 50 entries per page: slow on a busy machine
    result = discover_titles(
        client, catalog="anilist", url=server.anilist_url, max_titles=10**6, page_size=50
    )
    pages = [r.json()["variables"]["page"] for r in server.requests]
    assert max(pages) == 100 and result.pages == 100 and client.network_requests == 100
    assert "depth of 5000 entries" in result.stop_reason and "5000 of 1000000 titles" in result.stop_reason
    fault.titles_lost = 0
    fault.note = result.stop_reason
