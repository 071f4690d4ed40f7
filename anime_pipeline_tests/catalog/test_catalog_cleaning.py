"""Cleaning, rating normalisation, demo catalog and data-contract checks (no network)."""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest

from anime_pipeline.catalog.checks import check_synopses_clean, check_unique_mal_ids
from anime_pipeline.catalog.cleaning import (
    bbcode_to_text,
    clean_synopsis,
    html_to_text,
    is_placeholder,
    normalise_rating,
)
from anime_pipeline.catalog.demo import demo_catalog
from anime_pipeline.demo import demo_titles
from anime_pipeline.schemas import SYNOPSES, TITLES

DATA = Path(__file__).parent / "data"


def test_html_to_text_breaks_and_entities():
    assert html_to_text("One<br>Two<br/>Three") == "One\nTwo\nThree"
    assert html_to_text("<p>First</p><p>Second &amp; more</p>") == "First\n\nSecond & more"
    assert html_to_text("<i>Italic</i> and <b>bold</b>") == "Italic and bold"
    assert html_to_text("") == "" and html_to_text(None) == ""


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Two brothers.\n\n[Written by MAL Rewrite]", "Two brothers."),
        ("Two brothers.\n<br><br>\n(Source: MAL Rewrite)", "Two brothers."),
        ("Story text. (Source: Crunchyroll)", "Story text."),
        (
            "Story.\n\n[Written by MAL Rewrite]\n\nIncluded one-shot: Extra",
            "Story.\n\nIncluded one-shot: Extra",
        ),
        ("Story text.\r\n\r\nSource: Funimation", "Story text."),
        ("  Many   spaces\tand\u00a0nbsp.  \n\n\n\nNext para.  ", "Many spaces and nbsp.\n\nNext para."),
        ("<i>Lupin</i> &mdash; thief<br>\n<br>\n(Source: ANN)", "Lupin — thief"),
        ("He said a < b and kept going.", "He said a < b and kept going."),
        ("Cafe\u0301 東京 🌸 «Ёлка»", "Café 東京 🌸 «Ёлка»"),
        (None, ""),
    ],
)
def test_clean_synopsis(raw, expected):
    assert clean_synopsis(raw) == expected


def test_clean_reference_fixture_texts():
    mal = json.loads((DATA / "mal-anime-details-response.json").read_text("utf-8"))["synopsis"]
    ani = json.loads((DATA / "anilist-page-response.json").read_text("utf-8"))["data"]["Page"]["media"][0]
    assert clean_synopsis(mal).endswith("(Placeholder text written for this fixture, not MAL's synopsis.)")
    assert clean_synopsis(ani["description"]).endswith("(Placeholder text written for this fixture.)")
    shiki = json.loads((DATA / "shikimori-animes-response.json").read_text("utf-8"))["data"]["animes"][0]
    cleaned = clean_synopsis(shiki["description"], bbcode=True)
    assert cleaned.startswith(
        "Новая экранизация манги, которая ближе к оригиналу, чем сериал «Стальной алхимик».\n\n"
    )
    assert "[" not in cleaned


def test_bbcode_to_text():
    assert (
        bbcode_to_text("[anime=121]FMA[/anime] и [character=11]Эдвард[/character] [i]x[/i]")
        == "FMA и Эдвард x"
    )


def test_is_placeholder():
    assert is_placeholder(
        "No synopsis information has been added to this title. Help improve our database by "
        "adding a synopsis here."
    )
    assert is_placeholder(None) and is_placeholder("   ")
    assert is_placeholder("Short text.")
    assert not is_placeholder("Short text.", min_chars=5)
    assert not is_placeholder("x" * 80)


def test_normalise_rating():
    assert normalise_rating("r+") == "r_plus"
    assert normalise_rating("PG-13 - Teens 13 or older") == "pg_13"
    assert normalise_rating("R - 17+ (violence & profanity)") == "r"
    assert normalise_rating("R+ - Mild Nudity") == "r_plus"
    assert normalise_rating("Rx - Hentai") == "rx"
    assert normalise_rating("G - All Ages") == "g"
    assert normalise_rating("pg") == "pg"
    assert normalise_rating(None) == "none" and normalise_rating("weird") == "none"


def test_demo_catalog_matches_schemas_and_demo_titles():
    now = datetime(2025, 1, 2, tzinfo=UTC)
    titles, synopses = demo_catalog(now=now)
    assert titles.schema == pl.Schema(TITLES) and synopses.schema == pl.Schema(SYNOPSES)
    demo = demo_titles()
    assert titles["mal_id"].to_list() == [t.mal_id for t in demo]
    assert synopses["synopsis"].to_list() == [t.synopsis for t in demo]
    assert set(titles["catalog"].to_list()) == {"demo"} and set(synopses["source"].to_list()) == {"demo"}
    assert synopses["url"].to_list() == [f"demo://{t.mal_id}" for t in demo]
    assert synopses["fetched_at"].to_list() == [now] * len(demo)
    assert check_unique_mal_ids(titles)[0] and check_unique_mal_ids(synopses)[0]
    assert check_synopses_clean(synopses)[0]
    assert synopses["content_sha256"][0] == hashlib.sha256(demo[0].synopsis.encode()).hexdigest()


def test_check_unique_mal_ids():
    ok, detail = check_unique_mal_ids(pl.DataFrame({"mal_id": [1, 2, 2, None, 3, 3]}))
    assert not ok and "1 row(s) without mal_id" in detail and "[2, 3]" in detail
    assert check_unique_mal_ids(pl.DataFrame({"mal_id": [1, 2]})) == (True, "2 rows, all mal_id unique")
    assert not check_unique_mal_ids(pl.DataFrame({"x": [1]}))[0]


def _syn(texts: list[str | None]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "mal_id": list(range(1, len(texts) + 1)),
            "synopsis": texts,
            "content_sha256": [hashlib.sha256(t.encode()).hexdigest() if t else None for t in texts],
        }
    )


def test_check_synopses_clean():
    assert check_synopses_clean(_syn(["A fine synopsis."]))[0]
    ok, detail = check_synopses_clean(
        _syn(
            [
                "Fine.",
                "Left over.\n\n[Written by MAL Rewrite]",
                "x (Source: ANN)",
                "",
                "tag<br>left",
                "Body\nSource: Funimation",
            ]
        )
    )
    assert not ok
    assert "1 empty (mal_id [4])" in detail
    assert "4 attribution/markup left (mal_id [2, 3, 5, 6])" in detail
    assert check_synopses_clean(_syn([])) == (False, "no synopses")
    bad_sha = _syn(["Fine."]).with_columns(pl.lit("0" * 64).alias("content_sha256"))
    assert "content_sha256 mismatch" in check_synopses_clean(bad_sha)[1]


def test_no_dagster_import_in_catalog_package():
    src = Path(__file__).resolve().parents[2] / "anime_pipeline" / "catalog"
    pattern = re.compile(r"^\s*(import|from)\s+dagster", re.MULTILINE)
    for path in src.glob("*.py"):
        assert not pattern.search(path.read_text("utf-8")), path
