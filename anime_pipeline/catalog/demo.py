"""The demo catalog as TITLES + SYNOPSES tables (no network)."""

from __future__ import annotations

from datetime import datetime

import polars as pl

from anime_pipeline.catalog.cleaning import clean_synopsis
from anime_pipeline.catalog.discovery import rows_to_frame
from anime_pipeline.catalog.synopses import as_utc, content_sha256
from anime_pipeline.demo import demo_titles
from anime_pipeline.schemas import SYNOPSES, TITLES


def demo_catalog(now: datetime | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(titles, synopses) of `anime_pipeline.demo.demo_titles()`: catalog "demo", source "demo",
    url `demo://<mal_id>`, one first episode per title."""
    fetched_at = as_utc(now)
    titles, synopses = [], []
    for t in demo_titles():
        titles.append(
            {
                "mal_id": t.mal_id,
                "name": t.name,
                "name_english": t.name_english,
                "name_native": t.name_native,
                "name_russian": None,
                "kind": "tv",
                "status": "released",
                "rating": t.rating,
                "score": t.score,
                "popularity": t.popularity,
                "episodes": 1,
                "episode_duration_min": None,
                "genres": list(t.genres),
                "main_characters": list(t.main_characters),
                "catalog": "demo",
                "catalog_id": str(t.mal_id),
                "description_ru": None,
            }
        )
        text = clean_synopsis(t.synopsis)
        synopses.append(
            {
                "mal_id": t.mal_id,
                "synopsis": text,
                "synopsis_ru": None,
                "source": "demo",
                "url": f"demo://{t.mal_id}",
                "fetched_at": fetched_at,
                "content_sha256": content_sha256(text),
            }
        )
    return rows_to_frame(titles, TITLES), rows_to_frame(synopses, SYNOPSES)
