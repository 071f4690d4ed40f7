"""Media faults: broken, hostile and hanging inputs through probe → sample → shard, and episode acquisition.

Each ends in a `MediaError` that names the file, within the per-episode time limit, and leaves no shard,
no temp file and no `ep01.*` behind.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

import pytest

from anime_pipeline.media import sampling
from anime_pipeline.media.errors import MediaError
from anime_pipeline.media.probe import probe_video
from anime_pipeline.media.sampling import SamplingConfig, sample_frames
from anime_pipeline.media.shards import extract_frame_shard, read_frame_shard
from anime_pipeline.media.sources import acquire_episode
from anime_pipeline_tests.faults.helpers import wait_for

pytestmark = pytest.mark.timeout(60)

CFG = SamplingConfig(num_frames=4, timeout_s=20)


def _special(kind: str, tmp_path: Path) -> Path:
    if kind == "FIFO":
        p = tmp_path / "fifo.mp4"
        os.mkfifo(p)
    elif kind == "directory":
        p = tmp_path / "dir.mp4"
        p.mkdir()
    elif kind == "symlink to /dev/zero":
        p = tmp_path / "zero.mp4"
        p.symlink_to("/dev/zero")
    elif kind == "missing":
        p = tmp_path / "missing.mp4"
    else:
        raise ValueError(kind)
    return p


BAD = [
    "zero-length",
    "truncated",
    "audio-only",
    "text named .mp4",
    "HLS playlist named .mp4",
    "FIFO",
    "directory",
    "symlink to /dev/zero",
    "missing",
]


def _bad_path(kind: str, bad_media: dict[str, Path], tmp_path: Path) -> Path:
    return bad_media[kind] if kind in bad_media else _special(kind, tmp_path)


@pytest.mark.parametrize("kind", BAD)
def test_bad_episode_file_is_a_clear_media_error_and_no_shard(fault, bad_media, tmp_path, kind):
    fault.record(
        f"episode file: {kind}",
        "probe/sample raise MediaError naming the file within the time limit; no shard, no temp file",
    )
    video = _bad_path(kind, bad_media, tmp_path)
    dest = tmp_path / "frames" / "mal_id=7" / "part-0.parquet"
    start = time.monotonic()
    with pytest.raises(MediaError) as info:
        extract_frame_shard(video, mal_id=7, dest=dest, cfg=CFG)
    elapsed = time.monotonic() - start
    named = {video.name, os.path.basename(os.path.realpath(video))}  # the path or what it resolves to
    assert any(n in str(info.value) for n in named), str(info.value)
    assert elapsed < CFG.timeout_s, elapsed
    leftovers = list(dest.parent.iterdir()) if dest.parent.exists() else []
    assert leftovers == []
    fault.titles_lost = 0  # the title fails loudly (error.json + failed partition), others unaffected
    message = str(info.value).replace(str(video.parent) + "/", "").split(" (decord:")[0]
    fault.note = f"{message[:100]} ({elapsed:.2f} s)"


@pytest.mark.parametrize(
    "kind", ["zero-length", "audio-only", "text named .mp4", "HLS playlist named .mp4", "truncated"]
)
def test_bad_local_episode_is_not_installed(fault, bad_media, tmp_path, kind):
    fault.record(
        f"local source: {kind} file handed over as <mal_id>.mp4",
        "probe accepts it (index intact) and installs it; sampling then fails with MediaError naming "
        "ep01.mp4; no staging folder left"
        if kind == "truncated"
        else "acquisition fails with MediaError; no ep01.*, no staging folder left",
    )
    video_dir = tmp_path / "videos"
    video_dir.mkdir()
    src = bad_media[kind]
    (video_dir / "7.mp4").symlink_to(src)
    dest = tmp_path / "episodes" / "7"
    if kind == "truncated":  # the index is intact: probing accepts it; sampling rejects it later (above)
        ep = acquire_episode("local", 7, dest, video_dir=video_dir)
        assert ep.path.name == "ep01.mp4"
        with pytest.raises(MediaError, match=r"ep01\.mp4"):
            extract_frame_shard(ep.path, mal_id=7, dest=tmp_path / "frames" / "part-0.parquet", cfg=CFG)
    else:
        with pytest.raises(MediaError, match=r"7\.mp4"):
            acquire_episode("local", 7, dest, video_dir=video_dir)
        assert sorted(p.name for p in dest.iterdir()) == []
    assert not list(dest.glob(".acquire-*"))
    fault.titles_lost = 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


HANG = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
open(sys.argv[1], "w").write(f"{os.getpid()} {child.pid}")
time.sleep(300)
"""


def test_hanging_decoder_is_killed_at_the_time_limit(fault, clip, tmp_path, monkeypatch):
    fault.record(
        "decoder hangs (worker and its child process sleep forever)",
        "MediaError 'did not finish within 2 s' at the limit; worker and its children killed",
    )
    pids = tmp_path / "pids"
    monkeypatch.setattr(sampling, "_worker_argv", lambda: [sys.executable, "-c", HANG, str(pids)])
    start = time.monotonic()
    with pytest.raises(MediaError, match=r"clip.mp4: decoding did not finish within 2 s"):
        sample_frames(clip, SamplingConfig(num_frames=2, timeout_s=2))
    elapsed = time.monotonic() - start
    assert 2.0 <= elapsed < 5.0, elapsed
    worker, child = map(int, pids.read_text().split())
    wait_for(
        lambda: not _pid_alive(worker) and not _pid_alive(child), 5, what="hung decoder processes to die"
    )
    fault.titles_lost = 0
    fault.note = f"{elapsed:.2f} s"


def test_path_swapped_for_a_fifo_after_probe_hangs_then_times_out(fault, clip, tmp_path, monkeypatch):
    fault.record(
        "file replaced by a FIFO between probe and decode (the real decoder blocks opening it)",
        "the per-episode time limit stops the real decoder worker; MediaError within the limit",
    )
    fifo = tmp_path / "swapped.mp4"
    os.mkfifo(fifo)
    probe = probe_video(clip)
    monkeypatch.setattr(sampling, "check_regular_file", lambda p: Path(p))  # the check ran before the swap
    start = time.monotonic()
    with pytest.raises(MediaError, match=r"swapped.mp4: decoding did not finish within 2 s"):
        sample_frames(fifo, SamplingConfig(num_frames=2, timeout_s=2), probe)
    assert time.monotonic() - start < 5.0
    fault.titles_lost = 0


@pytest.mark.parametrize("how", ["SIGSEGV", "garbage on stdout", "exit 0 without a result"])
def test_crashing_decoder_is_a_media_error(fault, clip, monkeypatch, how):
    fault.record(f"decoder process crashes ({how})", "MediaError naming the file; the caller survives")
    script = {
        "SIGSEGV": f"import os, signal; os.kill(os.getpid(), {int(signal.SIGSEGV)})",
        # both read one framed request (8-byte length + pickle) as the real worker does
        "garbage on stdout": "import sys; n = int.from_bytes(sys.stdin.buffer.read(8), 'big'); "
        "sys.stdin.buffer.read(n); sys.stdout.buffer.write(b'\\x80\\x04garbage')",
        "exit 0 without a result": "import sys; n = int.from_bytes(sys.stdin.buffer.read(8), 'big'); "
        "sys.stdin.buffer.read(n)",
    }[how]
    monkeypatch.setattr(sampling, "_worker_argv", lambda: [sys.executable, "-c", script])
    with pytest.raises(MediaError, match=r"clip.mp4: the decoder process died"):
        sample_frames(clip, SamplingConfig(num_frames=2, timeout_s=20))
    fault.titles_lost = 0


def test_good_clip_after_bad_ones_still_works(fault, clip, bad_media, tmp_path):
    fault.record(
        "a good episode processed right after every broken one, same frames dir",
        "its shard is complete and readable (failures leave no state behind)",
    )
    frames = tmp_path / "frames"
    for i, video in enumerate(bad_media.values(), start=1):
        with pytest.raises(MediaError):
            extract_frame_shard(video, mal_id=i, dest=frames / f"mal_id={i}" / "part-0.parquet", cfg=CFG)
    info = extract_frame_shard(clip, mal_id=99, dest=frames / "mal_id=99" / "part-0.parquet", cfg=CFG)
    df = read_frame_shard(info.path)
    assert df.height == 4 and sorted(p.name for p in frames.rglob("*") if p.is_file()) == ["part-0.parquet"]
    fault.titles_lost = 0 if df.height == 4 else 1
