from __future__ import annotations

import time

import av
import numpy as np
import pytest

from anime_pipeline.demo import PALETTE, demo_titles
from anime_pipeline.media import demo_video
from anime_pipeline.media.demo_video import render_demo_episode
from anime_pipeline.media.errors import MediaError
from anime_pipeline.media.probe import probe_video


def _frames(path):
    with av.open(str(path)) as c:
        return [(f.time, f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]


def _hex_rgb(spec: str) -> np.ndarray:
    v = int(spec, 16)
    return np.array([(v >> 16) & 255, (v >> 8) & 255, v & 255], dtype=float)


def _square_x(img: np.ndarray) -> float:
    _, xs = np.where((img > 225).all(axis=-1))
    assert len(xs), "white square not found"
    return float(xs.mean())


def test_demo_episode_probe(demo_episode):
    p = probe_video(demo_episode)
    assert (p.codec, p.width, p.height) == ("h264", 160, 120)
    assert p.fps == pytest.approx(8.0)
    assert p.duration_s == pytest.approx(12.0, abs=0.01)
    assert p.has_audio is False and p.variable_frame_rate is False


def test_demo_episode_shows_the_synopsis(demo_episode):
    title = demo_titles()[0]
    frames = _frames(demo_episode)
    assert len(frames) == 96
    for i, scene in enumerate(title.scenes):
        scene_frames = [img for t, img in frames if i * 6 <= t < (i + 1) * 6]
        first, last = scene_frames[1], scene_frames[-2]
        assert np.abs(first[2, 2].astype(float) - _hex_rgb(PALETTE[scene.colour])).max() < 24
        moved = _square_x(last) - _square_x(first)
        assert (moved > 40) if scene.direction == "right" else (moved < -40)


def test_demo_keyframes_every_gop(tmp_path):
    out = render_demo_episode(demo_titles()[1], tmp_path / "e.mp4", seconds_per_scene=2, fps=8, gop=4)
    with av.open(str(out)) as c:
        s = c.streams.video[0]
        keys = sorted(float(p.pts * s.time_base) for p in c.demux(s) if p.pts is not None and p.is_keyframe)
    assert keys == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5]


def test_demo_render_is_deterministic_fast_and_atomic(tmp_path):
    title = demo_titles()[2]
    t0 = time.monotonic()
    a = render_demo_episode(title, tmp_path / "a" / "ep01.mp4")
    elapsed = time.monotonic() - t0
    b = render_demo_episode(title, tmp_path / "b" / "ep01.mp4")
    assert a.read_bytes() == b.read_bytes()
    assert elapsed < 5  # ~0.1 s here; generous for slow CI
    assert sorted(p.name for p in a.parent.iterdir()) == ["ep01.mp4"]


def test_demo_render_failure_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(demo_video, "FFMPEG", "false")  # /bin/false: exits 1
    dest = tmp_path / "ep01.mp4"
    with pytest.raises(MediaError, match="ffmpeg failed"):
        render_demo_episode(demo_titles()[0], dest)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kw", [dict(width=161), dict(height=0), dict(fps=0), dict(gop=0), dict(seconds_per_scene=0)]
)
def test_demo_render_rejects_bad_arguments(tmp_path, kw):
    with pytest.raises(ValueError):
        render_demo_episode(demo_titles()[0], tmp_path / "x.mp4", **kw)
