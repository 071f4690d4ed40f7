"""Shikimori GraphQL title discovery (`animes` query). API facts and their sources: docs/CATALOG_APIS.md.

Server-side filters: kind "tv", status "released", rating "g,pg,pg_13", score ≥ an integer
(the `score` argument is an Int filter that only accepts 1..9), ordered by popularity. Every
filter is applied again client-side, exactly (e.g. min_score 7.5).
"""

from __future__ import annotations

import math
from typing import Any

from anime_pipeline.catalog.cleaning import clean_synopsis, html_to_text, is_placeholder, normalise_rating
from anime_pipeline.catalog.listing import ListingSpec
from anime_pipeline.catalog.models import (
    ALLOWED_RATINGS,
    TitleCandidate,
    as_float,
    as_int,
    as_list,
    as_str,
    malformed_entry,
    title_candidate,
)

MAX_LIMIT = 50
# Shikimori renders a missing description as `<p class='b-nothing_here'>Нет описания</p>`.
NOTHING_HERE_CLASS = "b-nothing_here"
FIRST_SEASON_BLOCKERS = ("prequel", "parent_story")

SHIKIMORI_QUERY = (
    "query Animes($page: PositiveInt, $limit: PositiveInt, $score: Int) { "
    'animes(order: popularity, kind: "tv", status: "released", rating: "g,pg,pg_13", '
    "score: $score, limit: $limit, page: $page) { "
    "id malId name russian english japanese kind score status episodes duration rating "
    "genres { id name russian kind } "
    "description descriptionHtml "
    "related { relationKind relationText anime { id name kind } manga { id name } } "
    "characterRoles { rolesEn rolesRu character { id name russian } } "
    "} }"
)


def shikimori_score_arg(min_score: float) -> int | None:
    """The server-side `score` Int filter for a (possibly fractional) minimum: floor, clamped to
    1..9; None (no server filter) when min_score ≤ 0."""
    if min_score is None or min_score <= 0:
        return None
    return max(1, min(9, math.floor(min_score)))


def russian_description(description: Any, description_html: Any) -> str | None:
    """The cleaned Russian description: `description` (BBCode), else the text of `descriptionHtml`; None
    when neither holds one: empty, Shikimori's "nothing here" block, or placeholder text ("Нет описания").
    A short real description is kept (it is metadata, not a training target)."""
    if isinstance(description, str) and description.strip():
        text = clean_synopsis(description, bbcode=True)
    elif isinstance(description_html, str) and NOTHING_HERE_CLASS not in description_html:
        text = clean_synopsis(html_to_text(description_html))
    else:
        text = ""
    return None if is_placeholder(text, min_chars=0) else text


def _first_season_blockers(related: Any) -> list[str]:
    reasons = []
    for rel in as_list(related):
        if not isinstance(rel, dict):
            continue
        kind = str(rel.get("relationKind") or "").lower()
        anime = rel.get("anime")
        if kind in FIRST_SEASON_BLOCKERS and isinstance(anime, dict):
            reasons.append(
                f"not a first season: has {kind} {anime.get('name')!r} (shikimori id {anime.get('id')})"
            )
    return reasons


def parse_shikimori_anime(item: Any, *, min_score: float) -> TitleCandidate:
    """One `animes` entry → TITLES row + reasons to reject it (filters re-checked client-side)."""
    if not isinstance(item, dict):
        return malformed_entry()
    catalog_id = as_str(item.get("id")) or ""
    rating = normalise_rating(item.get("rating"))
    score = as_float(item.get("score"))
    genres = [g.get("name") for g in as_list(item.get("genres")) if isinstance(g, dict) and g.get("name")]
    main_characters = []
    for role in as_list(item.get("characterRoles")):
        if not isinstance(role, dict):
            continue
        roles = [str(r).lower() for r in as_list(role.get("rolesEn"))]
        character = role.get("character")
        if "main" in roles and isinstance(character, dict) and as_str(character.get("name")):
            main_characters.append(character["name"])
    description_ru = russian_description(item.get("description"), item.get("descriptionHtml"))
    kind, status = as_str(item.get("kind")), as_str(item.get("status"))
    fields = {
        "mal_id": as_int(item.get("malId")),
        "name": as_str(item.get("name")),
        "name_english": as_str(item.get("english")),
        "name_native": as_str(item.get("japanese")),
        "name_russian": as_str(item.get("russian")),
        "kind": kind,
        "status": status,
        "rating": rating,
        "score": score,
        "episodes": as_int(item.get("episodes")) or None,  # 0 = unknown
        "episode_duration_min": as_float(item.get("duration")) or None,
        "genres": genres,
        "main_characters": main_characters,
        "description_ru": description_ru,
    }
    reasons = _first_season_blockers(item.get("related"))
    if kind != "tv":
        reasons.append(f"kind {kind} is not tv")
    if status != "released":
        reasons.append(f"status {status} is not released")
    if rating not in ALLOWED_RATINGS:
        reasons.append(f"rating {rating} is not one of {', '.join(ALLOWED_RATINGS)}")
    return title_candidate("shikimori", catalog_id, fields, min_score=min_score, reasons=reasons)


LISTING = ListingSpec(
    name="shikimori",
    query=SHIKIMORI_QUERY,
    size_var="limit",
    score_var="score",
    score_arg=shikimori_score_arg,
    items_path=("animes",),
    # No pageInfo: a page shorter than the limit is the last one.
    has_next=lambda _container, items, size: len(items) >= size,
    parse=parse_shikimori_anime,
    max_page_size=MAX_LIMIT,
)
