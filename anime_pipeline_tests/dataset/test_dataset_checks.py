import polars as pl

from anime_pipeline.dataset.checks import check_samples_well_formed, check_split_disjoint
from anime_pipeline.schemas import SAMPLES, conform


def samples(**overrides):
    base = {
        "mal_id": [1, 2],
        "split": ["train", "train"],
        "name": ["a", "b"],
        "prompt": ["Write the synopsis of this first episode."] * 2,
        "synopsis": ["One.", "Two."],
        "frames_path": ["frames/mal_id=1/part-0.parquet", "frames/mal_id=2/part-0.parquet"],
        "num_frames": [8, 8],
        "duration_s": [1400.0, 1400.0],
    }
    base.update(overrides)
    return conform(pl.DataFrame(base), SAMPLES)


def test_disjoint():
    ok, detail = check_split_disjoint(samples(), samples(mal_id=[3, 4], split=["val", "val"]))
    assert ok, detail
    ok, detail = check_split_disjoint(samples(), samples(mal_id=[2, 4], split=["val", "val"]))
    assert not ok and "2" in detail


def test_well_formed_ok():
    ok, detail = check_samples_well_formed(samples())
    assert ok, detail


def test_well_formed_catches_each_problem():
    cases = {
        "prompt": dict(prompt=["  ", "x"]),
        "synopsis": dict(synopsis=[None, "x"]),
        "num_frames": dict(num_frames=[0, 8]),
        "absolute": dict(frames_path=["/etc/passwd", "frames/x.parquet"]),
        "'..'": dict(frames_path=["frames/../../x.parquet", "frames/x.parquet"]),
        "duplicate": dict(mal_id=[1, 1]),
        "split": dict(split=["train", "test"]),
    }
    for word, override in cases.items():
        ok, detail = check_samples_well_formed(samples(**override))
        assert not ok, word
        assert word in detail, (word, detail)
    ok, detail = check_samples_well_formed(pl.DataFrame({"mal_id": [1]}))
    assert not ok and "missing columns" in detail
