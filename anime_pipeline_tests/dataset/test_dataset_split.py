from datetime import UTC, datetime

import polars as pl
import pytest

from anime_pipeline.dataset.checks import check_samples_well_formed, check_split_disjoint
from anime_pipeline.dataset.split import (
    REASON_NO_FRAMES,
    REASON_NO_SYNOPSIS,
    SHARDS,
    assign_split,
    build_samples,
    content_hash,
    read_media_failures,
    split_stats,
    write_split,
)
from anime_pipeline.schemas import SAMPLES, SYNOPSES, TITLES, conform


def make_titles(ids):
    return conform(
        pl.DataFrame(
            {
                "mal_id": ids,
                "name": [f"Title {i}" for i in ids],
                "genres": [["Action", "Drama"] for _ in ids],
                "main_characters": [["Aoi Sato", "Ren Ito"] for _ in ids],
                "catalog": ["shikimori"] * len(ids),
            }
        ),
        TITLES,
    )


def make_synopses(ids, text=lambda i: f"Synopsis number {i} with some words."):
    return conform(
        pl.DataFrame(
            {
                "mal_id": ids,
                "synopsis": [text(i) for i in ids],
                "source": ["mal"] * len(ids),
                "fetched_at": [datetime(2025, 1, 1, tzinfo=UTC)] * len(ids),
            }
        ),
        SYNOPSES,
    )


def make_shards(ids, num_frames=8):
    return conform(
        pl.DataFrame(
            {
                "mal_id": ids,
                "frames_path": [f"frames/mal_id={i}/part-0.parquet" for i in ids],
                "num_frames": [num_frames] * len(ids),
                "duration_s": [1420.0] * len(ids),
            }
        ),
        SHARDS,
    )


def test_assign_split_deterministic_and_salted():
    assert [assign_split(i) for i in range(200)] == [assign_split(i) for i in range(200)]
    assert {assign_split(i, 0.0) for i in range(200)} == {"train"}
    assert {assign_split(i, 1.0) for i in range(200)} == {"val"}
    a = [assign_split(i, 0.5, salt="a") for i in range(200)]
    b = [assign_split(i, 0.5, salt="b") for i in range(200)]
    assert a != b
    with pytest.raises(ValueError):
        assign_split(1, 1.5)


def test_val_fraction_roughly_respected_over_2000_ids():
    ids = range(1, 2001)
    frac = sum(assign_split(i, 0.05) == "val" for i in ids) / 2000
    assert 0.035 <= frac <= 0.065  # binomial sd ~ 0.005
    frac20 = sum(assign_split(i, 0.2) == "val" for i in ids) / 2000
    assert 0.17 <= frac20 <= 0.23


def test_adding_titles_never_moves_a_title():
    ids = list(range(1, 301))
    before = build_samples(make_titles(ids), make_synopses(ids), make_shards(ids), val_fraction=0.2)
    more = ids + list(range(5000, 5400))
    after = build_samples(make_titles(more), make_synopses(more), make_shards(more), val_fraction=0.2)
    side_before = {i: "train" for i in before.train["mal_id"]} | {i: "val" for i in before.val["mal_id"]}
    side_after = {i: "train" for i in after.train["mal_id"]} | {i: "val" for i in after.val["mal_id"]}
    assert len(side_before) == 300
    assert all(side_after[i] == s for i, s in side_before.items())
    assert check_split_disjoint(after.train, after.val).ok


def test_build_samples_join_exclusions_and_schema():
    ids = [5, 3, 1, 4, 2]
    titles = make_titles(ids)
    synopses = make_synopses([1, 2, 3]).vstack(make_synopses([4], text=lambda i: "   "))  # 4: blank synopsis
    shards = make_shards([1, 2, 4]).vstack(make_shards([3], num_frames=0))  # 3: no frames
    res = build_samples(titles, synopses, shards, val_fraction=0.0)
    assert res.val.height == 0
    assert res.train["mal_id"].to_list() == [1, 2]
    assert res.train.schema == pl.Schema(SAMPLES)
    assert set(res.train["split"]) == {"train"}
    assert res.train["prompt"][0].startswith("Genres: Action, Drama. Main characters: Aoi Sato, Ren Ito.")
    assert res.train["name"][0] == "Title 1"
    assert res.train["frames_path"][0] == "frames/mal_id=1/part-0.parquet"
    assert res.excluded.to_dicts() == [
        {"mal_id": 3, "name": "Title 3", "reason": REASON_NO_FRAMES},
        {"mal_id": 4, "name": "Title 4", "reason": REASON_NO_SYNOPSIS},
        {"mal_id": 5, "name": "Title 5", "reason": f"{REASON_NO_SYNOPSIS}; {REASON_NO_FRAMES}"},
    ]
    assert check_samples_well_formed(res.train).ok


def test_build_samples_sorted_and_rejects_duplicates():
    ids = list(range(100, 0, -1))
    res = build_samples(make_titles(ids), make_synopses(ids), make_shards(ids), val_fraction=0.3)
    for df in (res.train, res.val):
        assert df["mal_id"].to_list() == sorted(df["mal_id"].to_list())
    assert res.train.height + res.val.height == 100
    with pytest.raises(ValueError, match="duplicate"):
        build_samples(make_titles([1, 1]), make_synopses([1]), make_shards([1]))


def test_split_stats_words_and_tokens():
    ids = list(range(1, 41))
    res = build_samples(
        make_titles(ids),
        make_synopses(ids, text=lambda i: " ".join(["w"] * i)),
        make_shards(ids),
        val_fraction=0.25,
    )
    stats = split_stats(res.train, res.val, tokenize=lambda s: 2 * len(s.split()))
    assert stats["train"]["samples"] == res.train.height
    assert stats["val"]["samples"] == res.val.height
    assert stats["total_samples"] == 40
    words = res.train["synopsis"].map_elements(lambda s: len(s.split()), return_dtype=pl.Int64)
    assert stats["train"]["synopsis_words"]["min"] == words.min()
    assert stats["train"]["synopsis_words"]["max"] == words.max()
    assert stats["train"]["synopsis_words"]["mean"] == pytest.approx(words.mean())
    assert stats["train"]["synopsis_tokens"]["max"] == 2 * words.max()
    assert set(stats["train"]["synopsis_words"]) == {"min", "mean", "p50", "p95", "max"}
    assert stats["train"]["frames"] == 8 * res.train.height
    empty_stats = split_stats(res.train.head(0), res.val.head(0))
    assert empty_stats["train"]["synopsis_words"] is None and "synopsis_tokens" not in empty_stats["train"]


def test_write_split_atomic_and_hash(tmp_path):
    ids = list(range(1, 30))
    res = build_samples(make_titles(ids), make_synopses(ids), make_shards(ids), val_fraction=0.3)
    paths = write_split(res, tmp_path / "splits")
    assert sorted(p.name for p in (tmp_path / "splits").iterdir()) == ["train.parquet", "val.parquet"]
    assert pl.read_parquet(paths["train"]).equals(res.train)
    assert pl.read_parquet(paths["val"]).equals(res.val)
    h1 = content_hash([paths["val"], paths["train"]])
    assert h1 == content_hash([paths["train"], paths["val"]])  # order-independent
    write_split(res, tmp_path / "splits")
    assert content_hash(paths.values()) == h1  # deterministic bytes
    other = build_samples(make_titles(ids), make_synopses(ids), make_shards(ids), val_fraction=0.5)
    write_split(other, tmp_path / "splits")
    assert content_hash(paths.values()) != h1


def _write_error(path, record):
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(record if isinstance(record, str) else json.dumps(record))


def test_media_failures_recorded_in_error_json_explain_the_exclusion(tmp_path):
    """The media assets write `error.json` for a failed episode / shard; the split reads it, so the excluded
    table says which titles were left out and why."""
    _write_error(
        tmp_path / "episodes" / "2" / "error.json",
        {"mal_id": 2, "stage": "episodes", "source": "local", "error": "no video file for MAL id 2 in /v"},
    )
    _write_error(
        tmp_path / "frames" / "mal_id=3" / "error.json",
        {"mal_id": 3, "stage": "frame_shards", "error": "decoder timed out\nafter 60 s"},
    )
    _write_error(tmp_path / "episodes" / "4" / "error.json", "{not json")
    failures = read_media_failures(tmp_path, [1, 2, 3, 4, 5])
    assert failures["mal_id"].to_list() == [2, 3, 4]

    ids = [1, 2, 3, 4, 5]
    res = build_samples(
        make_titles(ids), make_synopses(ids), make_shards([1, 5]), val_fraction=0.0, failures=failures
    )
    reasons = dict(zip(res.excluded["mal_id"], res.excluded["reason"]))
    assert reasons[2] == f"{REASON_NO_FRAMES} (episodes failed: no video file for MAL id 2 in /v)"
    assert reasons[3] == f"{REASON_NO_FRAMES} (frame_shards failed: decoder timed out after 60 s)"
    assert (
        reasons[4].startswith(f"{REASON_NO_FRAMES} (episodes failed: unreadable ")
        and "error.json" in reasons[4]
    )
    assert res.train["mal_id"].to_list() == [1, 5]


def test_a_failure_record_never_hides_a_complete_shard(tmp_path):
    _write_error(tmp_path / "episodes" / "1" / "error.json", {"stage": "episodes", "error": "old failure"})
    res = build_samples(
        make_titles([1]),
        make_synopses([1]),
        make_shards([1]),
        val_fraction=0.0,
        failures=read_media_failures(tmp_path, [1]),
    )
    assert res.train["mal_id"].to_list() == [1] and res.excluded.height == 0
