"""The decoder worker is long-lived: reused across episodes, replaced after a kill, a timeout or a crash."""

from __future__ import annotations

import os
import signal
import sys

import pytest

from anime_pipeline.media import sampling
from anime_pipeline.media.errors import MediaError
from anime_pipeline.media.sampling import SamplingConfig, close_workers, sample_frames

CFG = SamplingConfig(num_frames=3, timeout_s=60)


def _idle_pids() -> list[int]:
    return [w.proc.pid for w in sampling._POOL._idle]


def test_one_worker_serves_episode_after_episode(normal_clip, short_clip):
    close_workers()
    first = sample_frames(normal_clip, CFG)
    (pid,) = _idle_pids()
    for clip in (short_clip, normal_clip, short_clip):
        sample_frames(clip, CFG)
        assert _idle_pids() == [pid]  # no new interpreter per episode
    again = sample_frames(normal_clip, CFG)
    assert [f.timestamp_s for f in again] == [f.timestamp_s for f in first]
    assert all(a.image.tobytes() == b.image.tobytes() for a, b in zip(first, again))
    close_workers()
    assert _idle_pids() == []


def test_a_killed_idle_worker_is_replaced(normal_clip):
    close_workers()
    sample_frames(normal_clip, CFG)
    (pid,) = _idle_pids()
    os.kill(pid, signal.SIGKILL)
    frames = sample_frames(normal_clip, CFG)
    assert len(frames) == 3 and _idle_pids() and _idle_pids() != [pid]
    close_workers()


def test_after_a_timeout_the_next_episode_gets_a_working_worker(normal_clip, monkeypatch):
    close_workers()
    with monkeypatch.context() as m:
        m.setattr(sampling, "_worker_argv", lambda: [sys.executable, "-c", "import time; time.sleep(120)"])
        with pytest.raises(MediaError, match="did not finish within 1 s"):
            sample_frames(normal_clip, SamplingConfig(num_frames=2, timeout_s=1))
    assert _idle_pids() == []  # the hung worker is gone, never pooled
    assert len(sample_frames(normal_clip, CFG)) == 3
    close_workers()


def test_a_decoder_error_keeps_the_worker(normal_clip, text_mp4):
    from anime_pipeline.media.probe import VideoProbe

    close_workers()
    sample_frames(normal_clip, CFG)
    (pid,) = _idle_pids()
    fake = VideoProbe(
        path=text_mp4,
        codec="h264",
        width=160,
        height=120,
        fps=10.0,
        duration_s=4.0,
        size_bytes=text_mp4.stat().st_size,
        sha256="",
        has_audio=False,
        variable_frame_rate=False,
        container="mov,mp4,m4a,3gp,3g2,mj2",
    )
    with pytest.raises(MediaError, match="could not decode frames"):
        sample_frames(text_mp4, CFG, fake)  # a reported error, not a crash: the same worker goes on
    assert _idle_pids() == [pid]
    assert len(sample_frames(normal_clip, CFG)) == 3
    close_workers()


def test_jpeg_from_the_worker_is_what_the_shard_stores(normal_clip):
    got = sample_frames(normal_clip, CFG, jpeg_quality=90)
    assert all(f.image is None and f.jpeg[:2] == b"\xff\xd8" and f.size == (160, 120) for f in got)
    rgb = sample_frames(normal_clip, CFG)
    for a, b in zip(got, rgb):
        assert a.rgb().size == b.image.size and sampling.encode_jpeg(b.image, 90) == a.jpeg
    close_workers()
