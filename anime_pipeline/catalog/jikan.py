"""Jikan v4 synopses: `GET {jikan_url}/anime/{id}` → `data.synopsis` (MAL's text, no key needed).
API facts and their sources: docs/CATALOG_APIS.md.
"""

from __future__ import annotations

from anime_pipeline.catalog.errors import CatalogDataError
from anime_pipeline.catalog.http import HttpClient
from anime_pipeline.catalog.models import SourceText, as_dict


def jikan_anime_url(jikan_url: str, mal_id: int) -> str:
    return f"{jikan_url.rstrip('/')}/anime/{int(mal_id)}"


def fetch_jikan_synopsis(client: HttpClient, jikan_url: str, mal_id: int) -> SourceText:
    """Raw (uncleaned) synopsis; `text` is None when Jikan has none."""
    url = jikan_anime_url(jikan_url, mal_id)
    doc = as_dict(client.get_json(url), f"GET {url}")
    data = as_dict(doc.get("data"), f"GET {url}: data")
    synopsis = data.get("synopsis")
    if synopsis is not None and not isinstance(synopsis, str):
        raise CatalogDataError(f"GET {url}: data.synopsis is not a string")
    return SourceText(text=synopsis, url=url)
