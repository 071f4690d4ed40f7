"""AniList GraphQL: title discovery (`Page { media }`) and descriptions by MAL id (`Media(idMal:)`).
API facts and their sources: docs/CATALOG_APIS.md.

AniList has no age rating. Discovery filters with `isAdult: false` (which excludes hentai only),
so the `rating` column of AniList titles is "none" (unknown) and the rating ≤ PG-13 filter cannot
be applied: R-rated titles can pass. `score` is `averageScore / 10` (averageScore is 0–100).
`popularity` (like for Shikimori) is the 1-based position in the popularity-ordered listing.
A listing is served to a depth of 5,000 entries (page × perPage ≤ 5000): discovery stops there.
"""

from __future__ import annotations

import math
from typing import Any

from anime_pipeline.catalog.errors import CatalogDataError
from anime_pipeline.catalog.http import HttpClient
from anime_pipeline.catalog.listing import ListingSpec
from anime_pipeline.catalog.models import (
    SourceText,
    TitleCandidate,
    as_dict,
    as_float,
    as_int,
    as_list,
    as_str,
    malformed_entry,
    object_or_empty,
    title_candidate,
)

MAX_PER_PAGE = 50
# AniList answers HTTP 400 past the 5,000th entry of a listing (page × perPage > 5000), whatever
# `pageInfo.hasNextPage` says; reported by several API clients.
MAX_DEPTH = 5000
FIRST_SEASON_BLOCKERS = ("PREQUEL", "PARENT")

ANILIST_PAGE_QUERY = (
    "query ($page: Int, $perPage: Int, $minScore: Int) { "
    "Page(page: $page, perPage: $perPage) { "
    "pageInfo { total perPage currentPage lastPage hasNextPage } "
    "media(type: ANIME, format: TV, status: FINISHED, sort: POPULARITY_DESC, "
    "averageScore_greater: $minScore, isAdult: false) { "
    "id idMal format status isAdult "
    "title { romaji english native } "
    "genres averageScore popularity episodes duration "
    "startDate { year month day } "
    "relations { edges { relationType node { id format type title { romaji } } } } "
    "characters(role: MAIN) { nodes { name { full } } } "
    "} } }"
)

ANILIST_MEDIA_QUERY = (
    "query ($idMal: Int) { Media(idMal: $idMal, type: ANIME) { id idMal description(asHtml: false) } }"
)


def anilist_score_arg(min_score: float) -> int | None:
    """`averageScore_greater` is strict: min_score 7.0 → averageScore > 69 (i.e. ≥ 70)."""
    if min_score is None or min_score <= 0:
        return None
    return max(0, math.ceil(min_score * 10) - 1)


def _first_season_blockers(relations: Any) -> list[str]:
    edges = relations.get("edges") if isinstance(relations, dict) else None
    reasons = []
    for edge in as_list(edges):
        if not isinstance(edge, dict):
            continue
        kind = str(edge.get("relationType") or "").upper()
        node = object_or_empty(edge.get("node"))
        if kind in FIRST_SEASON_BLOCKERS and str(node.get("type") or "ANIME").upper() == "ANIME":
            title = object_or_empty(node.get("title")).get("romaji")
            label = f" {title!r}" if title else ""
            reasons.append(f"not a first season: has {kind.lower()}{label} (anilist id {node.get('id')})")
    return reasons


def parse_anilist_media(item: Any, *, min_score: float) -> TitleCandidate:
    """One `Page.media` entry → TITLES row + reasons to reject it."""
    if not isinstance(item, dict):
        return malformed_entry()
    catalog_id = as_str(item.get("id")) or ""
    title = object_or_empty(item.get("title"))
    average = as_float(item.get("averageScore"))
    score = average / 10.0 if average is not None else None
    characters = object_or_empty(item.get("characters"))
    main_characters = []
    for node in as_list(characters.get("nodes")):
        name = node.get("name") if isinstance(node, dict) else None
        full = name.get("full") if isinstance(name, dict) else None
        if as_str(full):
            main_characters.append(full)
    fmt = str(item.get("format") or "TV").upper()
    status = str(item.get("status") or "FINISHED").upper()
    fields = {
        "mal_id": as_int(item.get("idMal")),
        "name": as_str(title.get("romaji")),
        "name_english": as_str(title.get("english")),
        "name_native": as_str(title.get("native")),
        "kind": "tv" if fmt == "TV" else fmt.lower(),
        "status": "released" if status == "FINISHED" else status.lower(),
        "rating": "none",  # AniList has no age rating (see module doc)
        "score": score,
        "episodes": as_int(item.get("episodes")) or None,
        "episode_duration_min": as_float(item.get("duration")) or None,
        "genres": [g for g in as_list(item.get("genres")) if isinstance(g, str) and g],
        "main_characters": main_characters,
    }
    reasons = _first_season_blockers(item.get("relations"))
    if fmt != "TV":
        reasons.append(f"format {fmt} is not TV")
    if status != "FINISHED":
        reasons.append(f"status {status} is not FINISHED")
    if item.get("isAdult") is True:
        reasons.append("isAdult")
    return title_candidate("anilist", catalog_id, fields, min_score=min_score, reasons=reasons)


def fetch_anilist_description(client: HttpClient, url: str, mal_id: int) -> SourceText:
    """AniList's (English) description of the anime with this MAL id; raw text (HTML-ish)."""
    doc = client.post_graphql(url, ANILIST_MEDIA_QUERY, {"idMal": int(mal_id)})
    data = as_dict(doc.get("data"), f"POST {url} idMal={mal_id}: data")
    media = data.get("Media")
    shown = f"{url}#idMal={int(mal_id)}"
    if media is None:
        return SourceText(text=None, url=shown)
    media = as_dict(media, f"POST {url} idMal={mal_id}: data.Media")
    description = media.get("description")
    if description is not None and not isinstance(description, str):
        raise CatalogDataError(f"POST {url} idMal={mal_id}: description is not a string")
    return SourceText(text=description, url=shown)


def _has_next(container: dict, _items: list, _size: int) -> bool:
    # total/lastPage are documented as inaccurate: only hasNextPage is used.
    info = container.get("pageInfo")
    return bool(info.get("hasNextPage")) if isinstance(info, dict) else False


LISTING = ListingSpec(
    name="anilist",
    query=ANILIST_PAGE_QUERY,
    size_var="perPage",
    score_var="minScore",
    score_arg=anilist_score_arg,
    items_path=("Page", "media"),
    has_next=_has_next,
    parse=parse_anilist_media,
    max_page_size=MAX_PER_PAGE,
    max_depth=MAX_DEPTH,
)
