"""Faithful frames: keyframe mode honours skip_s at both ends; frames are stored at their display aspect."""

from __future__ import annotations

import av
import numpy as np
import pytest

from anime_pipeline.media.probe import probe_video
from anime_pipeline.media.sampling import (
    SamplingConfig,
    display_size,
    plan_timestamps,
    plan_window,
    sample_frames,
)
from anime_pipeline.media.shards import decode_frames, extract_frame_shard, read_frame_shard
from anime_pipeline_tests.fixtures import media as fx


def _keyframes(path) -> list[float]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        origin = float(s.start_time * s.time_base) if s.start_time is not None else 0.0
        return sorted(
            round(float(p.pts * s.time_base) - origin, 6)
            for p in c.demux(s)
            if p.pts is not None and p.is_keyframe
        )


@pytest.fixture(scope="module")
def edge_keyframe_clip(tmp_path_factory):
    """10 s at 10 fps, keyframes at 0.0, 4.8 and 9.6 s: the ones at both ends lie inside skip_s = 1 s."""
    dest = tmp_path_factory.mktemp("skip") / "edges.mp4"
    fx.ffmpeg(
        "-f",
        "lavfi",
        "-i",
        "testsrc2=size=160x120:rate=10",
        "-t",
        "10",
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-g",
        "48",
        "-keyint_min",
        "48",
        "-sc_threshold",
        "0",
        "-bf",
        "0",
        "-pix_fmt",
        "yuv420p",
        "-threads",
        "1",
        str(dest),
    )
    return dest


@pytest.mark.parametrize("decoder", ["pyav", "decord"])
def test_keyframe_mode_never_takes_a_keyframe_inside_skip_s(edge_keyframe_clip, decoder):
    keys = _keyframes(edge_keyframe_clip)
    assert keys == [0.0, 4.8, 9.6]
    cfg = SamplingConfig(num_frames=4, skip_s=1.0, mode="keyframe", decoder=decoder, timeout_s=None)
    probe = probe_video(edge_keyframe_clip)
    targets = plan_timestamps(probe.duration_s, cfg)
    assert targets == pytest.approx([2.0, 4.0, 6.0, 8.0])
    # the defect: the keyframes nearest to the first and last targets are the ones at 0.0 and 9.6 s
    assert min(keys, key=lambda k: abs(k - targets[0])) == 0.0
    assert min(keys, key=lambda k: abs(k - targets[-1])) == 9.6
    lo, hi = plan_window(probe.duration_s, cfg)
    assert (lo, hi) == pytest.approx((1.0, 9.0))
    ts = [f.timestamp_s for f in sample_frames(edge_keyframe_clip, cfg, probe)]
    assert all(lo <= t <= hi for t in ts), ts
    # inside the window the keyframe is still taken (4.8 for the target at 4.0); elsewhere the exact frame
    assert ts == pytest.approx([2.0, 4.8, 6.0, 8.0], abs=1e-3)


def test_keyframe_window_through_the_worker(edge_keyframe_clip):
    cfg = SamplingConfig(num_frames=4, skip_s=1.0, mode="keyframe", timeout_s=60)
    ts = [f.timestamp_s for f in sample_frames(edge_keyframe_clip, cfg)]
    assert ts == pytest.approx([2.0, 4.8, 6.0, 8.0], abs=1e-3)


@pytest.fixture(scope="module")
def sar_clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("sar")
    out = {}
    for name, size, sar in [("qcif", "176x144", "128/117"), ("ntsc_dvd", "720x480", "32/27")]:
        dest = d / f"{name}.mp4"
        fx.ffmpeg(
            "-f",
            "lavfi",
            "-i",
            f"testsrc2=size={size}:rate=10",
            "-t",
            "3",
            "-vf",
            f"setsar={sar}:max=1000",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-g",
            "10",
            "-pix_fmt",
            "yuv420p",
            "-threads",
            "1",
            str(dest),
        )
        out[name] = dest
    return out


def test_display_size():
    assert display_size(1280, 720, 1.0, 512) == (512, 288)
    assert display_size(720, 480, 32 / 27, 512) == (512, 288)  # 853x480 displayed
    assert display_size(720, 576, 64 / 45, 512) == (512, 288)  # 1024x576 displayed
    assert display_size(176, 144, 128 / 117, 512) == (193, 144)  # never squeezed, never beyond display size
    assert display_size(160, 120, None, 512) == (160, 120)
    assert display_size(160, 120, 0.0, 512) == (160, 120)


def test_probe_records_the_sample_aspect_ratio(sar_clips, normal_clip):
    assert probe_video(sar_clips["qcif"], sha256=False).sample_aspect_ratio == pytest.approx(128 / 117)
    assert probe_video(sar_clips["ntsc_dvd"], sha256=False).sample_aspect_ratio == pytest.approx(32 / 27)
    assert probe_video(normal_clip, sha256=False).sample_aspect_ratio == 1.0


@pytest.mark.parametrize("decoder", ["pyav", "decord"])
@pytest.mark.parametrize("mode", ["exact", "keyframe"])
def test_frames_are_stored_at_the_display_aspect(sar_clips, decoder, mode):
    # the defect: a 176x144 clip with SAR 128:117 was stored at 176/144 = 1.222 instead of 1.337
    cfg = SamplingConfig(num_frames=3, mode=mode, decoder=decoder, timeout_s=None)
    for name, want in [("qcif", 176 * 128 / 117 / 144), ("ntsc_dvd", 720 * 32 / 27 / 480)]:
        frames = sample_frames(sar_clips[name], cfg)
        assert len(frames) == 3
        for f in frames:
            w, h = f.image.size
            assert w / h == pytest.approx(want, rel=0.01), (name, f.image.size)
            assert max(w, h) <= 512
    assert sample_frames(sar_clips["ntsc_dvd"], cfg)[0].image.size == (512, 288)


def test_recorded_probe_without_sar_still_gives_display_aspect(sar_clips, tmp_path):
    # a probe.json written before the field existed: PyAV reads the ratio from the stream
    meta = probe_video(sar_clips["qcif"]).as_metadata()
    del meta["sample_aspect_ratio"]
    from anime_pipeline.media.probe import VideoProbe

    probe = VideoProbe.from_metadata(meta)
    assert probe.sample_aspect_ratio is None
    info = extract_frame_shard(
        sar_clips["qcif"],
        mal_id=5,
        dest=tmp_path / "mal_id=5" / "part-0.parquet",
        cfg=SamplingConfig(num_frames=2, decoder="pyav", timeout_s=60),
        probe=probe,
    )
    df = read_frame_shard(info.path)
    img = decode_frames(df)[0]
    assert img.size == (193, 144) and (info.width, info.height) == (193, 144)


def test_scaled_frames_match_a_full_size_reference(tmp_path):
    """swscale's resize inside the RGB conversion shows the same picture as converting at full size and
    resizing with PIL (mean absolute difference of a few levels at most)."""
    from PIL import Image

    clip = fx.make_clip(tmp_path / "hd.mp4", seconds=2.0, width=1280, height=720, fps=10, gop=10)
    got = sample_frames(clip, SamplingConfig(num_frames=3, decoder="pyav", timeout_s=None))
    with av.open(str(clip)) as c:
        s = c.streams.video[0]
        ref = {round(float(f.pts * s.time_base), 6): f.to_image() for f in c.decode(s)}
    origin = min(ref)
    for f in got:
        full = ref[round(f.timestamp_s + origin, 6)]
        want = full.resize(f.image.size, Image.Resampling.BICUBIC, reducing_gap=3.0)
        assert f.image.size == (512, 288)
        diff = np.abs(np.asarray(f.image, dtype=float) - np.asarray(want, dtype=float)).mean()
        assert diff < 4.0, diff
