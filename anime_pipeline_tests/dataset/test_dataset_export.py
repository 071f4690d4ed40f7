"""Export a small synthetic dataset and load it back with the installed `datasets`, offline."""

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import yaml
from PIL import Image

from anime_pipeline.dataset.export import MANIFEST_NAME, cut_shards, export_dataset
from anime_pipeline.dataset.split import build_samples
from anime_pipeline.schemas import FRAMES, SYNOPSES, TITLES, conform

IDS = list(range(101, 115))  # 14 titles
FRAMES_PER_TITLE = 3
SALT = "export-test"


def jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, size=(24, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=80)
    return buf.getvalue()


def write_frames(home: Path, mal_id: int, seed_offset: int = 0) -> str:
    rel = f"frames/mal_id={mal_id}/part-0.parquet"
    imgs = [jpeg(mal_id * 10 + k + seed_offset) for k in range(FRAMES_PER_TITLE)]
    df = conform(
        pl.DataFrame(
            {
                "mal_id": [mal_id] * FRAMES_PER_TITLE,
                "episode": [1] * FRAMES_PER_TITLE,
                "frame_index": list(range(FRAMES_PER_TITLE)),
                "timestamp_s": [10.0 * k + 5 for k in range(FRAMES_PER_TITLE)],
                "width": [32] * FRAMES_PER_TITLE,
                "height": [24] * FRAMES_PER_TITLE,
                "image": imgs,
                "source_sha256": ["0" * 64] * FRAMES_PER_TITLE,
            }
        ),
        FRAMES,
    )
    (home / rel).parent.mkdir(parents=True, exist_ok=True)
    df.write_parquet(home / rel)
    return rel


def tables(ids, synopsis=lambda i: f"Synopsis of title {i}. Things happen."):
    titles = conform(
        pl.DataFrame(
            {
                "mal_id": ids,
                "name": [f"Title {i}" for i in ids],
                "name_english": [f"The Title {i}" for i in ids],
                "name_native": [f"タイトル{i}" for i in ids],
                "rating": ["pg_13"] * len(ids),
                "genres": [["Action", "Drama"]] * len(ids),
                "main_characters": [["Aoi Sato", "Ren Ito"]] * len(ids),
                "catalog": ["shikimori" if i % 2 else "anilist" for i in ids],
            }
        ),
        TITLES,
    )
    synopses = conform(
        pl.DataFrame(
            {
                "mal_id": ids,
                "synopsis": [synopsis(i) for i in ids],
                "synopsis_ru": [f"Описание {i}" for i in ids],
                "source": ["mal" if i % 3 else "jikan" for i in ids],
                "url": [f"https://myanimelist.net/anime/{i}" for i in ids],
                "fetched_at": [datetime(2025, 1, 1, tzinfo=UTC)] * len(ids),
            }
        ),
        SYNOPSES,
    )
    return titles, synopses


def shard_table(home, ids):
    return pl.DataFrame(
        {
            "mal_id": ids,
            "frames_path": [
                write_frames(home, i)
                if not (home / f"frames/mal_id={i}/part-0.parquet").exists()
                else f"frames/mal_id={i}/part-0.parquet"
                for i in ids
            ],
            "num_frames": [FRAMES_PER_TITLE] * len(ids),
            "duration_s": [1420.0] * len(ids),
        }
    )


@pytest.fixture
def world(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    home = tmp_path / "data"
    shards = shard_table(home, IDS)
    title_bytes = FRAMES_PER_TITLE * len(jpeg(0)) + 1024
    return {
        "home": home,
        "dest": tmp_path / "release",
        "shards": shards,
        "target": int(title_bytes * 3.5),
        "cache": tmp_path / "hf-cache",
    }


def run_export(world, ids=IDS, synopsis=None, shards=None):
    titles, synopses = tables(ids, **({"synopsis": synopsis} if synopsis else {}))
    res = build_samples(
        titles, synopses, shards if shards is not None else world["shards"], val_fraction=0.3, salt=SALT
    )
    assert res.train.height and res.val.height
    out = export_dataset(
        res.train,
        res.val,
        titles,
        synopses,
        world["home"],
        world["dest"],
        shard_target_bytes=world["target"],
        versions={"data_version": "abc123", "code_version": "0.1.0", "git_commit": "31172a8"},
    )
    return res, out


def snapshot(dest: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(dest)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(dest.rglob("*"))
        if p.is_file()
    }


def card_header(dest: Path) -> dict:
    _, header, _ = (dest / "README.md").read_text(encoding="utf-8").split("---\n", 2)
    return yaml.safe_load(header)


def test_cut_shards():
    assert cut_shards([], 10) == [(0, 0)]
    assert cut_shards([4, 4, 4, 4, 30, 1], 10) == [(0, 2), (2, 4), (4, 5), (5, 6)]


def test_export_loads_with_datasets(world):
    import datasets

    res, out = run_export(world)
    dest = world["dest"]
    assert out.rows_per_split == {"train": res.train.height, "validation": res.val.height}
    train_shards = sorted((dest / "data").glob("train-*.parquet"))
    assert len(train_shards) >= 2
    n = len(train_shards)
    assert [p.name for p in train_shards] == [f"train-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
    assert sorted(out.shards_written) == sorted(str(p.relative_to(dest)) for p in dest.glob("data/*.parquet"))
    assert out.shards_unchanged == []

    for ds in (
        datasets.load_dataset("parquet", data_dir=str(dest), cache_dir=str(world["cache"])),
        datasets.load_dataset(str(dest), cache_dir=str(world["cache"])),  # via the card's `configs`
    ):
        assert set(ds) == {"train", "validation"}
        assert ds["train"].num_rows == res.train.height and ds["validation"].num_rows == res.val.height
        assert isinstance(ds["train"].features["frames"], (datasets.Sequence, datasets.List))
        assert isinstance(ds["train"].features["frames"].feature, datasets.Image)
        assert sorted(ds["train"]["mal_id"]) == res.train["mal_id"].to_list()
        row = ds["validation"][0]
        assert len(row["frames"]) == FRAMES_PER_TITLE
        assert all(isinstance(im, Image.Image) and im.size == (32, 24) for im in row["frames"])
        assert row["frame_timestamps_s"] == [5.0, 15.0, 25.0]
        first = res.val.row(0, named=True)
        assert row["mal_id"] == first["mal_id"] and row["synopsis"] == first["synopsis"]
        assert row["prompt"] == first["prompt"] and row["genres"] == ["Action", "Drama"]
        assert row["synopsis_ru"] == f"Описание {first['mal_id']}"

    meta = card_header(dest)
    assert meta["license"] == "other"
    assert "video-text-to-text" in meta["task_categories"]
    splits = {f["split"]: f["path"] for f in meta["configs"][0]["data_files"]}
    assert splits == {"train": "data/train-*.parquet", "validation": "data/validation-*.parquet"}
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(dest / "README.md")  # the Hub's own parser reads the card and its metadata
    assert (
        card.data.pretty_name
        and card.data.license == "other"
        and card.data.to_dict()["configs"] == meta["configs"]
    )
    body = (dest / "README.md").read_text(encoding="utf-8")
    assert f"| train | {res.train.height} | {res.train.height * FRAMES_PER_TITLE} |" in body
    assert "| jikan |" in body and "| mal |" in body and "abc123" in body and "31172a8" in body


def test_reexport_unchanged_touches_nothing(world):
    _, first = run_export(world)
    before = snapshot(world["dest"])
    _, again = run_export(world)
    assert again.shards_written == [] and again.shards_renamed == [] and again.shards_removed == []
    assert sorted(again.shards_unchanged) == sorted(first.shards_written)
    assert again.content_hash == first.content_hash
    assert snapshot(world["dest"]) == before  # same bytes and mtimes, README and manifest included

    # Without the manifest the shards are rebuilt in temp files, found identical and still left alone.
    (world["dest"] / MANIFEST_NAME).unlink()
    _, third = run_export(world)
    assert third.shards_written == [] and third.content_hash == first.content_hash
    assert {k: v for k, v in snapshot(world["dest"]).items() if k != MANIFEST_NAME} == {
        k: v for k, v in before.items() if k != MANIFEST_NAME
    }


def test_changed_title_rewrites_only_its_shard(world):
    res, first = run_export(world)
    before = snapshot(world["dest"])
    victim = res.train["mal_id"][res.train.height // 2]
    _, second = run_export(
        world,
        synopsis=lambda i: (
            "A brand new synopsis, much longer than before. " * 3
            if i == victim
            else f"Synopsis of title {i}. Things happen."
        ),
    )
    manifest = json.loads((world["dest"] / MANIFEST_NAME).read_text())["shards"]
    holder = [
        rel
        for rel, info in manifest.items()
        if info["split"] == "train" and info["first_mal_id"] <= victim <= info["last_mal_id"]
    ]
    assert second.shards_written == holder
    assert second.content_hash != first.content_hash
    after = snapshot(world["dest"])
    for rel, stamp in before.items():
        if rel.startswith("data/") and rel not in holder:
            assert after[rel] == stamp, rel


def test_added_title_moves_no_bytes_of_other_shards(world):
    run_export(world)
    before = snapshot(world["dest"])
    new_ids = [*IDS, 900, 901, 902, 903]  # higher ids land at the end of the sort order
    shards = shard_table(world["home"], new_ids)
    res2, second = run_export(world, ids=new_ids, shards=shards)
    assert second.rows_per_split == {"train": res2.train.height, "validation": res2.val.height}
    after = snapshot(world["dest"])
    kept = second.shards_unchanged + second.shards_renamed
    assert kept, "earlier shards must be reused"
    before_by_bytes = {content: mtime for mtime, content in before.values()}
    for rel in kept:  # reused shards keep their bytes and mtime, even when renamed to a new -of-N
        mtime, content = after[rel]
        assert before_by_bytes.get(content) == mtime, rel
    assert not list((world["dest"] / "data").glob(".export-*"))
    assert sorted(p.name for p in (world["dest"] / "data").iterdir()) == sorted(
        Path(r).name for r in json.loads((world["dest"] / MANIFEST_NAME).read_text())["shards"]
    )


def test_missing_frames_fail_loudly(world):
    from anime_pipeline.dataset.export import ExportError

    shards = world["shards"].with_columns(
        pl.when(pl.col("mal_id") == IDS[0])
        .then(pl.lit("frames/nope.parquet"))
        .otherwise(pl.col("frames_path"))
        .alias("frames_path")
    )
    with pytest.raises(ExportError, match="does not exist"):
        run_export(world, shards=shards)
    escaping = world["shards"].with_columns(pl.lit("../outside.parquet").alias("frames_path"))
    with pytest.raises(ExportError, match="outside the data dir"):
        run_export(world, shards=escaping)


def test_leftovers_of_an_interrupted_export_are_removed(world):
    data = world["dest"] / "data"
    data.mkdir(parents=True)
    planted = [data / ".train-00000-of-00002.parquet.k3j4h5.parquet", data / ".export-hold-0123abcd"]
    for p in planted:
        p.write_bytes(b"half a shard")
    run_export(world)
    assert not any(p.exists() for p in planted)
    assert sorted(p.name for p in data.iterdir()) == sorted(
        Path(r).name for r in json.loads((world["dest"] / MANIFEST_NAME).read_text())["shards"]
    )
