"""Paginated title discovery on Shikimori or AniList → TITLES + REJECTED tables.

Pagination always terminates: it stops at `max_titles` accepted titles, an empty page, the last
page (Shikimori: a short page; AniList: `hasNextPage` false), a page that adds no new catalog id
(a server repeating itself), the hard cap `max_pages`, or the deepest page the API serves (AniList:
page × perPage ≤ 5000; `stop_reason` says so instead of the HTTP 400 a deeper page gets). An HTTP error propagates (the asset
fails loudly); pages already fetched sit in the HTTP cache, so a retry does not refetch them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import polars as pl

from anime_pipeline.catalog import anilist, shikimori
from anime_pipeline.catalog.http import HttpClient
from anime_pipeline.catalog.listing import ListingSpec, fetch_page
from anime_pipeline.schemas import REJECTED, TITLES, conform, empty

log = logging.getLogger(__name__)

LISTINGS: dict[str, ListingSpec] = {spec.name: spec for spec in (shikimori.LISTING, anilist.LISTING)}
CATALOGS = tuple(LISTINGS)
MAX_PAGES_LIMIT = 200


@dataclass
class DiscoveryResult:
    titles: pl.DataFrame  # schemas.TITLES, most popular first, unique mal_id
    rejected: pl.DataFrame  # schemas.REJECTED, stage "titles"
    pages: int  # pages fetched (cache hits included)
    stop_reason: str = ""


def default_max_pages(max_titles: int, page_size: int) -> int:
    """Room for filtered-out entries (sequels, R ratings…): 4× the pages `max_titles` needs, + 5."""
    return min(MAX_PAGES_LIMIT, 5 + 4 * math.ceil(max(max_titles, 1) / max(page_size, 1)))


def rows_to_frame(rows: list[dict[str, Any]], schema: dict) -> pl.DataFrame:
    if not rows:
        return empty(schema)
    return conform(pl.DataFrame(rows, schema=schema), schema)


def discover_titles(
    client: HttpClient,
    *,
    catalog: str,
    url: str,
    max_titles: int,
    min_score: float = 7.0,
    page_size: int = 50,
    max_pages: int | None = None,
    listing_max_age_s: float | None = None,
) -> DiscoveryResult:
    """Most popular first-season TV titles of `catalog` ("shikimori" | "anilist") that pass the
    filters (released/finished, rating ≤ PG-13 where the catalog has ratings, score ≥ min_score),
    deduplicated by MAL id, at most `max_titles`. Dropped entries go to `rejected` with a reason.

    `listing_max_age_s`: listing pages cached longer ago than this are fetched again, so a scheduled
    re-collection sees new titles while a re-materialisation soon after reuses the cache."""
    spec = LISTINGS.get(catalog)
    if spec is None:
        raise ValueError(f"catalog {catalog!r} is not one of {', '.join(CATALOGS)}")
    page_size = spec.page_size(page_size)
    cap = max_pages if max_pages is not None else default_max_pages(max_titles, page_size)
    depth_pages = spec.max_pages(page_size)
    depth_capped = depth_pages is not None and depth_pages < cap
    if depth_capped:
        cap = depth_pages  # type: ignore[assignment]

    rows: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    seen_catalog_ids: set[str] = set()
    seen_mal_ids: dict[int, str] = {}
    rank = 0
    pages = 0
    stop_reason = (
        f"{catalog} serves a listing only to a depth of {spec.max_depth} entries (page × page size): stopped "
        f"after page {cap} at {page_size} per page"
        if depth_capped
        else f"page cap ({cap}) reached"
    )
    if max_titles <= 0:
        return DiscoveryResult(empty(TITLES), empty(REJECTED), 0, "max_titles is 0")

    for page_no in range(1, cap + 1):
        page = fetch_page(
            client,
            spec,
            url,
            page=page_no,
            page_size=page_size,
            min_score=min_score,
            max_age_s=listing_max_age_s,
        )
        pages += 1
        new_ids = 0
        for index, item in enumerate(page.items):
            cand = spec.parse(item, min_score=min_score)
            key = cand.catalog_id or f"<no id: page {page_no} item {index}>"
            if key in seen_catalog_ids:
                continue
            seen_catalog_ids.add(key)
            new_ids += 1
            rank += 1
            cand.row["popularity"] = rank
            mal_id = cand.row.get("mal_id")
            if cand.rejected:
                rejected.append(
                    {
                        "mal_id": mal_id,
                        "name": cand.row.get("name"),
                        "stage": "titles",
                        "reason": f"{catalog} {cand.catalog_id or '?'}: {cand.reason}",
                    }
                )
                continue
            assert mal_id is not None  # identity_reasons rejected a row without a MAL id above
            if mal_id in seen_mal_ids:
                rejected.append(
                    {
                        "mal_id": mal_id,
                        "name": cand.row.get("name"),
                        "stage": "titles",
                        "reason": f"{catalog} {cand.catalog_id}: duplicate mal_id {mal_id} "
                        f"(kept {catalog} {seen_mal_ids[mal_id]})",
                    }
                )
                continue
            seen_mal_ids[mal_id] = cand.catalog_id
            rows.append(cand.row)
            if len(rows) >= max_titles:
                break
        if len(rows) >= max_titles:
            stop_reason = "max_titles reached"
            break
        if not page.items:
            stop_reason = "empty page"
            break
        if new_ids == 0:
            stop_reason = f"page {page_no} added no new ids (repeated page)"
            break
        if not page.has_next:
            stop_reason = "last page"
            break

    if depth_capped and stop_reason.startswith(catalog) and len(rows) < max_titles:
        stop_reason += f" with {len(rows)} of {max_titles} titles"
        log.warning("%s", stop_reason)
    return DiscoveryResult(
        titles=rows_to_frame(rows, TITLES),
        rejected=rows_to_frame(rejected, REJECTED),
        pages=pages,
        stop_reason=stop_reason,
    )
