"""Helpers that turn pure results into Dagster metadata (the only Dagster-specific formatting)."""

from __future__ import annotations

import base64
from pathlib import Path

import dagster as dg
import polars as pl


def md_table(df: pl.DataFrame, n: int = 10, max_chars: int = 80) -> dg.MetadataValue:
    """A markdown preview of the first rows (long strings shortened, lists joined)."""
    if df.is_empty():
        return dg.MetadataValue.md("_(empty)_")
    head = df.head(n)
    cols = head.columns
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in head.iter_rows():
        cells = []
        for v in row:
            if isinstance(v, list):
                v = ", ".join(map(str, v))
            s = "" if v is None else str(v)
            s = s.replace("|", "\\|").replace("\n", " ")
            cells.append(s if len(s) <= max_chars else s[: max_chars - 1] + "…")
        lines.append("| " + " | ".join(cells) + " |")
    return dg.MetadataValue.md("\n".join(lines))


def png_md(png: bytes, alt: str = "preview") -> dg.MetadataValue:
    """An inline PNG image for the asset's metadata panel."""
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


def dir_bytes(path: Path) -> int:
    path = Path(path)
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def path_meta(path: Path) -> dg.MetadataValue:
    return dg.MetadataValue.path(str(path))
