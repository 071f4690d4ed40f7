"""Fixtures of the catalog tests: a loopback catalog server and fast HTTP settings."""

from __future__ import annotations

from anime_pipeline_tests.fixtures.catalog_server import catalog_server  # noqa: F401  (fixture)
from anime_pipeline_tests.fixtures.http import make_client  # noqa: F401  (fixture)
