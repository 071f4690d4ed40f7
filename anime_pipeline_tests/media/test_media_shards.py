from __future__ import annotations

import io

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from anime_pipeline.media.checks import check_frames
from anime_pipeline.media.errors import MediaError
from anime_pipeline.media.preview import contact_sheet
from anime_pipeline.media.probe import VideoProbe, probe_video
from anime_pipeline.media.sampling import SampledFrame, SamplingConfig
from anime_pipeline.media.shards import (
    decode_frames,
    extract_frame_shard,
    read_frame_shard,
    shard_path,
    write_frame_shard,
)
from anime_pipeline.paths import UnsafePathError
from anime_pipeline.schemas import FRAMES

SHA = "ab" * 32


def _frames(n=4, size=(64, 48)):
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 30), (128, 0, 128)]
    return [
        SampledFrame(frame_index=i, timestamp_s=1.0 + i * 0.5, image=Image.new("RGB", size, colours[i % 5]))
        for i in range(n)
    ]


def _leftovers(d):
    return sorted(p.name for p in d.iterdir())


def test_write_and_read_shard(tmp_path):
    dest = tmp_path / "frames" / "mal_id=7" / "part-0.parquet"
    info = write_frame_shard(_frames(), mal_id=7, episode=1, source_sha256=SHA, dest=dest)
    assert info.path == dest and info.num_frames == 4 and (info.width, info.height) == (64, 48)
    assert info.bytes == dest.stat().st_size > 0
    assert _leftovers(dest.parent) == ["part-0.parquet"]

    df = read_frame_shard(dest)
    assert dict(df.schema) == FRAMES and df.columns == list(FRAMES)
    assert df["mal_id"].to_list() == [7] * 4 and df["episode"].to_list() == [1] * 4
    assert df["frame_index"].to_list() == [0, 1, 2, 3]
    assert df["timestamp_s"].to_list() == [1.0, 1.5, 2.0, 2.5]
    assert df["source_sha256"].to_list() == [SHA] * 4

    pf = pq.ParquetFile(dest)
    assert pf.metadata.num_row_groups == 1
    arrow = pf.schema_arrow
    expected = {
        "mal_id": pa.int64(),
        "episode": pa.int16(),
        "frame_index": pa.int32(),
        "timestamp_s": pa.float64(),
        "width": pa.int32(),
        "height": pa.int32(),
    }
    for name, typ in expected.items():
        assert arrow.field(name).type == typ
    assert pa.types.is_binary(arrow.field("image").type) or pa.types.is_large_binary(
        arrow.field("image").type
    )
    assert arrow.names == list(FRAMES)

    images = decode_frames(df)
    assert [im.size for im in images] == [(64, 48)] * 4
    assert images[0].getpixel((10, 10)) == pytest.approx((200, 30, 30), abs=8)


def test_write_is_atomic_when_writer_fails(tmp_path, monkeypatch):
    dest = tmp_path / "part-0.parquet"

    def exploding_write(self, file, *args, **kwargs):
        with open(file, "wb") as f:
            f.write(b"PAR1 half a shard")
        raise OSError("disk full mid-write")

    monkeypatch.setattr(pl.DataFrame, "write_parquet", exploding_write)
    with pytest.raises(OSError, match="disk full"):
        write_frame_shard(_frames(), mal_id=7, episode=1, source_sha256=SHA, dest=dest)
    assert _leftovers(tmp_path) == []


def test_failed_rewrite_keeps_the_old_shard(tmp_path, monkeypatch):
    dest = tmp_path / "part-0.parquet"
    write_frame_shard(_frames(2), mal_id=7, episode=1, source_sha256=SHA, dest=dest)
    old = dest.read_bytes()

    def exploding_write(self, file, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pl.DataFrame, "write_parquet", exploding_write)
    with pytest.raises(KeyboardInterrupt):
        write_frame_shard(_frames(4), mal_id=7, episode=1, source_sha256=SHA, dest=dest)
    assert dest.read_bytes() == old and _leftovers(tmp_path) == ["part-0.parquet"]


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(frames=[]), "no frames"),
        (dict(mal_id=0), "mal_id"),
        (dict(mal_id="7"), "mal_id"),
        (dict(episode=0), "episode"),
        (dict(source_sha256=""), "source_sha256"),
        (dict(jpeg_quality=0), "jpeg_quality"),
    ],
)
def test_write_validates(tmp_path, kw, match):
    args = dict(frames=_frames(), mal_id=7, episode=1, source_sha256=SHA, dest=tmp_path / "x.parquet")
    args.update(kw)
    frames = args.pop("frames")
    with pytest.raises(ValueError, match=match):
        write_frame_shard(frames, **args)
    assert not (tmp_path / "x.parquet").exists()


def test_write_rejects_unordered_timestamps(tmp_path):
    frames = _frames(3)
    frames[2] = SampledFrame(2, frames[1].timestamp_s, frames[2].image)
    with pytest.raises(ValueError, match="strictly increasing"):
        write_frame_shard(frames, mal_id=7, episode=1, source_sha256=SHA, dest=tmp_path / "x.parquet")


def test_read_rejects_wrong_schema(tmp_path):
    bad = tmp_path / "bad.parquet"
    pl.DataFrame({"mal_id": [1], "image": [b"x"]}).write_parquet(bad)
    with pytest.raises(MediaError, match=r"bad\.parquet: frame shard schema"):
        read_frame_shard(bad)
    junk = tmp_path / "junk.parquet"
    junk.write_text("nope")
    with pytest.raises(MediaError, match=r"junk\.parquet: not a readable frame shard"):
        read_frame_shard(junk)


def test_shard_path_layout(tmp_path):
    assert shard_path(tmp_path, 42) == (tmp_path / "mal_id=42" / "part-0.parquet").resolve()
    for hostile in ("../42", -1, True, 4.2):
        with pytest.raises((ValueError, UnsafePathError)):
            shard_path(tmp_path, hostile)


def test_extract_frame_shard_end_to_end(tmp_path, demo_episode):
    dest = shard_path(tmp_path / "frames", 990001)
    probe = probe_video(demo_episode)
    info = extract_frame_shard(
        demo_episode, mal_id=990001, dest=dest, cfg=SamplingConfig(num_frames=8, timeout_s=None)
    )
    assert info.num_frames == 8 and (info.width, info.height) == (160, 120)
    df = read_frame_shard(dest)
    assert df["source_sha256"].unique().to_list() == [probe.sha256]
    ok, detail = check_frames(df, duration_s=probe.duration_s, expected=8)
    assert ok, detail
    # the whole layout scans as one table
    scanned = pl.scan_parquet(str(tmp_path / "frames" / "**" / "*.parquet")).collect()
    assert scanned.height == 8 and dict(scanned.schema) == FRAMES


def _recorded_probe(video, tmp_path):
    """What the `episodes` asset records in episodes/<mal_id>/probe.json, read back."""
    import json

    meta = {**probe_video(video).as_metadata(), "source": "demo", "origin": "demo:1"}
    f = tmp_path / "probe.json"
    f.write_text(json.dumps(meta))
    return json.loads(f.read_text())


def test_extract_frame_shard_with_a_recorded_probe_does_not_hash(tmp_path, demo_episode, monkeypatch):
    import anime_pipeline.media.probe as probe_mod
    import anime_pipeline.media.shards as shards_mod

    meta = _recorded_probe(demo_episode, tmp_path)
    probe = VideoProbe.from_metadata(meta)
    full = probe_video(demo_episode)
    assert probe.sha256 == full.sha256 and probe.duration_s == pytest.approx(full.duration_s, abs=1e-3)
    assert (
        probe.path,
        probe.width,
        probe.height,
        probe.container,
        probe.variable_frame_rate,
        probe.size_bytes,
    ) == (full.path, full.width, full.height, full.container, full.variable_frame_rate, full.size_bytes)
    calls = []
    monkeypatch.setattr(probe_mod, "file_sha256", lambda p: calls.append(("hash", p)) or "00" * 32)
    real_probe_video = shards_mod.probe_video
    monkeypatch.setattr(
        shards_mod, "probe_video", lambda *a, **k: calls.append(("probe", a)) or real_probe_video(*a, **k)
    )
    dest = shard_path(tmp_path / "frames", 990002)
    info = extract_frame_shard(
        demo_episode, mal_id=990002, dest=dest, probe=probe, cfg=SamplingConfig(num_frames=4, timeout_s=None)
    )
    assert calls == []  # neither re-probed nor hashed
    assert info.num_frames == 4
    assert read_frame_shard(dest)["source_sha256"].unique().to_list() == [meta["sha256"]]


def test_extract_frame_shard_rehashes_when_the_file_changed(tmp_path, demo_episode, monkeypatch):
    import anime_pipeline.media.probe as probe_mod

    meta = _recorded_probe(demo_episode, tmp_path)
    stale = VideoProbe.from_metadata({**meta, "size_bytes": meta["size_bytes"] + 1, "sha256": "cd" * 32})
    calls = []
    real = probe_mod.file_sha256
    monkeypatch.setattr(probe_mod, "file_sha256", lambda p: calls.append(p) or real(p))
    dest = shard_path(tmp_path / "frames", 990003)
    extract_frame_shard(
        demo_episode, mal_id=990003, dest=dest, probe=stale, cfg=SamplingConfig(num_frames=2, timeout_s=None)
    )
    assert len(calls) == 1
    assert read_frame_shard(dest)["source_sha256"].unique().to_list() == [meta["sha256"]]


def test_probe_from_metadata_round_trip_and_path_override(tmp_path, demo_episode):
    meta = _recorded_probe(demo_episode, tmp_path)
    p = VideoProbe.from_metadata(meta)
    assert p.as_metadata() == {k: v for k, v in meta.items() if k not in ("source", "origin")}
    assert VideoProbe.from_metadata(meta, path=tmp_path / "x.mp4").path == tmp_path / "x.mp4"


@pytest.mark.parametrize(
    "change, phrase",
    [
        (dict(width=None), "width"),
        (dict(duration_s=0), "duration"),
        (dict(duration_s="nan"), "duration"),
        (dict(size_bytes=0), "size_bytes"),
        (dict(sha256="not-a-digest"), "sha256"),
        (dict(path=""), "path"),
        ("drop:height", "height"),
    ],
)
def test_probe_from_metadata_rejects_bad_records(tmp_path, demo_episode, change, phrase):
    meta = _recorded_probe(demo_episode, tmp_path)
    if isinstance(change, str):
        meta.pop(change.split(":")[1])
    else:
        meta.update(change)
    with pytest.raises(MediaError, match=phrase):
        VideoProbe.from_metadata(meta)


# ------------------------------------------------------------------------------------------ preview
def test_contact_sheet_from_images_and_bytes(tmp_path):
    frames = _frames(5)
    png = contact_sheet([f.image for f in frames], columns=3, thumb_width=40)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    sheet = Image.open(io.BytesIO(png))
    assert sheet.size == (3 * 42 + 2, 2 * 32 + 2)
    jpegs = [io.BytesIO() for _ in frames]
    for buf, f in zip(jpegs, frames):
        f.image.save(buf, format="JPEG")
    png2 = contact_sheet(
        [b.getvalue() for b in jpegs],
        columns=8,
        thumb_width=40,
        captions=[f"{f.timestamp_s:.1f} s" for f in frames],
    )
    assert Image.open(io.BytesIO(png2)).size == (5 * 42 + 2, 30 + 14 + 4)


def test_contact_sheet_validates():
    with pytest.raises(ValueError):
        contact_sheet([])
    with pytest.raises(ValueError):
        contact_sheet([Image.new("RGB", (8, 8))], captions=["a", "b"])


# ------------------------------------------------------------------------------------------- checks
def _table(tmp_path, mal_id=7, n=4, episode=1):
    dest = tmp_path / f"{mal_id}-{episode}.parquet"
    write_frame_shard(_frames(n), mal_id=mal_id, episode=episode, source_sha256=SHA, dest=dest)
    return read_frame_shard(dest)


def test_check_frames_ok(tmp_path):
    df = pl.concat([_table(tmp_path, 7), _table(tmp_path, 8, n=3)])
    ok, detail = check_frames(df, duration_s={7: 10.0, 8: 10.0}, expected={7: 4, 8: 3})
    assert ok, detail
    assert "2 title(s), 7 frames" in detail


def test_check_frames_failures(tmp_path):
    df = _table(tmp_path)
    assert check_frames(df, expected=5) == (False, "MAL id 7 episode 1: 4 frames, expected 5")
    ok, detail = check_frames(df, duration_s=2.0)
    assert not ok and "outside [0, 2.0]" in detail
    unordered = df.with_columns(pl.Series("timestamp_s", [1.0, 3.0, 2.0, 4.0]))
    ok, detail = check_frames(unordered)
    assert not ok and "not strictly increasing" in detail
    ok, detail = check_frames(df.drop("source_sha256"))
    assert not ok and "missing ['source_sha256']" in detail
    ok, detail = check_frames(df.with_columns(pl.col("episode").cast(pl.Int64)))
    assert not ok and "wrong types" in detail
    ok, detail = check_frames(df.head(0))
    assert (ok, detail) == (False, "no frames")
    ok, detail = check_frames(df.with_columns(pl.lit(b"GIF89a").alias("image")).select(list(FRAMES)))
    assert not ok and "not JPEG" in detail
    ok, detail = check_frames(df, expected={7: 4, 9: 4})
    assert not ok and "no frames for MAL id(s) [9]" in detail


def test_contact_sheet_from_jpeg_bytes_matches_the_decoded_images():
    # JPEG bytes are decoded in libjpeg's draft mode (reduced DCT scale): same picture as full decoding
    import numpy as np

    imgs = [Image.radial_gradient("L").convert("RGB").resize((512, 288)) for _ in range(4)]
    jpegs = []
    for im in imgs:
        b = io.BytesIO()
        im.save(b, format="JPEG", quality=95)
        jpegs.append(b.getvalue())
    decoded = [Image.open(io.BytesIO(j)).convert("RGB") for j in jpegs]
    a = Image.open(io.BytesIO(contact_sheet(jpegs, columns=2, thumb_width=160)))
    b = Image.open(io.BytesIO(contact_sheet(decoded, columns=2, thumb_width=160)))
    assert a.size == b.size
    assert np.abs(np.asarray(a, dtype=float) - np.asarray(b, dtype=float)).mean() < 3.0
