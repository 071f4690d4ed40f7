"""MyAnimeList API v2 synopses: `GET {mal_url}/anime/{id}?fields=synopsis` with `X-MAL-CLIENT-ID`.

The client id is a secret: it only travels in the header, never in a URL, a message or a row.
API facts and their sources: docs/CATALOG_APIS.md.
"""

from __future__ import annotations

from anime_pipeline.catalog.errors import CatalogDataError
from anime_pipeline.catalog.http import HttpClient
from anime_pipeline.catalog.models import SourceText, as_dict

CLIENT_ID_HEADER = "X-MAL-CLIENT-ID"


def mal_anime_url(mal_url: str, mal_id: int) -> str:
    """The public (secret-free) URL of the request for one anime's synopsis."""
    return f"{mal_url.rstrip('/')}/anime/{int(mal_id)}?fields=synopsis"


def fetch_mal_synopsis(client: HttpClient, mal_url: str, mal_id: int, client_id: str) -> SourceText:
    """Raw (uncleaned) MAL synopsis; `text` is None when the field is absent or null."""
    url = f"{mal_url.rstrip('/')}/anime/{int(mal_id)}"
    doc = client.get_json(url, params={"fields": "synopsis"}, headers={CLIENT_ID_HEADER: client_id})
    doc = as_dict(doc, f"GET {mal_anime_url(mal_url, mal_id)}")
    synopsis = doc.get("synopsis")
    if synopsis is not None and not isinstance(synopsis, str):
        raise CatalogDataError(f"GET {mal_anime_url(mal_url, mal_id)}: synopsis is not a string")
    return SourceText(text=synopsis, url=mal_anime_url(mal_url, mal_id))
