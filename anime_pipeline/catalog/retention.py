"""No silent churn: what was collected before stays collected unless there is a recorded reason.

A catalog listing moves (popularity changes, the `max_titles` cap cuts it), so a fresh discovery
alone would drop titles that already have a synopsis, an episode, frames and a side of the split, and
on a daily schedule the validation set would drift. The rules:

* a title collected before stays in `titles` while the listing does not reject it: when it is still
  listed its row is refreshed, when it is no longer listed (moved past the cap) its old row is kept;
* a title is retired only when the fresh listing rejects it (its reason goes to `rejected`, marked
  "retired"), or when the catalog itself changed (a `rejected` row says so);
* `max_titles` limits additions: new titles join, most popular first, only while there is room;
* a synopsis collected before is kept when this run found none for a title that is still collected
  (an outage or a source that lost its text must not remove a title from the split).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from anime_pipeline.schemas import REJECTED, SYNOPSES, TITLES, conform, empty

RETIRED = "retired (collected before)"


@dataclass(frozen=True)
class RetainedTitles:
    titles: pl.DataFrame  # TITLES: kept + refreshed + added, sorted by mal_id
    rejected: pl.DataFrame  # REJECTED (stage "titles"): the listing's rejections, retirements marked
    kept_unlisted: list[int] = field(default_factory=list)  # collected before, not in this listing, kept
    retired: list[int] = field(default_factory=list)  # collected before, removed with a reason
    added: list[int] = field(default_factory=list)  # new this run
    not_added: int = 0  # new titles the listing passed that the cap left out


def _ids(df: pl.DataFrame | None) -> list[int]:
    if df is None or df.is_empty() or "mal_id" not in df.columns:
        return []
    return [int(i) for i in df["mal_id"].drop_nulls().to_list()]


def retain_titles(
    previous: pl.DataFrame | None,
    listed: pl.DataFrame,
    listing_rejected: pl.DataFrame,
    *,
    catalog: str,
    max_titles: int,
) -> RetainedTitles:
    """Merge the titles collected before (`previous`, TITLES or None) with a fresh listing (`listed`:
    accepted TITLES rows, most popular first; `listing_rejected`: REJECTED rows of the same listing).
    See the module doc for the rules."""
    listed = conform(listed, TITLES)
    rejected = conform(listing_rejected, REJECTED)
    previous = conform(previous, TITLES) if previous is not None else empty(TITLES)

    other_catalog = previous.filter(pl.col("catalog").fill_null("") != catalog)
    previous = previous.filter(pl.col("catalog").fill_null("") == catalog)
    listed_ids = set(_ids(listed))
    reasons = {
        int(r["mal_id"]): r["reason"]
        for r in rejected.iter_rows(named=True)
        if r["mal_id"] is not None and r["stage"] == "titles"
    }
    retired = sorted(i for i in _ids(previous) if i not in listed_ids and i in reasons)
    kept_unlisted = sorted(i for i in _ids(previous) if i not in listed_ids and i not in reasons)
    previous_ids = set(_ids(previous))

    rows = [
        listed.filter(pl.col("mal_id").is_in(list(previous_ids))),
        previous.filter(pl.col("mal_id").is_in(kept_unlisted)),
    ]
    held = sum(df.height for df in rows)
    new = listed.filter(~pl.col("mal_id").is_in(list(previous_ids)))
    room = max(0, max_titles - held)
    rows.append(new.head(room))
    parts = [df for df in rows if df.height]
    titles = conform(pl.concat(parts, how="vertical"), TITLES).sort("mal_id") if parts else empty(TITLES)

    if retired:
        rejected = rejected.with_columns(
            pl.when(pl.col("mal_id").is_in(retired) & (pl.col("stage") == "titles"))
            .then(pl.lit(f"{RETIRED}: ") + pl.col("reason"))
            .otherwise(pl.col("reason"))
            .alias("reason")
        )
    if other_catalog.height:
        moved = other_catalog.select(
            "mal_id",
            "name",
            pl.lit("titles").alias("stage"),
            (
                pl.lit(f"{RETIRED}: catalog changed from ")
                + pl.col("catalog").fill_null("?")
                + pl.lit(f" to {catalog}")
            ).alias("reason"),
        )
        rejected = pl.concat([rejected, conform(moved, REJECTED)], how="vertical")
        retired = sorted(set(retired) | set(_ids(other_catalog)))
    return RetainedTitles(
        titles=titles,
        rejected=rejected,
        kept_unlisted=kept_unlisted,
        retired=retired,
        added=sorted(_ids(new.head(room))),
        not_added=max(0, new.height - room),
    )


@dataclass(frozen=True)
class RetainedSynopses:
    synopses: pl.DataFrame  # SYNOPSES, one per collected title that has one now or had one before
    rejected: pl.DataFrame  # REJECTED (stage "synopses") without the titles whose old synopsis was kept
    kept_previous: dict[int, str] = field(default_factory=dict)  # mal_id -> why this run found none


def retain_synopses(
    previous: pl.DataFrame | None, fresh: pl.DataFrame, fresh_rejected: pl.DataFrame, titles: pl.DataFrame
) -> RetainedSynopses:
    """Fresh synopses of `titles`, plus the previous synopsis of every title this run found none for."""
    wanted = _ids(titles)
    fresh = conform(fresh, SYNOPSES)
    fresh = fresh.filter(pl.col("mal_id").is_in(wanted)) if fresh.height else fresh
    rejected = conform(fresh_rejected, REJECTED)
    previous = conform(previous, SYNOPSES) if previous is not None else empty(SYNOPSES)
    have = set(_ids(fresh))
    keep = (
        previous.filter(pl.col("mal_id").is_in([i for i in wanted if i not in have]))
        if previous.height
        else previous
    )
    kept_ids = _ids(keep)
    why = {int(r["mal_id"]): r["reason"] for r in rejected.iter_rows(named=True) if r["mal_id"] is not None}
    kept = {i: why.get(i, "not fetched this run") for i in kept_ids}
    if kept_ids and rejected.height:
        rejected = rejected.filter(~pl.col("mal_id").is_in(kept_ids).fill_null(False))
    parts = [df for df in (fresh, keep) if df.height]
    synopses = (
        conform(pl.concat(parts, how="vertical"), SYNOPSES).sort("mal_id") if parts else empty(SYNOPSES)
    )
    return RetainedSynopses(synopses=synopses, rejected=rejected, kept_previous=kept)
