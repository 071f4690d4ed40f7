from __future__ import annotations

import sys
import time
from itertools import pairwise

import av
import numpy as np
import pytest

from anime_pipeline.media import sampling
from anime_pipeline.media.errors import MediaError
from anime_pipeline.media.probe import probe_video
from anime_pipeline.media.sampling import SampledFrame, SamplingConfig, plan_timestamps, sample_frames


def cfg(**kw) -> SamplingConfig:
    kw.setdefault("timeout_s", None)  # in-process: fast unit tests
    return SamplingConfig(**kw)


def _increasing(xs):
    return all(b > a for a, b in pairwise(xs))


def _all_frames(path):
    """Reference: every frame by a full sequential decode, {start time: RGB array}."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        origin = float(s.start_time * s.time_base) if s.start_time is not None else 0.0
        return {
            round(float(f.pts * s.time_base) - origin, 6): f.to_ndarray(format="rgb24") for f in c.decode(s)
        }


def _keyframe_times(path):
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return sorted(float(p.pts * s.time_base) for p in c.demux(s) if p.pts is not None and p.is_keyframe)


# ------------------------------------------------------------------------------------ plan_timestamps
def test_plan_uniform():
    ts = plan_timestamps(100.0, cfg(num_frames=64))
    assert len(ts) == 64 and _increasing(ts)
    assert ts[0] > 1.0 and ts[-1] < 99.0
    gaps = np.diff(ts)
    assert np.allclose(gaps, gaps[0], atol=1e-5)


def test_plan_fps():
    ts = plan_timestamps(20.0, cfg(strategy="fps", fps=0.5, num_frames=100))
    assert len(ts) == 9 and _increasing(ts)
    assert np.allclose(np.diff(ts), 2.0)
    assert ts[0] >= 1.0 and ts[-1] <= 19.0
    # centred in [1, 19]
    assert ts[0] - 1.0 == pytest.approx(19.0 - ts[-1])


def test_plan_fps_is_capped_by_num_frames():
    ts = plan_timestamps(1440.0, cfg(strategy="fps", fps=1.0, num_frames=64))
    assert len(ts) == 64 and _increasing(ts)
    assert ts[0] < 3 and ts[-1] > 1437


def test_plan_short_clip_ignores_skip():
    # duration <= 2 * skip: the whole clip is sampled
    ts = plan_timestamps(1.5, cfg(num_frames=6, skip_s=1.0))
    assert len(ts) == 6 and _increasing(ts)
    assert 0 < ts[0] < 0.2 and 1.3 < ts[-1] < 1.5
    assert plan_timestamps(2.0, cfg(num_frames=2, skip_s=1.0)) == [0.5, 1.5]


def test_plan_fps_on_tiny_clip_gives_one_frame():
    assert plan_timestamps(0.5, cfg(strategy="fps", fps=0.5)) == [0.25]


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), None])
def test_plan_rejects_bad_duration(bad):
    with pytest.raises(ValueError):
        plan_timestamps(bad, cfg())


@pytest.mark.parametrize(
    "kw",
    [
        dict(strategy="random"),
        dict(mode="fast"),
        dict(decoder="opencv"),
        dict(num_frames=0),
        dict(fps=0),
        dict(skip_s=-1),
        dict(max_side=4),
        dict(timeout_s=0),
        dict(workers=-1),
        dict(workers=1.5),
        dict(workers=True),
    ],
)
def test_config_validation(kw):
    with pytest.raises(ValueError):
        SamplingConfig(**kw)


# --------------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("decoder", ["decord", "pyav"])
def test_exact_frames_are_the_frames_on_screen(normal_clip, decoder):
    ref = _all_frames(normal_clip)
    starts = sorted(ref)
    c = cfg(num_frames=8, decoder=decoder)
    targets = plan_timestamps(4.0, c)
    frames = sample_frames(normal_clip, c)
    assert [f.frame_index for f in frames] == list(range(8))
    assert all(
        isinstance(f, SampledFrame) and f.image.mode == "RGB" and f.image.size == (160, 120) for f in frames
    )
    for t, f in zip(targets, frames):
        on_screen = max(s for s in starts if s <= t + 1e-4)
        assert f.timestamp_s == pytest.approx(on_screen, abs=1e-3)
        diff = np.abs(np.asarray(f.image, dtype=float) - ref[round(on_screen, 6)].astype(float)).mean()
        assert diff < 1.0, f"{decoder} frame at {t} is not the frame on screen"


@pytest.mark.parametrize("mode", ["exact", "keyframe"])
def test_decord_and_pyav_agree(normal_clip, demo_episode, mode):
    for path in (normal_clip, demo_episode):
        a = sample_frames(path, cfg(num_frames=10, mode=mode, decoder="decord"))
        b = sample_frames(path, cfg(num_frames=10, mode=mode, decoder="pyav"))
        assert [f.timestamp_s for f in a] == pytest.approx([f.timestamp_s for f in b], abs=1e-3)
        for x, y in zip(a, b):
            assert np.abs(np.asarray(x.image, dtype=float) - np.asarray(y.image, dtype=float)).mean() < 1.0


def test_keyframe_mode_takes_nearest_keyframes(demo_episode):
    keys = _keyframe_times(demo_episode)  # every 2 s (gop 16 at 8 fps)
    c = cfg(num_frames=5, mode="keyframe", decoder="pyav")
    frames = sample_frames(demo_episode, c)
    targets = plan_timestamps(12.0, c)  # 2.0, 4.0, 6.0, 8.0, 10.0 → exactly the keyframes
    assert [f.timestamp_s for f in frames] == pytest.approx(
        [min(keys, key=lambda k: abs(k - t)) for t in targets]
    )
    assert all(f.timestamp_s in keys for f in frames)


def test_keyframe_mode_falls_back_to_exact_when_keyframes_are_sparse(short_clip):
    # keyframes at 0.0, 0.5, 1.0: more samples than keyframes; no frame is returned twice, none is lost
    frames = sample_frames(short_clip, cfg(num_frames=6, mode="keyframe"))
    ts = [f.timestamp_s for f in frames]
    assert _increasing(ts) and len(ts) == 6
    assert ts[0] >= 0.0 and ts[-1] <= 1.5


@pytest.fixture(scope="module")
def long_gop_clips(tmp_path_factory):
    """12 s at 10 fps with a keyframe every 3 s (GOP 30, B-frames): MP4 (full index), MKV, MPEG-TS (no index)."""
    from anime_pipeline_tests.fixtures import media as fx

    d = tmp_path_factory.mktemp("long_gop")
    mp4 = fx.make_clip(d / "gop30.mp4", seconds=12.0, gop=30)
    out = {"mp4": mp4}
    for ext in ("mkv", "ts"):
        fx.ffmpeg("-i", str(mp4), "-c", "copy", str(d / f"gop30.{ext}"))
        out[ext] = d / f"gop30.{ext}"
    return out


@pytest.mark.parametrize("container", ["mp4", "mkv", "ts"])
@pytest.mark.parametrize("decoder", ["pyav", "decord"])
@pytest.mark.parametrize("num_frames", [7, 24, 60])
def test_keyframe_mode_gives_every_planned_frame_when_samples_are_denser_than_keyframes(
    long_gop_clips, container, decoder, num_frames
):
    # regression: samples 0.17-1.4 s apart, keyframes 3 s apart; keyframe mode used to drop the samples after
    # a keyframe that lay past their target (44 of 64 frames on a 2-min clip)
    if decoder == "decord" and container == "ts":
        pytest.skip("decord is not used for MPEG-TS")
    path = long_gop_clips[container]
    probe = probe_video(path)
    ref = _all_frames(path)
    starts = sorted(ref)
    with av.open(str(path)) as cont:
        st = cont.streams.video[0]
        origin = float(st.start_time * st.time_base) if st.start_time is not None else 0.0
    keys = {round(k - origin, 6) for k in _keyframe_times(path)}
    assert len(keys) == 4  # 0, 3, 6, 9 s
    c = cfg(num_frames=num_frames, mode="keyframe", decoder=decoder)
    targets = plan_timestamps(probe.duration_s, c)
    frames = sample_frames(path, c, probe)
    ts = [f.timestamp_s for f in frames]
    assert len(frames) == len(targets) == num_frames
    assert [f.frame_index for f in frames] == list(range(num_frames))
    assert _increasing(ts)
    used_keys = 0
    for t, f in zip(targets, frames):
        on_screen = max(s for s in starts if s <= t + 1e-4)
        is_key = any(abs(f.timestamp_s - k) < 1e-3 for k in keys)
        # each sample is a keyframe near its target (within half a GOP) or the exact frame on screen
        assert (is_key and abs(f.timestamp_s - t) <= 1.5 + 1e-3) or f.timestamp_s == pytest.approx(
            on_screen, abs=1e-3
        )
        used_keys += is_key and f.timestamp_s != pytest.approx(on_screen, abs=1e-3)
        diff = np.abs(np.asarray(f.image, dtype=float) - ref[round(f.timestamp_s, 6)].astype(float)).mean()
        assert diff < 1.0, f"frame at {f.timestamp_s} does not show that frame"
    if num_frames == 7:  # sparse samples (1.4 s apart) still take keyframes where they fit
        assert used_keys >= 2


@pytest.mark.parametrize("container", ["mp4", "mkv", "ts"])
def test_exact_frames_on_a_long_gop_clip(long_gop_clips, container):
    # exact mode decodes on between samples or seeks (decided from the container's keyframe index);
    # either way each sample is the frame on screen
    path = long_gop_clips[container]
    ref = _all_frames(path)
    starts = sorted(ref)
    probe = probe_video(path)
    for n in (5, 17, 40):
        c = cfg(num_frames=n, decoder="pyav")
        targets = plan_timestamps(probe.duration_s, c)
        frames = sample_frames(path, c, probe)
        assert len(frames) == n
        for t, f in zip(targets, frames):
            on_screen = max(s for s in starts if s <= t + 1e-4)
            assert f.timestamp_s == pytest.approx(on_screen, abs=1e-3)
            diff = np.abs(np.asarray(f.image, dtype=float) - ref[round(on_screen, 6)].astype(float)).mean()
            assert diff < 1.0


def test_fps_strategy(normal_clip):
    frames = sample_frames(normal_clip, cfg(strategy="fps", fps=1.0))  # window [1, 3]: 2 samples
    assert [f.timestamp_s for f in frames] == pytest.approx([1.5, 2.5])


def test_short_clip_sampled_whole(short_clip):
    frames = sample_frames(short_clip, cfg(num_frames=4))
    ts = [f.timestamp_s for f in frames]
    assert len(ts) == 4 and _increasing(ts) and ts[0] < 0.3 and ts[-1] > 1.0


def test_4k_is_resized_keeping_aspect(clip_4k):
    frames = sample_frames(clip_4k, cfg(num_frames=4, max_side=512))
    assert len(frames) == 2  # only two frames exist in 0.5 s at 4 fps
    assert all(f.image.size == (512, 288) for f in frames)
    assert [f.timestamp_s for f in frames] == pytest.approx([0.0, 0.25])


def test_small_frames_are_not_upscaled(normal_clip):
    assert sample_frames(normal_clip, cfg(num_frames=1, max_side=1024))[0].image.size == (160, 120)


def test_vfr_uses_real_frame_times(vfr_clip):
    ref = sorted(_all_frames(vfr_clip))
    probe = probe_video(vfr_clip)
    assert sampling._backends("auto", "exact", probe.variable_frame_rate, probe.container) == ["pyav"]
    frames = sample_frames(vfr_clip, cfg(num_frames=8), probe)
    ts = [f.timestamp_s for f in frames]
    assert _increasing(ts) and all(any(abs(t - r) < 1e-3 for r in ref) for t in ts)
    assert all(0 <= t <= probe.duration_s for t in ts)


def test_auto_backends():
    # PyAV first for exact mode too: decord measured 1.4-2x slower on 10-min 720p clips (docs/BENCHMARKS.md)
    assert sampling._backends("auto", "exact", False, "mov,mp4,m4a,3gp,3g2,mj2") == ["pyav", "decord"]
    assert sampling._backends("auto", "keyframe", False, "mov,mp4,m4a,3gp,3g2,mj2") == ["pyav", "decord"]
    assert sampling._backends("auto", "keyframe", False, "matroska,webm") == ["pyav", "decord"]
    assert sampling._backends("auto", "exact", False, "mpegts") == ["pyav"]
    assert sampling._backends("auto", "exact", True, "mov,mp4,m4a,3gp,3g2,mj2") == ["pyav"]
    assert sampling._backends("decord", "exact", True, "mpegts") == ["decord"]


def test_decord_failure_falls_back_to_pyav(normal_clip, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("decord exploded")

    monkeypatch.setattr(sampling, "_decode_decord", broken)
    frames = sample_frames(normal_clip, cfg(num_frames=3))
    assert len(frames) == 3


@pytest.mark.parametrize("mode", ["exact", "keyframe"])
def test_truncated_file_is_a_media_error(truncated_clip, mode):
    with pytest.raises(MediaError) as exc:
        sample_frames(truncated_clip, SamplingConfig(num_frames=8, mode=mode, timeout_s=60))
    assert "truncated.mp4" in str(exc.value)


def test_sampling_bad_file_is_a_media_error(text_mp4):
    with pytest.raises(MediaError, match=r"text\.mp4"):
        sample_frames(text_mp4, cfg())


# ----------------------------------------------------------------------------------- worker process
def test_worker_process_gives_the_same_frames(normal_clip):
    inproc = sample_frames(normal_clip, cfg(num_frames=5))
    worker = sample_frames(normal_clip, SamplingConfig(num_frames=5, timeout_s=60))
    assert [f.timestamp_s for f in worker] == [f.timestamp_s for f in inproc]
    assert all(a.image.tobytes() == b.image.tobytes() for a, b in zip(inproc, worker))


def test_hanging_decoder_times_out(normal_clip, monkeypatch):
    monkeypatch.setattr(
        sampling, "_worker_argv", lambda: [sys.executable, "-c", "import time; time.sleep(120)"]
    )
    t0 = time.monotonic()
    with pytest.raises(MediaError, match=r"normal.mp4: decoding did not finish within 1 s"):
        sample_frames(normal_clip, SamplingConfig(num_frames=2, timeout_s=1))
    assert time.monotonic() - t0 < 10


def test_crashing_decoder_is_a_media_error(normal_clip, monkeypatch):
    monkeypatch.setattr(sampling, "_worker_argv", lambda: [sys.executable, "-c", "import os; os._exit(11)"])
    with pytest.raises(MediaError, match=r"decoder process died \(exit code 11\)"):
        sample_frames(normal_clip, SamplingConfig(num_frames=2, timeout_s=30))


def test_decoder_worker_gets_no_secrets():
    from anime_pipeline.media.sampling import worker_env

    env = worker_env(
        {
            "PATH": "/usr/bin",
            "MAL_CLIENT_ID": "s1",
            "AWS_SECRET_ACCESS_KEY": "s2",
            "AWS_ACCESS_KEY_ID": "s3",
            "HF_TOKEN": "s4",
            "PGPASSWORD": "s5",
            "HOME": "/root",
        }
    )
    assert env == {"PATH": "/usr/bin", "HOME": "/root"}
