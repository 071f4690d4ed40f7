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


# ------------------------------------------------------------------ exact mode across worker processes
def test_decode_split():
    from anime_pipeline.media.sampling import decode_split

    # exact mode: a process per core (at most 4), the cores shared out as threads
    assert decode_split("exact", 64, cores=2) == (2, 1)
    assert decode_split("exact", 64, cores=16) == (4, 4)
    assert decode_split("exact", 64, workers=3, cores=2) == (3, 1)
    assert decode_split("exact", 64, workers=1, cores=8) == (1, 0)  # one process, FFmpeg's threads
    # never fewer than 4 samples per process
    assert decode_split("exact", 7, cores=8) == (1, 0)
    assert decode_split("exact", 12, cores=8) == (3, 2)
    # keyframe mode decodes one frame per sample: one process
    assert decode_split("keyframe", 64, workers=4, cores=8) == (1, 0)


def test_split_and_merge_keep_order_and_drop_the_shared_frame():
    from anime_pipeline.media.sampling import merge_packed, split_targets

    ts = [0.5, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5]
    runs = split_targets(ts, 3)
    assert [len(r) for r in runs] == [2, 2, 3] and [t for r in runs for t in r] == ts
    # two runs ending on the same frame (samples denser than frames): kept once, order kept
    parts = [[(0.4, (2, 2), "jpeg", b"a"), (1.2, (2, 2), "jpeg", b"b")], [(1.2, (2, 2), "jpeg", b"b")], []]
    assert [p[0] for p in merge_packed(parts)] == [0.4, 1.2]


@pytest.mark.parametrize("container", ["mp4", "ts"])
def test_exact_mode_in_several_workers_gives_the_frames_of_one(tmp_path, container):
    from anime_pipeline_tests.fixtures import media as fx

    close_workers()
    clip = fx.make_clip(tmp_path / "gop30.mp4", seconds=12.0, gop=30)  # B-frames, keyframe every 3 s
    if container == "ts":
        fx.ffmpeg("-i", str(clip), "-c", "copy", str(tmp_path / "gop30.ts"))
        clip = tmp_path / "gop30.ts"
    one = sample_frames(clip, SamplingConfig(num_frames=30, timeout_s=60, workers=1, decoder="pyav"))
    assert len(_idle_pids()) == 1
    close_workers()
    three = sample_frames(clip, SamplingConfig(num_frames=30, timeout_s=60, workers=3, decoder="pyav"))
    served = [w for w in sampling._POOL._idle if w.jobs == 1]
    assert len(served) == 3, "each of the three processes decoded one run of the samples"
    assert [f.frame_index for f in three] == list(range(len(one)))
    assert [f.timestamp_s for f in three] == [f.timestamp_s for f in one]
    assert all(a.image.tobytes() == b.image.tobytes() for a, b in zip(one, three))
    pids = sorted(_idle_pids())
    sample_frames(clip, SamplingConfig(num_frames=30, timeout_s=60, workers=3, decoder="pyav"))
    assert sorted(_idle_pids()) == pids  # the next episode reuses the same three processes
    close_workers()


def test_a_failing_run_fails_the_episode_with_a_media_error(normal_clip, monkeypatch):
    close_workers()
    calls = []
    real = sampling.run_worker

    def flaky(job, **kw):
        calls.append(job["targets"])
        if len(calls) == 2:
            raise MediaError(f"{normal_clip}: decoder failed on run 2")
        return real(job, **kw)

    monkeypatch.setattr(sampling, "run_worker", flaky)
    with pytest.raises(MediaError, match="run 2"):
        sample_frames(normal_clip, SamplingConfig(num_frames=16, timeout_s=60, workers=2))
    assert len(calls) == 2 and calls[0][-1] < calls[1][0]  # two contiguous runs, in order
    close_workers()


def test_when_one_run_fails_the_others_are_stopped_not_left_to_the_time_limit(normal_clip, monkeypatch):
    import threading
    import time

    close_workers()
    hang = [sys.executable, "-c", "import time; time.sleep(300)"]
    hung_workers: list = []
    hung_taken = threading.Event()
    real = sampling.run_worker

    def patched(job, **kw):
        if job["targets"][0] == min(job_starts):  # the first run: a decoder that never answers
            took = kw["on_take"]

            def on_take(w):
                took(w)
                hung_workers.append(w)
                hung_taken.set()

            return real(job, **{**kw, "argv": hang, "on_take": on_take})
        assert hung_taken.wait(30), "the first run never took its worker"
        raise MediaError(f"{normal_clip}: the second run failed")

    job_starts: list[float] = []
    real_split = sampling.split_targets

    def split(targets, k):
        runs = real_split(targets, k)
        job_starts.extend(r[0] for r in runs)
        return runs

    monkeypatch.setattr(sampling, "run_worker", patched)
    monkeypatch.setattr(sampling, "split_targets", split)
    t0 = time.monotonic()
    with pytest.raises(MediaError, match="the second run failed"):
        sample_frames(normal_clip, SamplingConfig(num_frames=16, timeout_s=240, workers=2))
    # the hung decoder was killed at once (SIGKILL), not left to run until the 240 s limit
    (w,) = hung_workers
    assert w.proc.returncode == -signal.SIGKILL
    assert time.monotonic() - t0 < 120
    close_workers()
