from __future__ import annotations

import hashlib
import json

import ffmpeg
import pytest

from anime_pipeline.media.errors import MediaError
from anime_pipeline.media.probe import VideoProbe, probe_video


def test_media_error_is_value_error():
    assert issubclass(MediaError, ValueError)


def test_probe_normal_clip(normal_clip):
    p = probe_video(normal_clip)
    assert isinstance(p, VideoProbe)
    assert p.path == normal_clip.resolve()
    assert (p.codec, p.width, p.height) == ("h264", 160, 120)
    assert p.fps == pytest.approx(10.0)
    assert p.duration_s == pytest.approx(4.0, abs=0.05)
    assert p.size_bytes == normal_clip.stat().st_size
    assert p.sha256 == hashlib.sha256(normal_clip.read_bytes()).hexdigest()
    assert p.has_audio is True
    assert p.variable_frame_rate is False
    meta = p.as_metadata()
    json.dumps(meta)  # plain values only
    assert meta["path"] == str(normal_clip.resolve()) and meta["codec"] == "h264"


def test_probe_is_frozen(normal_clip):
    p = probe_video(normal_clip)
    with pytest.raises(Exception):
        p.width = 1  # type: ignore[misc]


def test_probe_4k_tiny_duration(clip_4k):
    p = probe_video(clip_4k)
    assert (p.width, p.height) == (3840, 2160)
    assert 0 < p.duration_s <= 0.6
    assert p.has_audio is False


def test_probe_detects_vfr(vfr_clip, normal_clip):
    assert probe_video(vfr_clip).variable_frame_rate is True
    assert probe_video(normal_clip).variable_frame_rate is False


def test_truncated_file_probes(truncated_clip):
    # Documented: the index is intact, so probing succeeds; sampling rejects it (test_media_sampling).
    p = probe_video(truncated_clip)
    assert p.duration_s == pytest.approx(6.0, abs=0.05)


@pytest.mark.parametrize(
    "fixture, phrase",
    [
        ("zero_length", "empty (0 bytes)"),
        ("text_mp4", "not a readable media file"),
        ("audio_only", "no video stream"),
        ("hls_mp4", "not a readable media file"),
    ],
)
def test_bad_inputs_raise_clear_media_error(request, fixture, phrase):
    path = request.getfixturevalue(fixture)
    with pytest.raises(MediaError) as exc:
        probe_video(path)
    assert phrase in str(exc.value)
    assert path.name in str(exc.value)


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(MediaError, match=r"nope\.mp4: file does not exist"):
        probe_video(missing)


def test_directory_is_not_a_file(tmp_path):
    d = tmp_path / "dir.mp4"
    d.mkdir()
    with pytest.raises(MediaError, match="not a regular file"):
        probe_video(d)


def test_hls_playlist_is_refused_by_container_whitelist(hls_mp4):
    with pytest.raises(MediaError, match="container format not allowed"):
        probe_video(hls_mp4)


@pytest.mark.parametrize("duration", ["0.000000", "-1", "N/A", None])
def test_non_positive_or_unknown_duration(monkeypatch, normal_clip, duration):
    real = ffmpeg.probe

    def fake(path, **kw):
        info = real(path, **kw)
        for s in info.get("streams", []):
            s.pop("duration", None)
        if duration is None:
            info["format"].pop("duration", None)
        else:
            info["format"]["duration"] = duration
        return info

    monkeypatch.setattr(ffmpeg, "probe", fake)
    with pytest.raises(MediaError, match=r"normal.mp4: unknown or non-positive duration"):
        probe_video(normal_clip)


def test_option_like_file_name_is_read_as_a_file(tmp_path, normal_clip, monkeypatch):
    odd = tmp_path / "-i.mp4"
    odd.write_bytes(normal_clip.read_bytes())
    monkeypatch.chdir(tmp_path)
    assert probe_video("-i.mp4").width == 160
