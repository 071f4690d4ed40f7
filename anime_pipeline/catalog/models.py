"""Small records shared by the catalog modules, and tolerant value converters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from anime_pipeline.catalog.errors import CatalogDataError

ALLOWED_RATINGS = ("g", "pg", "pg_13")


@dataclass
class TitleCandidate:
    """One catalog entry parsed into a TITLES row (without `popularity`, set by discovery).

    `reject_reasons` is empty when the entry passes every filter.
    """

    catalog_id: str
    row: dict[str, Any]
    reject_reasons: list[str] = field(default_factory=list)

    @property
    def rejected(self) -> bool:
        return bool(self.reject_reasons)

    @property
    def reason(self) -> str:
        return "; ".join(self.reject_reasons)


@dataclass(frozen=True)
class Page:
    """One page of a catalog listing."""

    items: list[Any]
    has_next: bool


@dataclass(frozen=True)
class SourceText:
    """A synopsis as fetched from one source (raw, uncleaned) and the URL it came from."""

    text: str | None
    url: str


def as_int(value: Any) -> int | None:
    """int from an int or a numeric string ("5114"); None for null/empty/invalid."""
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    try:
        text = str(value).strip()
        return int(text) if text else None
    except ValueError:
        try:
            f = float(text)
        except ValueError:
            return None
        return int(f) if f.is_integer() else None


def as_float(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def as_str(value: Any) -> str | None:
    """The string unchanged (no normalisation: titles must stay byte-exact); "" and None → None."""
    if value is None:
        return None
    if not isinstance(value, str):
        value = str(value)
    return value if value.strip() else None


def as_dict(value: Any, what: str) -> dict:
    if not isinstance(value, dict):
        raise CatalogDataError(f"{what}: expected a JSON object, got {type(value).__name__}")
    return value


def object_or_empty(value: Any) -> dict:
    """A JSON object as it is; anything else (absent, null, a list) as an empty one."""
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list:
    return value if isinstance(value, list) else []


def identity_reasons(catalog_id: str | None, mal_id: int | None) -> list[str]:
    """Reject reasons shared by every catalog: an entry without its own id or without a MAL id."""
    reasons = []
    if not catalog_id:
        reasons.append("malformed entry (no id)")
    if mal_id is None:
        reasons.append("no MAL id")
    return reasons


def score_reasons(score: float | None, min_score: float) -> list[str]:
    """Reject reasons for the score filter (an unscored title is rejected, not assumed good)."""
    if score is None or score <= 0:
        return ["no score"]
    return [f"score {score} < {min_score}"] if score < min_score else []


def malformed_entry() -> TitleCandidate:
    """The candidate for a listing entry that is not a JSON object."""
    return TitleCandidate(
        catalog_id="", row={"name": None}, reject_reasons=["malformed entry (not an object)"]
    )


def title_candidate(
    catalog: str,
    catalog_id: str,
    fields: dict[str, Any],
    *,
    min_score: float,
    reasons: list[str],
) -> TitleCandidate:
    """A TITLES row of `catalog` (`popularity` left for discovery) and its reject reasons: the identity
    checks, then the catalog's own `reasons` (first-season blockers, kind/status/rating filters), then the
    score filter."""
    row = {
        "name_russian": None,
        "description_ru": None,
        **fields,
        "popularity": None,
        "catalog": catalog,
        "catalog_id": catalog_id,
    }
    return TitleCandidate(
        catalog_id=catalog_id,
        row=row,
        reject_reasons=identity_reasons(catalog_id, row.get("mal_id"))
        + reasons
        + score_reasons(row.get("score"), min_score),
    )
