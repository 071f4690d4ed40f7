"""The user question put to the model next to the frames.

The prompt carries what the catalog knows (genres, main characters) and never anything that is only visible in
the video, so the synopsis has to come from looking at the frames.
"""

from __future__ import annotations

from collections.abc import Iterable

INSTRUCTION = "Write the synopsis of this first episode."


def _clean(items: Iterable[str] | None) -> list[str]:
    """Strip, drop empty/None entries and exact duplicates; keep the catalog's order (it is meaningful)."""
    seen: set[str] = set()
    out: list[str] = []
    for item in items or ():
        if item is None:
            continue
        text = " ".join(str(item).split())
        if text and text not in seen:
            seen.add(text)
            out.append(text)
    return out


def build_prompt(genres: list[str] | None, main_characters: list[str] | None) -> str:
    """E.g. "Genres: Action, Drama. Main characters: A, B. Write the synopsis of this first episode."

    Empty or missing lists drop their sentence; the result is a pure function of its inputs.
    """
    parts = []
    g = _clean(genres)
    c = _clean(main_characters)
    if g:
        parts.append(f"Genres: {', '.join(g)}.")
    if c:
        parts.append(f"Main characters: {', '.join(c)}.")
    parts.append(INSTRUCTION)
    return " ".join(parts)
