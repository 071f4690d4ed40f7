"""Catalog stage (pure, no Dagster): title discovery, synopses, demo catalog, data-contract checks.

Public API:
    HttpConfig, HttpClient                     (catalog.http)
    discover_titles, DiscoveryResult           (catalog.discovery)
    fetch_synopses, SynopsisSources, SynopsisResult  (catalog.synopses)
    retain_titles, retain_synopses             (catalog.retention: no silent churn)
    demo_catalog                               (catalog.demo)
    check_unique_mal_ids, check_synopses_clean (catalog.checks)
    CatalogError, CatalogHTTPError, CatalogDataError, CatalogConfigError (catalog.errors)
"""

from anime_pipeline.catalog.checks import check_synopses_clean, check_unique_mal_ids
from anime_pipeline.catalog.demo import demo_catalog
from anime_pipeline.catalog.discovery import DiscoveryResult, discover_titles
from anime_pipeline.catalog.errors import CatalogConfigError, CatalogDataError, CatalogError, CatalogHTTPError
from anime_pipeline.catalog.http import HttpClient, HttpConfig
from anime_pipeline.catalog.retention import retain_synopses, retain_titles
from anime_pipeline.catalog.synopses import SynopsisResult, SynopsisSources, fetch_synopses

__all__ = [
    "CatalogConfigError",
    "CatalogDataError",
    "CatalogError",
    "CatalogHTTPError",
    "DiscoveryResult",
    "HttpClient",
    "HttpConfig",
    "SynopsisResult",
    "SynopsisSources",
    "check_synopses_clean",
    "check_unique_mal_ids",
    "demo_catalog",
    "discover_titles",
    "fetch_synopses",
    "retain_synopses",
    "retain_titles",
]
