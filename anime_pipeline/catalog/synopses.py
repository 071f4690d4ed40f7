"""English synopses per title, with a fallback chain MAL → Jikan → AniList.

A failing source (404, malformed JSON, 5xx after retries, timeout, placeholder text) only moves
the title on to the next source; a title whose sources all fail goes to `rejected` (stage
"synopses") with every source's reason, and each source error is listed in `errors`. MAL is
skipped without a client id, and disabled for the rest of the run after HTTP 401/403 or an
"invalid client id" 400 (the id is rejected, or MAL is throttling).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl

from anime_pipeline.catalog.anilist import fetch_anilist_description
from anime_pipeline.catalog.cleaning import DEFAULT_MIN_CHARS, clean_synopsis, is_placeholder
from anime_pipeline.catalog.discovery import rows_to_frame
from anime_pipeline.catalog.errors import CatalogError, CatalogHTTPError
from anime_pipeline.catalog.http import HttpClient
from anime_pipeline.catalog.jikan import fetch_jikan_synopsis
from anime_pipeline.catalog.mal import fetch_mal_synopsis
from anime_pipeline.catalog.models import SourceText
from anime_pipeline.schemas import REJECTED, SYNOPSES

SOURCES = ("mal", "jikan", "anilist")


@dataclass(frozen=True)
class SynopsisSources:
    """Where synopses come from. A None URL skips that source; MAL also needs `mal_client_id`
    (a secret: kept out of repr, URLs, messages and rows)."""

    mal_url: str | None = "https://api.myanimelist.net/v2"
    mal_client_id: str | None = field(default=None, repr=False)
    jikan_url: str | None = "https://api.jikan.moe/v4"
    anilist_url: str | None = "https://graphql.anilist.co"

    @classmethod
    def from_settings(cls, settings: Any, mal_client_id: str | None = None) -> SynopsisSources:
        return cls(
            mal_url=settings.mal_url,
            mal_client_id=mal_client_id or None,
            jikan_url=settings.jikan_url,
            anilist_url=settings.anilist_url,
        )

    def enabled(self) -> list[str]:
        out = []
        if self.mal_url and self.mal_client_id:
            out.append("mal")
        if self.jikan_url:
            out.append("jikan")
        if self.anilist_url:
            out.append("anilist")
        return out


@dataclass
class SynopsisResult:
    synopses: pl.DataFrame  # schemas.SYNOPSES
    rejected: pl.DataFrame  # schemas.REJECTED, stage "synopses"
    by_source: dict[str, int]  # accepted synopses per enabled source
    errors: list[str]  # one line per failed source request (secret-free)


def content_sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def as_utc(now: datetime | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    return now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)


def _disables_mal(exc: CatalogError) -> bool:
    if not isinstance(exc, CatalogHTTPError) or exc.status is None:
        return False
    return exc.status in (401, 403) or (exc.status == 400 and "client id" in str(exc).lower())


def _is_outage(exc: CatalogError) -> bool:
    """A failure of the service rather than of one title: timeouts, broken connections, 5xx, throttling."""
    kind = getattr(exc, "kind", None)
    status = getattr(exc, "status", None) or 0
    return kind in ("timeout", "connection", "rate_limit") or status >= 500 or status == 429


def fetch_synopses(
    client: HttpClient,
    titles: pl.DataFrame,
    *,
    sources: SynopsisSources,
    min_chars: int = DEFAULT_MIN_CHARS,
    now: datetime | None = None,
    outage_threshold: int = 5,
) -> SynopsisResult:
    """One cleaned synopsis per title (columns of `titles` used: mal_id, name, description_ru).

    Circuit breaker: after `outage_threshold` consecutive outage failures of a source (timeouts, broken
    connections, 5xx or 429 after all retries), that source is skipped for the rest of the run and the
    later titles go straight to the next source, so a whole-source outage costs minutes, not hours.
    A per-title answer (404, no synopsis) or a success resets the count."""
    secret = sources.mal_client_id or ""

    def scrub(text: str) -> str:
        text = client.redact(text)
        return text.replace(secret, "***") if len(secret) >= 4 else text

    fetchers: dict[str, Callable[[int], SourceText]] = {}
    if "mal" in sources.enabled():
        fetchers["mal"] = lambda mid: fetch_mal_synopsis(client, sources.mal_url, mid, secret)  # type: ignore[arg-type]
    if "jikan" in sources.enabled():
        fetchers["jikan"] = lambda mid: fetch_jikan_synopsis(client, sources.jikan_url, mid)  # type: ignore[arg-type]
    if "anilist" in sources.enabled():
        fetchers["anilist"] = lambda mid: fetch_anilist_description(client, sources.anilist_url, mid)  # type: ignore[arg-type]

    by_source = {name: 0 for name in fetchers}
    rows: list[dict[str, Any]] = []
    rejected: list[dict[str, Any]] = []
    errors: list[str] = []
    disabled: dict[str, str] = {}
    outages: dict[str, int] = {name: 0 for name in fetchers}
    seen: set[int] = set()

    for rec in titles.iter_rows(named=True):
        mal_id, name = rec.get("mal_id"), rec.get("name")
        if mal_id is None:
            rejected.append({"mal_id": None, "name": name, "stage": "synopses", "reason": "no MAL id"})
            continue
        if mal_id in seen:
            continue
        seen.add(mal_id)
        failures: list[str] = []
        accepted = False
        for source, fetch in fetchers.items():
            if source in disabled:
                failures.append(f"{source}: {disabled[source]}")
                continue
            try:
                got = fetch(mal_id)
            except CatalogError as exc:
                message = scrub(str(exc))
                errors.append(f"{source} mal_id={mal_id}: {message}")
                failures.append(f"{source}: {message}")
                if source == "mal" and _disables_mal(exc):
                    disabled["mal"] = f"skipped after HTTP {exc.status} (client id rejected or throttled)"  # type: ignore[attr-defined]
                    errors.append(f"mal: {disabled['mal']}; later titles use the other sources")
                outages[source] = outages[source] + 1 if _is_outage(exc) else 0
                if outages[source] >= outage_threshold > 0 and source not in disabled:
                    disabled[source] = f"skipped after {outages[source]} consecutive outage failures"
                    errors.append(f"{source}: {disabled[source]}; later titles use the other sources")
                continue
            outages[source] = 0
            text = clean_synopsis(got.text)
            if not text:
                failures.append(f"{source}: no synopsis")
                continue
            if is_placeholder(text, min_chars=min_chars):
                detail = (
                    f"too short ({len(text)} < {min_chars} chars)"
                    if len(text) < min_chars
                    else "placeholder text"
                )
                failures.append(f"{source}: {detail}")
                continue
            description_ru = clean_synopsis(rec.get("description_ru"))
            rows.append(
                {
                    "mal_id": mal_id,
                    "synopsis": text,
                    # the placeholder rules hold for the Russian text too ("Нет описания" is no description)
                    "synopsis_ru": None if is_placeholder(description_ru, min_chars=0) else description_ru,
                    "source": source,
                    "url": scrub(got.url),
                    "fetched_at": as_utc(now),
                    "content_sha256": content_sha256(text),
                }
            )
            by_source[source] += 1
            accepted = True
            break
        if not accepted:
            reason = "; ".join(failures) if failures else "no synopsis source configured"
            rejected.append(
                {
                    "mal_id": mal_id,
                    "name": name,
                    "stage": "synopses",
                    "reason": scrub(f"no usable synopsis: {reason}"),
                }
            )

    return SynopsisResult(
        synopses=rows_to_frame(rows, SYNOPSES),
        rejected=rows_to_frame(rejected, REJECTED),
        by_source=by_source,
        errors=errors,
    )
