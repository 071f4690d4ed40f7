"""Text cleaning for synopses and descriptions, and rating normalisation.

Cleaning never transliterates or folds characters: apart from NFC normalisation, whitespace
normalisation and removing markup/attribution, the text comes out as it went in.
"""

from __future__ import annotations

import re
import unicodedata

from lxml import html as lxml_html

__all__ = [
    "ATTRIBUTION_RE",
    "DEFAULT_MIN_CHARS",
    "bbcode_to_text",
    "clean_synopsis",
    "html_to_text",
    "is_placeholder",
    "normalise_rating",
]

DEFAULT_MIN_CHARS = 80

_BLOCK_TAGS = {
    "p",
    "div",
    "li",
    "ul",
    "ol",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "blockquote",
    "tr",
    "section",
}
_TAG_RE = re.compile(r"<\s*/?\s*[a-zA-Z][a-zA-Z0-9]*(\s[^<>]*)?/?\s*>")
_ENTITY_RE = re.compile(r"&(#\d+|#x[0-9a-fA-F]+|[a-zA-Z][a-zA-Z0-9]{1,31});")

# Attribution markers: "[Written by MAL Rewrite]", "(Source: Crunchyroll)", "(Source: MAL Rewrite)".
# Used by `clean_synopsis` (to remove them) and by checks (to prove none is left).
ATTRIBUTION_RE = re.compile(
    r"[\[(]\s*(?:written\s+by\b|source\s*:)[^\[\]()\n]{0,160}[\])]",
    re.IGNORECASE,
)
# A whole line that is only a source note: "Source: Funimation", "— Source: ANN".
_SOURCE_LINE_RE = re.compile(r"^[\s\-–—~*_]*source\s*:[^\n]{0,160}$", re.IGNORECASE | re.MULTILINE)
# Shikimori BBCode: [anime=121]…[/anime], [character=11]…[/character], [i]…[/i], [spoiler=x]…
_BBCODE_RE = re.compile(r"\[/?(?:[a-z_]+|\*)(?:=[^\]\n]{0,200})?\]")
_HSPACE_RE = re.compile(r"[ \t\f\v\u00a0\u2000-\u200a\u202f\u205f]+")

_PLACEHOLDER_RES = [
    re.compile(p, re.IGNORECASE)
    for p in (
        r"no synopsis (information )?(has been|have been|was) added",
        r"no synopsis (yet|available)",
        r"help improve our database by adding a synopsis",
        r"^\s*no (description|synopsis)( available)?\.?\s*$",
        r"^\s*(tba|tbd|n/?a|none|null|-+)\.?\s*$",
        r"^\s*описание (отсутствует|не добавлено)",
        r"^\s*нет описания\.?\s*$",  # Shikimori's "nothing here" text
    )
]


def html_to_text(html: str | None) -> str:
    """Markup to text with lxml: `<br>` → newline, block elements (`<p>`, `<div>`, …) → paragraph
    break, entities decoded. Newlines already in the source are kept."""
    if not html:
        return ""
    try:
        root = lxml_html.fragment_fromstring(html, create_parent="div")
    except Exception:  # lxml raises on input it cannot make a fragment of
        return html
    for el in root.iter():
        if not isinstance(el.tag, str):  # comments, processing instructions: no text of their own
            continue
        tag = el.tag.lower()
        if tag in ("script", "style"):
            el.text = ""
            for child in list(el):
                el.remove(child)
        elif tag == "br":
            el.tail = "\n" + (el.tail or "")
        elif tag in _BLOCK_TAGS and el is not root:
            el.text = "\n\n" + (el.text or "")
            el.tail = "\n\n" + (el.tail or "")
    return re.sub(r"\n{3,}", "\n\n", root.text_content()).strip()


def bbcode_to_text(text: str | None) -> str:
    """Shikimori BBCode (`[anime=121]Name[/anime]`, `[i]…[/i]`) → the inner text."""
    if not text:
        return ""
    return _BBCODE_RE.sub("", text)


def _normalise_whitespace(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _HSPACE_RE.sub(" ", text)
    lines = [line.strip() for line in text.split("\n")]
    text = "\n".join(lines)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


def clean_synopsis(text: str | None, *, bbcode: bool = False) -> str:
    """Clean a synopsis: NFC, HTML (`<br>`, `<i>`, entities) to text, optional BBCode, attribution
    removed (`[Written by MAL Rewrite]`, `(Source: …)`, trailing `Source: …` lines), whitespace
    normalised (runs of spaces collapsed, lines stripped, at most one blank line). Returns "" for
    None/empty input. Characters are otherwise preserved exactly."""
    if not text:
        return ""
    text = unicodedata.normalize("NFC", str(text))
    if _TAG_RE.search(text) or _ENTITY_RE.search(text):
        text = html_to_text(text)
    if bbcode:
        text = bbcode_to_text(text)
    text = ATTRIBUTION_RE.sub("", text)
    text = _SOURCE_LINE_RE.sub("", text)
    text = _normalise_whitespace(text)
    return unicodedata.normalize("NFC", text)


def is_placeholder(text: str | None, *, min_chars: int = DEFAULT_MIN_CHARS) -> bool:
    """True for a missing/empty text, one shorter than `min_chars` characters after cleaning, or a
    catalog placeholder ("No synopsis information has been added to this title…", "Нет описания").
    `min_chars=0` applies the placeholder patterns only."""
    cleaned = clean_synopsis(text)
    if not cleaned or len(cleaned) < min_chars:
        return True
    head = cleaned[:400]
    return any(p.search(head) for p in _PLACEHOLDER_RES)


_RATING_ALIASES = {
    "g": "g",
    "pg": "pg",
    "pg_13": "pg_13",
    "pg13": "pg_13",
    "pg-13": "pg_13",
    "r": "r",
    "r17": "r",
    "r-17": "r",
    "r_17": "r",
    "r+": "r_plus",
    "r_plus": "r_plus",
    "rplus": "r_plus",
    "rx": "rx",
    "none": "none",
    "": "none",
}


def normalise_rating(value: str | None) -> str:
    """Shikimori (`pg_13`, `r_plus`), MAL (`r+`) and Jikan (`"PG-13 - Teens 13 or older"`,
    `"R - 17+ (violence & profanity)"`, `"R+ - Mild Nudity"`) ratings → g, pg, pg_13, r, r_plus,
    rx or none (unknown values → none)."""
    if value is None:
        return "none"
    raw = str(value).strip().lower()
    if raw in _RATING_ALIASES:
        return _RATING_ALIASES[raw]
    head = raw.split(" - ")[0].split(" ")[0].strip()
    if head in _RATING_ALIASES:
        return _RATING_ALIASES[head]
    return "none"
