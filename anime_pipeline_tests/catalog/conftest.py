"""Fixtures of the catalog tests: a loopback catalog server and fast HTTP settings."""

from __future__ import annotations

import pytest

from anime_pipeline.catalog.http import HttpClient, HttpConfig
from anime_pipeline_tests.fixtures.catalog_server import catalog_server  # noqa: F401  (fixture)


def fast_config(**overrides) -> HttpConfig:
    """Tiny timeouts and backoff, no rate limits, no cache: failures surface in well under 1 s."""
    kw = dict(
        user_agent="anime_pipeline-tests/1.0",
        cache_dir=None,
        connect_timeout=1.0,
        read_timeout=1.0,
        total_retries=2,
        backoff_factor=0.01,
        backoff_jitter=0.01,
        backoff_max=0.05,
        max_retry_after=0.05,
        rate_limits={},
        default_rate_limit=None,
        max_rate_wait=2.0,
    )
    kw.update(overrides)
    return HttpConfig(**kw)


@pytest.fixture
def make_client(tmp_path):
    """Factory: `make_client(cache=True, **config overrides)`; clients are closed after the test."""
    clients: list[HttpClient] = []

    def make(*, cache: bool = False, **overrides) -> HttpClient:
        if cache:
            overrides.setdefault("cache_dir", tmp_path / "http-cache")
        client = HttpClient(fast_config(**overrides))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
