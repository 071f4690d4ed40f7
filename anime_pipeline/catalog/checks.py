"""Pure data-contract checks (used by Dagster asset checks). Each returns (ok, detail)."""

from __future__ import annotations

import hashlib
import re

import polars as pl

from anime_pipeline.catalog.cleaning import ATTRIBUTION_RE

_LEFTOVER_RES = (
    ATTRIBUTION_RE,
    re.compile(r"\[\s*written by", re.IGNORECASE),
    re.compile(r"\(\s*source\s*:", re.IGNORECASE),
    re.compile(r"^\s*source\s*:", re.IGNORECASE | re.MULTILINE),
    re.compile(r"<\s*/?\s*(br|p|i|b|div|span|a)\b[^>]*>", re.IGNORECASE),
)
MAX_LISTED = 10


def check_unique_mal_ids(df: pl.DataFrame) -> tuple[bool, str]:
    """Every row has a mal_id and no mal_id appears twice."""
    if "mal_id" not in df.columns:
        return False, "no mal_id column"
    nulls = df["mal_id"].null_count()
    dups = sorted(
        df.filter(pl.col("mal_id").is_duplicated() & pl.col("mal_id").is_not_null())["mal_id"]
        .unique()
        .to_list()
    )
    problems = []
    if nulls:
        problems.append(f"{nulls} row(s) without mal_id")
    if dups:
        problems.append(f"{len(dups)} duplicated mal_id(s): {dups[:MAX_LISTED]}")
    if problems:
        return False, "; ".join(problems)
    return True, f"{df.height} rows, all mal_id unique"


def check_synopses_clean(df: pl.DataFrame) -> tuple[bool, str]:
    """The table has rows; every synopsis is non-empty, trimmed, free of attribution
    ("[Written by …]", "(Source: …)", "Source: …" lines) and HTML; content_sha256 (when present)
    matches the text."""
    if "synopsis" not in df.columns:
        return False, "no synopsis column"
    if df.height == 0:
        return False, "no synopses"
    has_id = "mal_id" in df.columns
    has_sha = "content_sha256" in df.columns
    empty_ids, leftover_ids, untrimmed_ids, sha_ids = [], [], [], []
    for row in df.iter_rows(named=True):
        text = row["synopsis"]
        ident = row["mal_id"] if has_id else None
        if not text or not text.strip():
            empty_ids.append(ident)
            continue
        if text != text.strip():
            untrimmed_ids.append(ident)
        if any(p.search(text) for p in _LEFTOVER_RES):
            leftover_ids.append(ident)
        if has_sha and row["content_sha256"] != hashlib.sha256(text.encode("utf-8")).hexdigest():
            sha_ids.append(ident)
    problems = []
    for label, ids in (
        ("empty", empty_ids),
        ("attribution/markup left", leftover_ids),
        ("untrimmed whitespace", untrimmed_ids),
        ("content_sha256 mismatch", sha_ids),
    ):
        if ids:
            problems.append(f"{len(ids)} {label} (mal_id {ids[:MAX_LISTED]})")
    if problems:
        return False, "; ".join(problems)
    return True, f"{df.height} synopses clean"
