"""HttpClient: retries, Retry-After, timeouts, errors, cache, stats, rate limiting, secrets, User-Agent.

Waits are read from the client's injected clock (`client.clock`, a FakeClock), never from the wall clock.
"""

from __future__ import annotations

import pytest

from anime_pipeline.catalog.errors import CatalogConfigError, CatalogError, CatalogHTTPError
from anime_pipeline.catalog.http import USER_AGENT_ENV, HttpClient, HttpConfig, RateLimiter, host_key
from anime_pipeline.settings import Settings
from anime_pipeline_tests.fixtures.catalog_server import DEFAULT_MAL_CLIENT_ID, Canned, CatalogServer
from anime_pipeline_tests.fixtures.http import TEST_USER_AGENT, fast_config

JIKAN_5114 = "/jikan/v4/anime/5114"
SHIKI = "/shikimori/api/graphql"
QUERY = "query Animes($page: PositiveInt, $limit: PositiveInt) { animes(page: $page, limit: $limit) { id } }"


def test_get_json_returns_parsed_body_and_sends_user_agent(catalog_server, make_client):
    client = make_client()
    doc = client.get_json(catalog_server.jikan_url + "/anime/5114")
    assert doc["data"]["mal_id"] == 5114
    assert catalog_server.requests[-1].headers["User-Agent"] == TEST_USER_AGENT
    assert client.stats[host_key(catalog_server.base_url)] == 1
    assert client.requests_sent == 1 and client.summary() == {
        "requests": {host_key(catalog_server.base_url): 1},
        "cache_hits": {},
    }


def test_429_with_retry_after_then_success(catalog_server, make_client):
    client = make_client(max_retry_after=0.2, backoff_factor=0.0, backoff_jitter=0.0)
    catalog_server.script(JIKAN_5114, Canned.example("anilist-error-examples.json", "rate_limited_429"))
    doc = client.get_json(catalog_server.jikan_url + "/anime/5114")
    assert doc["data"]["mal_id"] == 5114
    assert catalog_server.count(JIKAN_5114) == 2
    # Retry-After: 30 was honoured, capped at max_retry_after (no backoff configured otherwise)
    assert client.clock.sleeps == [pytest.approx(0.2)]
    assert client.network_requests == 2  # the retry is counted too


def test_429_without_retry_after_shikimori_style_backs_off_then_succeeds(catalog_server, make_client):
    client = make_client(backoff_factor=0.05, backoff_jitter=0.0)
    catalog_server.script(SHIKI, Canned.example("shikimori-error-examples.json", "rate_limited_429"))
    doc = client.post_graphql(catalog_server.shikimori_url, QUERY, {"page": 1, "limit": 2})
    assert len(doc["data"]["animes"]) == 2
    assert client.clock.sleeps == [pytest.approx(0.05)]  # the first retry already waits backoff_factor
    assert catalog_server.count(SHIKI) == 2


def test_500_then_success(catalog_server, make_client):
    client = make_client()
    catalog_server.script(
        JIKAN_5114,
        Canned.example("jikan-error-examples.json", "upstream_failure_500"),
        Canned(502, "<html>Bad gateway</html>"),
    )
    doc = client.get_json(catalog_server.jikan_url + "/anime/5114")
    assert doc["data"]["mal_id"] == 5114
    assert catalog_server.count(JIKAN_5114) == 3
    assert client.network_requests == 3


def test_429_storm_ends_in_clear_error_not_a_hang(catalog_server, make_client):
    client = make_client(total_retries=3)
    storm = Canned.example("shikimori-error-examples.json", "rate_limited_429")
    catalog_server.script(SHIKI, *[storm] * 10)
    with pytest.raises(CatalogHTTPError) as info:
        client.post_graphql(catalog_server.shikimori_url, QUERY, {"page": 1})
    # three backoffs, each within backoff_max: the storm ends instead of hanging
    assert len(client.clock.sleeps) == 3 and all(
        0 < w <= client.config.backoff_max for w in client.clock.sleeps
    )
    err = info.value
    assert err.status == 429 and err.kind == "status"
    msg = str(err)
    assert catalog_server.shikimori_url in msg and "HTTP 429" in msg and "after 3 retries" in msg
    assert "Retry later" in msg
    assert catalog_server.count(SHIKI) == 4


def test_read_timeout_is_retried_then_reported(catalog_server, make_client):
    client = make_client(read_timeout=0.15, total_retries=1)
    slow = Canned(200, {"data": {"mal_id": 5114}}, delay=0.6)
    catalog_server.script(JIKAN_5114, slow, slow)
    with pytest.raises(CatalogHTTPError) as info:
        client.get_json(catalog_server.jikan_url + "/anime/5114")
    assert len(client.clock.sleeps) == 1  # one backoff between the two timed-out attempts
    assert info.value.kind == "timeout"
    assert "timed out" in str(info.value) and "/jikan/v4/anime/5114" in str(info.value)
    assert catalog_server.count(JIKAN_5114) == 2


def test_read_timeout_then_success(catalog_server, make_client):
    client = make_client(read_timeout=0.15, total_retries=2)
    catalog_server.script(JIKAN_5114, Canned(200, {"data": {}}, delay=0.5))
    assert client.get_json(catalog_server.jikan_url + "/anime/5114")["data"]["mal_id"] == 5114


def test_malformed_json_names_url_and_snippet(catalog_server, make_client):
    client = make_client()
    catalog_server.script(
        JIKAN_5114,
        Canned(200, '{"data": {"mal_id": 5114, "synopsis": "trunc', {"Content-Type": "application/json"}),
    )
    with pytest.raises(CatalogHTTPError) as info:
        client.get_json(catalog_server.jikan_url + "/anime/5114")
    msg = str(info.value)
    assert info.value.kind == "json"
    assert "malformed JSON" in msg and "/jikan/v4/anime/5114" in msg and '"synopsis": "trunc' in msg
    assert isinstance(info.value, CatalogError)


def test_graphql_errors_raise_with_message(catalog_server, make_client):
    client = make_client()
    catalog_server.script(
        SHIKI, Canned.example("shikimori-error-examples.json", "graphql_depth_exceeded_200")
    )
    with pytest.raises(CatalogHTTPError) as info:
        client.post_graphql(catalog_server.shikimori_url, QUERY, {"page": 1})
    assert info.value.kind == "graphql"
    assert "Query has depth of 7, which exceeds max depth of 5" in str(info.value)
    assert catalog_server.shikimori_url in str(info.value)


def test_graphql_error_with_http_status(catalog_server, make_client):
    client = make_client()
    with pytest.raises(CatalogHTTPError) as info:
        client.post_graphql(
            catalog_server.anilist_url, "query ($idMal: Int) { Media(idMal: $idMal) { id } }", {"idMal": 1}
        )
    assert info.value.status == 404
    assert "HTTP 404" in str(info.value) and "Not Found." in str(info.value)


def test_404_message_names_url_and_body(catalog_server, make_client):
    client = make_client()
    with pytest.raises(CatalogHTTPError) as info:
        client.get_json(catalog_server.jikan_url + "/anime/2")
    assert info.value.status == 404
    assert "/jikan/v4/anime/2" in str(info.value) and "Resource does not exist" in str(info.value)
    assert catalog_server.count("/jikan/v4/anime/2") == 1  # 404 is not retried


def test_connection_refused_is_a_catalog_error(make_client):
    client = make_client(total_retries=1)
    with pytest.raises(CatalogHTTPError) as info:
        client.get_json("http://127.0.0.1:9/nothing")  # discard port: nothing listens
    assert info.value.kind in ("connection", "timeout")
    assert "127.0.0.1:9/nothing" in str(info.value)


def test_cache_serves_second_client_without_network(catalog_server, make_client):
    first = make_client(cache=True)
    a = first.post_graphql(catalog_server.shikimori_url, QUERY, {"page": 1, "limit": 2})
    b = first.get_json(catalog_server.jikan_url + "/anime/5114")
    sent = catalog_server.count()
    assert first.network_requests == 2
    first.close()

    second = make_client(cache=True)  # a new process re-materialising the asset
    assert second.post_graphql(catalog_server.shikimori_url, QUERY, {"page": 1, "limit": 2}) == a
    assert second.get_json(catalog_server.jikan_url + "/anime/5114") == b
    # The GraphQL page (no validator) comes from the cache alone; Jikan's response carries an ETag, so
    # it is revalidated: one conditional request answered 304 without a body.
    assert catalog_server.count() == sent + 1
    assert catalog_server.not_modified == 1
    assert second.network_requests == 1
    assert sum(second.cache_hits.values()) == 2


def test_changed_resource_is_refetched_unchanged_is_not(catalog_server, make_client):
    url = catalog_server.jikan_url + "/anime/5114"
    first = make_client(cache=True)
    old = first.get_json(url)
    first.close()
    catalog_server.jikan_synopses[5114] = "A new synopsis for the test. " * 5
    second = make_client(cache=True)
    new = second.get_json(url)
    assert new["data"]["synopsis"] != old["data"]["synopsis"]
    assert catalog_server.not_modified == 0
    assert second.get_json(url) == new
    assert catalog_server.not_modified == 1


def test_listing_max_age_refetches_old_cached_pages(catalog_server, make_client):
    client = make_client(cache=True)
    client.post_graphql(catalog_server.shikimori_url, QUERY, {"page": 1, "limit": 2})
    client.post_graphql(catalog_server.shikimori_url, QUERY, {"page": 1, "limit": 2}, max_age_s=3600)
    assert catalog_server.count(SHIKI) == 1  # young enough: served from the cache
    client.post_graphql(catalog_server.shikimori_url, QUERY, {"page": 1, "limit": 2}, max_age_s=0)
    assert catalog_server.count(SHIKI) == 2  # too old for this caller: fetched again


def test_cache_key_includes_post_body(catalog_server, make_client):
    client = make_client(cache=True)
    client.post_graphql(catalog_server.shikimori_url, QUERY, {"page": 1, "limit": 1})
    client.post_graphql(catalog_server.shikimori_url, QUERY, {"page": 2, "limit": 1})
    client.post_graphql(catalog_server.shikimori_url, QUERY, {"page": 1, "limit": 1})
    assert catalog_server.count(SHIKI) == 2


def test_errors_and_malformed_bodies_are_not_cached(catalog_server, make_client):
    client = make_client(cache=True)
    catalog_server.script(
        SHIKI, Canned.example("shikimori-error-examples.json", "graphql_validation_error_200")
    )
    with pytest.raises(CatalogHTTPError):
        client.post_graphql(catalog_server.shikimori_url, QUERY, {"page": 1})
    catalog_server.script(JIKAN_5114, Canned(200, "not json"))
    with pytest.raises(CatalogHTTPError):
        client.get_json(catalog_server.jikan_url + "/anime/5114")
    # the next calls reach the server and succeed
    assert client.post_graphql(catalog_server.shikimori_url, QUERY, {"page": 1})["data"]["animes"]
    assert client.get_json(catalog_server.jikan_url + "/anime/5114")["data"]["mal_id"] == 5114
    assert catalog_server.count() == 4


def test_secret_header_never_in_messages_or_cache(catalog_server, make_client, tmp_path):
    client = make_client(cache=True, total_retries=1)
    secret = DEFAULT_MAL_CLIENT_ID
    ok = client.get_json(
        catalog_server.mal_url + "/anime/5114",
        params={"fields": "synopsis"},
        headers={"X-MAL-CLIENT-ID": secret},
    )
    assert ok["id"] == 5114
    assert catalog_server.requests[-1].headers["X-MAL-CLIENT-ID"] == secret
    # an error whose body echoes the secret is scrubbed
    catalog_server.script(
        "/mal/v2/anime/1",
        Canned(500, {"error": "boom", "message": f"bad id {secret}"}),
        Canned(500, {"error": "boom", "message": f"bad id {secret}"}),
    )
    with pytest.raises(CatalogHTTPError) as info:
        client.get_json(
            catalog_server.mal_url + "/anime/1",
            params={"fields": "synopsis"},
            headers={"X-MAL-CLIENT-ID": secret},
        )
    assert secret not in str(info.value) and "***" in str(info.value)
    client.close()
    blobs = b"".join(p.read_bytes() for p in (tmp_path / "http-cache").rglob("*") if p.is_file())
    assert blobs, "cache file written"
    assert secret.encode() not in blobs


def test_rate_limiter_sliding_window_with_fake_clock():
    now = [0.0]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    limiter = RateLimiter({"api.example.org": (2.0, 3.0)}, clock=lambda: now[0], sleep=sleep, max_wait=100)
    for _ in range(3):
        limiter.acquire("api.example.org")
    assert slept == [pytest.approx(1.0)]  # third request waited for the 1 s window
    limiter.acquire("cdn.api.example.org")  # subdomain shares the rule; 3/min is now full
    assert now[0] == pytest.approx(60.0)
    assert limiter.acquire("other.host") == 0.0  # unlisted hosts are not limited


def test_rate_limiter_bounded_wait():
    limiter = RateLimiter({"h": (None, 1.0)}, max_wait=5.0, sleep=lambda s: None)
    limiter.acquire("h")
    with pytest.raises(CatalogHTTPError) as info:
        limiter.acquire("h")
    assert info.value.kind == "rate_limit"


def test_rate_limit_applies_to_real_requests(catalog_server, make_client):
    client = make_client(default_rate_limit=(20.0, None))
    for _ in range(20):
        client.get_json(catalog_server.jikan_url + "/anime/5114")
    assert client.clock.sleeps == []
    client.get_json(catalog_server.jikan_url + "/anime/5114")
    assert client.clock.sleeps == [pytest.approx(1.0)]  # 20 per second: the 21st waited for the 1 s window
    assert catalog_server.count(JIKAN_5114) == 21


@pytest.mark.parametrize(
    "user_agent",
    ["", "   ", Settings.user_agent, "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0", "my-app/1.0 (…)"],
    ids=["empty", "blank", "settings-default", "browser", "ellipsis"],
)
def test_client_refuses_a_user_agent_that_names_no_application(user_agent, catalog_server):
    """Shikimori requires the application's name in the User-Agent and may ban IPs without one: the
    client refuses to exist (so sends nothing) and names the variable to set."""
    with pytest.raises(CatalogConfigError) as info:
        HttpClient(fast_config(user_agent=user_agent))
    assert USER_AGENT_ENV in str(info.value) and "Shikimori" in str(info.value)
    assert catalog_server.count() == 0


def test_client_sends_a_configured_user_agent(catalog_server):
    with HttpClient(fast_config(user_agent="  my-team-dataset/1.0 (me@example.org) ")) as client:
        client.get_json(catalog_server.jikan_url + "/anime/5114")
    assert catalog_server.requests[-1].headers["User-Agent"] == "my-team-dataset/1.0 (me@example.org)"


def test_default_config_has_documented_limits():
    cfg = HttpConfig()
    assert cfg.rate_limits["shikimori.one"] == (5.0, 90.0)
    assert cfg.rate_limits["api.jikan.moe"] == (3.0, 60.0)
    assert cfg.rate_limits["graphql.anilist.co"][1] == 30.0
    assert cfg.worst_case_wait_s < 3600


def test_post_redirect_stays_a_post(catalog_server, make_client):
    """shikimori.one answers 301 → shikimori.io: the GraphQL POST must follow as a POST."""
    client = make_client()
    catalog_server.script("/old/api/graphql", Canned(301, "", {"Location": SHIKI}))
    doc = client.post_graphql(catalog_server.base_url + "/old/api/graphql", QUERY, {"page": 1, "limit": 2})
    assert len(doc["data"]["animes"]) == 2
    follow = catalog_server.requests[-1]
    assert follow.method == "POST" and follow.path == SHIKI and follow.json()["variables"]["page"] == 1


def test_redirect_to_other_host_drops_secret_headers(catalog_server, make_client):
    client = make_client()
    with CatalogServer() as other:  # another origin (other port)
        catalog_server.script(
            "/mal/v2/anime/77", Canned(302, "", {"Location": other.jikan_url + "/anime/5114"})
        )
        doc = client.get_json(
            catalog_server.mal_url + "/anime/77", headers={"X-MAL-CLIENT-ID": DEFAULT_MAL_CLIENT_ID}
        )
        assert doc["data"]["mal_id"] == 5114
        assert other.count() == 1
        assert "X-MAL-CLIENT-ID" not in other.requests[-1].headers


def test_config_from_settings(tmp_path):
    from anime_pipeline.settings import Settings

    settings = Settings.from_env({"ANIME_PIPELINE_HOME": str(tmp_path), "ANIME_PIPELINE_USER_AGENT": "ua/1"})
    cfg = HttpConfig.from_settings(settings, total_retries=1)
    assert cfg.user_agent == "ua/1" and cfg.cache_dir == tmp_path / "http-cache" and cfg.total_retries == 1
