"""The one markdown table writer of the project's documents (dataset card, model card)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

EMPTY_CELL = "–"


def md_cell(value: Any) -> str:
    """A value as one table cell: None as an en dash, `|` escaped, newlines as spaces."""
    return str(EMPTY_CELL if value is None else value).replace("|", "\\|").replace("\n", " ")


def md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = [
        "| " + " | ".join(md_cell(h) for h in header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    lines += ["| " + " | ".join(md_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)
