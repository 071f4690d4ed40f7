"""Sample frames from a video by seeking (never decoding the whole file).

Timestamps
    `plan_timestamps` is pure. It samples the window [skip_s, duration - skip_s] (opening and closing
    credits are skipped); a clip with duration <= 2 * skip_s is too short for that window, so the skip is
    ignored and the whole clip [0, duration] is sampled. Each timestamp is the centre of its slot, so all
    are strictly inside the window:
      * "uniform": `num_frames` slots of equal length;
      * "fps": one sample every 1/fps seconds (a grid centred in the window), at most `num_frames`
        (an over-long grid is thinned evenly).

Which frame a timestamp gives
    * exact: the frame on screen at that time (the last frame whose start time is <= t). Decoding starts
      at the keyframe before t, so each sample costs up to one GOP of decoding. Between samples PyAV
      decodes on instead of seeking when a seek would land on a keyframe not after the current position
      (read from the container index, MP4/MOV; without an index: when the next target is within 2 s).
    * keyframe: the keyframe nearest to t (found by reading packets, not decoding; one frame is decoded),
      so each sample costs one decoded frame: the fast mode for long episodes; the drift is at most half a
      GOP. A keyframe is taken only when it lies after the previous sample's frame and before the frame on
      screen at the next target; otherwise (samples denser than keyframes, e.g. short clips, or the nearest
      keyframe already taken) the exact frame at t is used. So keyframe mode returns as many frames as
      exact mode, and where keyframes are sparser than samples it decodes about what exact mode decodes.
      The container index (MP4/MOV) tells which samples can take a keyframe without seeking at all.
      A keyframe outside the sampled window [skip_s, duration - skip_s] is never taken (openings start
      black): such a sample gets the exact frame at its target instead.
    A frame is never returned twice: where several timestamps map to the same frame (a clip with fewer
    frames than samples) only the first is kept, so fewer frames than planned may come back. The returned
    `timestamp_s` is the frame's own start time (relative to the stream start), strictly increasing and
    inside [0, duration]; `frame_index` is the sample's position (0, 1, 2, ...) in the episode's shard.

Decoders
    "decord" (`VideoReader.get_batch` at frame indices found from its timestamp table; keyframe mode via
    `get_key_indices`), "pyav" (seek + decode), or "auto": PyAV first in both modes (decord measured
    1.25-1.35x slower than PyAV exact on a 10-min 720p clip, and no faster on a 2-min one; see
    docs/BENCHMARKS.md), with decord as the fallback on constant-frame-rate MP4/MOV/MKV/WebM files; PyAV
    only for variable-frame-rate files and other containers (decord mis-seeks MPEG-TS by a GOP).

Time limit
    With `timeout_s` set (the default) decoding runs in a separate, long-lived Python process
    (`python -m anime_pipeline.media._worker`, framed pickles over its stdin/stdout), reused from episode
    to episode, so an episode pays neither an interpreter start nor the PyAV/PIL imports
    (`prestart_worker()` starts one while the caller probes). If it has not answered after `timeout_s`
    seconds it is killed with its process group and `MediaError` is raised; a decoder crash (segfault on a
    corrupt file) also ends as `MediaError` instead of taking the caller down; the next episode gets a
    fresh worker. A thread could not be stopped once stuck inside a C decoder, and a plain subprocess
    (unlike multiprocessing) does not re-import the caller's `__main__` and works from daemonic processes.
    `timeout_s=None` decodes in the calling process (no protection; used by fast unit tests).
    Exact mode splits the samples into contiguous runs decoded by several workers at once (one per core by
    default, `SamplingConfig.workers`; `decode_split`): each sample is a seek plus half a GOP of decoding,
    which FFmpeg's frame threads barely overlap, while separate processes do.

Output size
    Frames are stored at their display aspect: a non-square sample aspect ratio (anamorphic DVD rips,
    720x480 SAR 32:27) is applied, then the longest side is fitted to `max_side` (`display_size`). PyAV
    scales inside the pixel-format conversion (swscale, `frame.to_image(width=, height=)`), one pass with
    no full-size RGB copy; decord's frames are resized with PIL.
"""

from __future__ import annotations

import atexit
import bisect
import contextlib
import io
import math
import os
import pickle
import re
import selectors
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any, TypedDict

from PIL import Image

from .errors import MediaError
from .probe import ALLOWED_DEMUXERS, VideoProbe, check_regular_file, probe_video

STRATEGIES = ("uniform", "fps")
MODES = ("exact", "keyframe")
DECODERS = ("auto", "decord", "pyav")
_EPS = 1e-4  # seconds: timestamps closer than this are the same instant
_LINEAR_WINDOW_S = 2.0  # exact mode: decode on (instead of seeking) when the next target is this close
_BATCH_PIXELS = 24_000_000  # decord: frames per get_batch call so one batch stays under ~72 MB of RGB


@dataclass(frozen=True)
class SamplingConfig:
    strategy: str = "uniform"  # "uniform" | "fps"
    num_frames: int = 64  # uniform: frames; fps: the maximum
    fps: float = 0.5  # "fps" strategy: samples per second
    skip_s: float = 1.0  # skipped at both ends (ignored for clips <= 2 * skip_s)
    max_side: int = 512  # longest side of the returned images (never upscaled)
    mode: str = "exact"  # "exact" | "keyframe"
    decoder: str = "auto"  # "auto" | "decord" | "pyav"
    timeout_s: float | None = 600.0  # per episode; None: decode in-process without a limit
    workers: int = 0  # exact mode: decoder processes per episode (0: one per available core, at most 4)

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.decoder not in DECODERS:
            raise ValueError(f"decoder must be one of {DECODERS}, got {self.decoder!r}")
        if not isinstance(self.num_frames, int) or self.num_frames < 1:
            raise ValueError(f"num_frames must be a positive integer, got {self.num_frames!r}")
        if not (self.fps > 0 and math.isfinite(self.fps)):
            raise ValueError(f"fps must be positive, got {self.fps!r}")
        if not (self.skip_s >= 0 and math.isfinite(self.skip_s)):
            raise ValueError(f"skip_s must be >= 0, got {self.skip_s!r}")
        if not isinstance(self.max_side, int) or self.max_side < 16:
            raise ValueError(f"max_side must be an integer >= 16, got {self.max_side!r}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be positive or None, got {self.timeout_s!r}")
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 0:
            raise ValueError(f"workers must be an integer >= 0 (0: automatic), got {self.workers!r}")

    def as_metadata(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SampledFrame:
    frame_index: int  # position of the sample in the episode (0, 1, 2, ...)
    timestamp_s: float  # start time of the decoded frame, seconds from the stream start
    image: Image.Image | None = None  # RGB, longest side <= max_side; None when only `jpeg` was kept
    jpeg: bytes | None = (
        None  # the frame as JPEG, when the decoder encoded it (`sample_frames(jpeg_quality=)`)
    )
    jpeg_quality: int | None = None  # the quality `jpeg` was encoded at
    size: tuple[int, int] = (0, 0)  # (width, height); filled from the image when not given

    def __post_init__(self) -> None:
        if self.image is None and self.jpeg is None:
            raise ValueError("a sampled frame needs an image or its JPEG bytes")
        if self.size == (0, 0):
            size = self.image.size if self.image is not None else Image.open(io.BytesIO(self._jpeg())).size
            object.__setattr__(self, "size", tuple(size))

    def _jpeg(self) -> bytes:
        if self.jpeg is None:  # only reached when `image` is None too, which __post_init__ rejects
            raise ValueError("a sampled frame needs an image or its JPEG bytes")
        return self.jpeg

    def rgb(self) -> Image.Image:
        """The frame as an RGB image (decoded from `jpeg` when no image was kept)."""
        if self.image is not None:
            return self.image
        img = Image.open(io.BytesIO(self._jpeg()))
        img.load()
        return img.convert("RGB")


def encode_jpeg(image: Image.Image, quality: int = 90) -> bytes:
    """The image as JPEG bytes (RGB, PIL's encoder)."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def pack_frames(frames: list[tuple[float, Image.Image]], jpeg_quality: int | None) -> list[tuple]:
    """Decoded frames as plain tuples for the worker's reply: (ts, size, "jpeg", bytes) when a JPEG quality
    is given (a 512 px frame is ~30 KB instead of ~440 KB of RGB, and the shard stores exactly these
    bytes), else (ts, size, "rgb", bytes)."""
    if jpeg_quality is None:
        return [(ts, img.size, "rgb", img.tobytes()) for ts, img in frames]
    return [(ts, img.size, "jpeg", encode_jpeg(img, jpeg_quality)) for ts, img in frames]


def unpack_frames(packed: list[tuple], jpeg_quality: int | None) -> list[SampledFrame]:
    out = []
    for i, (ts, size, kind, data) in enumerate(packed):
        if kind == "jpeg":
            out.append(SampledFrame(i, ts, jpeg=data, jpeg_quality=jpeg_quality, size=tuple(size)))
        else:
            out.append(SampledFrame(i, ts, image=Image.frombytes("RGB", tuple(size), data)))
    return out


# --------------------------------------------------------------------------------------------- plan
def plan_window(duration_s: float, cfg: SamplingConfig) -> tuple[float, float]:
    """The sampled window [skip_s, duration - skip_s], or [0, duration] for a clip too short to skip.

    Every returned frame starts inside it: targets lie strictly inside, and keyframe mode takes a keyframe
    only when it lies inside too (else the exact frame at the target)."""
    if not (isinstance(duration_s, (int, float)) and math.isfinite(duration_s) and duration_s > 0):
        raise ValueError(f"duration must be a positive number of seconds, got {duration_s!r}")
    if duration_s <= 2 * cfg.skip_s:  # too short to skip anything: sample the whole clip
        return 0.0, float(duration_s)
    return float(cfg.skip_s), float(duration_s - cfg.skip_s)


def plan_timestamps(duration_s: float, cfg: SamplingConfig) -> list[float]:
    """Target timestamps (seconds, strictly increasing, inside (0, duration)); see the module docstring."""
    start, end = plan_window(duration_s, cfg)
    span = end - start
    if cfg.strategy == "uniform":
        n = cfg.num_frames
        ts = [start + (i + 0.5) * span / n for i in range(n)]
    else:
        step = 1.0 / cfg.fps
        n = max(1, int(span * cfg.fps + 1e-9))
        first = start + (span - (n - 1) * step) / 2
        ts = [first + i * step for i in range(n)]
        if n > cfg.num_frames:
            m = cfg.num_frames
            picks = [round(i * (n - 1) / (m - 1)) for i in range(m)] if m > 1 else [n // 2]
            ts = [ts[i] for i in picks]
    out: list[float] = []
    for t in ts:
        t = round(t, 6)
        if (not out or t > out[-1]) and 0 <= t <= duration_s:
            out.append(t)
    return out


# ------------------------------------------------------------------------------------------ helpers
def display_size(width: int, height: int, sar: float | None, max_side: int) -> tuple[int, int]:
    """Output size of a `width`x`height` frame with sample aspect ratio `sar`: its display size (width * sar by
    height, so anamorphic 720x480 SAR 32:27 shows at 853x480), then the longest side at most `max_side`.
    Not upscaled beyond the display size; `sar` None, 0 or non-finite means square pixels."""
    dw = float(width) * sar if sar and math.isfinite(sar) and sar > 0 else float(width)
    dh = float(height)
    scale = min(1.0, max_side / max(dw, dh))
    return max(1, round(dw * scale)), max(1, round(dh * scale))


def _pick_nearest(candidates: list[float], t: float) -> int:
    """Index of the candidate nearest to t (ties: the earlier one)."""
    best = 0
    for i, c in enumerate(candidates):
        if abs(c - t) < abs(candidates[best] - t) - 1e-9:
            best = i
    return best


# ------------------------------------------------------------------------------------------ decord
def _decode_decord(
    path: str,
    targets: list[float],
    mode: str,
    max_side: int,
    frame_pixels: int,
    window: tuple[float, float] | None = None,
    sar: float | None = None,
    threads: int = 0,
) -> list[tuple[float, Image.Image]]:
    import decord

    lo, hi = window or (-math.inf, math.inf)

    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=threads)
    n = len(vr)
    if n == 0:
        raise MediaError(f"{path}: decord found no frames")
    starts = [float(s) for s in vr.get_frame_timestamp(list(range(n)))[:, 0]]
    origin = starts[0] if starts[0] > 0 else 0.0
    starts = [s - origin for s in starts]

    def exact_index(t: float) -> int:
        return max(0, bisect.bisect_right(starts, t + _EPS) - 1)

    indices: list[int] = []
    if mode == "exact":
        for t in targets:
            i = exact_index(t)
            if not indices or i > indices[-1]:
                indices.append(i)
    else:
        keys = sorted(int(k) for k in vr.get_key_indices()) or [0]
        key_starts = [starts[k] for k in keys]
        for pos, t in enumerate(targets):
            j = bisect.bisect_right(key_starts, t + _EPS) - 1
            cands = [keys[k] for k in (j, j + 1) if 0 <= k < len(keys)]
            i = cands[_pick_nearest([starts[c] for c in cands], t)]
            nxt = exact_index(targets[pos + 1]) if pos + 1 < len(targets) else n
            if (indices and i <= indices[-1]) or i >= nxt or not lo - _EPS <= starts[i] <= hi + _EPS:
                i = exact_index(t)  # taken, the next sample's frame, or outside the window: the exact frame
            if not indices or i > indices[-1]:
                indices.append(i)
    out: list[tuple[float, Image.Image]] = []
    per_batch = max(1, _BATCH_PIXELS // max(1, frame_pixels))
    for k in range(0, len(indices), per_batch):
        chunk = indices[k : k + per_batch]
        arr = vr.get_batch(chunk).asnumpy()
        for i, frame in zip(chunk, arr):
            img = Image.fromarray(frame, "RGB")
            size = display_size(img.width, img.height, sar, max_side)
            if size != img.size:
                img = img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
            out.append((starts[i], img))
    return out


# -------------------------------------------------------------------------------------------- PyAV
class _PyAVReader:
    def __init__(self, path: str, threads: int = 0):
        import av

        self.path = path
        self.container = av.open(path, options={"format_whitelist": ALLOWED_DEMUXERS})
        streams = [s for s in self.container.streams.video if not _is_attached_pic(s)]
        if not streams:
            raise MediaError(f"{path}: no video stream")
        self.stream = s = streams[0]
        s.thread_type = "AUTO"
        if threads:  # 0: FFmpeg's choice (one per core)
            s.codec_context.thread_count = threads
        tb = s.time_base
        if tb is None:
            raise MediaError(f"{path}: the video stream has no time base (timestamps cannot be read)")
        self.tb = tb
        self.tbf = float(tb)
        self.origin = float(s.start_time * tb) if s.start_time is not None else 0.0
        rate = float(s.average_rate or s.guessed_rate or 0) or 1.0
        self.frame_s = 1.0 / rate  # nominal frame duration
        ratio = s.codec_context.sample_aspect_ratio or s.sample_aspect_ratio
        self.sar = float(ratio) if ratio else None  # sample aspect ratio (None: square pixels / unknown)
        self.max_gap = max(1.0, 4.0 / rate)  # a frame "on screen" at t must start this close before t
        self._index_keys: list[float] | None = None  # keyframe times from the container index (approximate)
        self.bracket: tuple[float, float] | None = (
            None  # consecutive keyframes seen by the last keyframe_near
        )
        self.gen: Iterator | None = None
        self.cur = None  # latest frame with time <= the current target
        self.look = None  # decoded frame after the current target, not yet consumed
        self.eof = False

    def close(self) -> None:
        self.container.close()

    def _time(self, frame) -> float:
        # every frame handed out here has a pts (frames without one are filtered out where decoded)
        if frame.pts is None:
            raise MediaError(f"{self.path}: a decoded frame has no timestamp")
        return float(frame.pts * self.tb) - self.origin

    def _seek(self, t: float, *, backward: bool = True) -> None:
        # t <= 0: aim a second before the stream start, or a timestamp-searching demuxer (MPEG-TS) lands on the
        # first packet with a later decode time, i.e. after the first keyframe
        offset = max(0, int(((t if t > 0 else -1.0) + self.origin) / self.tb))
        self.container.seek(offset, stream=self.stream, backward=backward, any_frame=False)

    def _frames_after_seek(self, t: float, *, backward: bool) -> Iterator:
        self._seek(t, backward=backward)
        self.eof = False
        return (f for f in self.container.decode(self.stream) if f.pts is not None)

    def _first(self, gen: Iterator):
        try:
            return next(gen)
        except StopIteration:
            return None

    def seek_before(self, t: float):
        """Seek so that decoding starts at a keyframe at or before t; return (generator, first frame)."""
        back = 0.0
        while True:
            pos = max(0.0, t - back)
            gen = self._frames_after_seek(pos, backward=True)
            first = self._first(gen)
            if first is None:
                if pos <= 0.0:
                    return gen, None
            elif self._time(first) <= t + _EPS or pos <= 0.0:
                return gen, first
            back = max(1.0, back * 2)

    def _packet_time(self, packet) -> float | None:
        # float arithmetic (not Fraction): called for every packet scanned; compared with _EPS tolerance only
        return None if packet.pts is None else packet.pts * self.tbf - self.origin

    def keyframe_from_index(self, t: float):
        """The keyframe nearest to t read straight from the container index (MP4/MOV): one seek to it, one
        packet read, one frame decoded, no packet scan. None (use `keyframe_near`) without a full index, when
        the two keyframes around t are too close to a tie for the index's decode times to decide, or when
        the seek does not land on that keyframe."""
        keys = self.index_keyframes()
        if not keys:
            return None
        unc = max(0.5, 8 * self.frame_s)
        j = bisect.bisect_right(keys, t + _EPS) - 1
        cands = [keys[k] for k in (j, j + 1) if 0 <= k < len(keys)]
        if len(cands) == 2 and abs(abs(cands[0] - t) - abs(cands[1] - t)) < 2 * unc:
            return None
        k = cands[_pick_nearest(cands, t)]
        self.gen, self.cur, self.look = None, None, None  # the demuxer is no longer positioned for `exact`
        # k is a decode time; presentation times are a few frames later with B-frames: aim a little past k so
        # the backward seek lands on k's keyframe, then insist on exactly that packet
        self._seek(k + min(unc, 0.25 * (keys[j + 1] - keys[j]) if 0 <= j < len(keys) - 1 else unc))
        for packet in self.container.demux(self.stream):
            if packet.dts is None:
                continue
            dt = packet.dts * self.tbf - self.origin
            if not packet.is_keyframe or packet.pts is None or abs(dt - k) > 1e-3:
                return None  # landed elsewhere: let the packet scan decide
            return self._decode_one(packet)
        return None

    def keyframe_near(self, t: float):
        """The keyframe nearest to t (ties: the earlier), decoding only that one frame.

        Seek to the keyframe at or before t, then read packets (no decoding) while the next keyframe could
        still be nearer than that one. Container-agnostic: also right where seeking is imprecise
        (MPEG-TS lands a little early or late; landing after t retries from earlier).
        """
        back = 0.0
        while True:
            pos = max(0.0, t - back)
            self._seek(pos)
            before = after = None
            before_t = after_t = 0.0
            for packet in self.container.demux(self.stream):
                pt = self._packet_time(packet)
                if pt is None:
                    continue
                if before is not None and pt > t + (t - before_t) + _EPS:
                    break  # any later keyframe is farther from t than `before`
                if not packet.is_keyframe:
                    continue
                if pt <= t + _EPS:
                    before, before_t = packet, pt
                else:
                    after, after_t = packet, pt
                    break
            if before is None and pos > 0.0:
                # no keyframe at or before t seen: the seek landed after t or mid-GOP (MPEG-TS seeks by
                # timestamp search, not to a keyframe): retry from earlier
                back = max(1.0, back * 2)
                continue
            break
        self.gen, self.cur, self.look = None, None, None  # the demuxer is no longer positioned for `exact`
        if (
            before is not None and after is not None
        ):  # consecutive keyframes: later targets between them need no seek
            self.bracket = (before_t, after_t)
        cands = [(p, pt) for p, pt in ((before, before_t), (after, after_t)) if p is not None]
        if not cands:
            return None
        packet = cands[_pick_nearest([pt for _, pt in cands], t)][0]
        return self._decode_one(packet)

    def index_keyframes(self) -> list[float]:
        """Keyframe times (relative seconds) from the container's index, free to read for MP4/MOV (the sample
        table is loaded at open); [] where the index is missing or partial (MPEG-TS, MKV before a seek).

        The times are decode timestamps, a few frames off the presentation times with B-frames: a hint for
        deciding which samples can be keyframes at all, never a returned timestamp.
        """
        if self._index_keys is None:
            self._index_keys = []
            try:
                entries = self.stream.index_entries
                n = len(entries)
                expected = self.stream.frames or 0
                if n >= 2 and expected and n >= 0.9 * expected:  # a full sample table, not a partial cue list
                    self._index_keys = sorted(
                        float(e.timestamp * self.tb) - self.origin for e in entries if e.is_keyframe
                    )
            except Exception:  # older PyAV without index_entries, or an unreadable index
                self._index_keys = []
        return self._index_keys

    def key_hint(self, t: float) -> tuple[float, float] | None:
        """(time of the keyframe nearest to t, its uncertainty in seconds), or None when not known yet."""
        b = self.bracket
        if b is not None and b[0] - _EPS <= t <= b[1] + _EPS:
            return (b[0] if abs(b[0] - t) <= abs(b[1] - t) + 1e-9 else b[1]), 0.0
        keys = self.index_keyframes()
        if keys:
            j = bisect.bisect_right(keys, t + _EPS) - 1
            cands = [keys[k] for k in (j, j + 1) if 0 <= k < len(keys)]
            return cands[_pick_nearest(cands, t)], max(0.5, 8 * self.frame_s)
        return None

    def _decode_one(self, packet):
        """Decode one keyframe packet on its own (flush, send, drain, flush)."""
        cc = self.stream.codec_context
        cc.flush_buffers()
        try:
            frames = [f for f in cc.decode(packet) if f.pts is not None]
            frames += [f for f in cc.decode(None) if f.pts is not None]
        finally:
            cc.flush_buffers()
        return frames[0] if frames else None

    def _decode_on(self, pos: float, t: float) -> bool:
        """Whether decoding on from `pos` reaches t more cheaply than seeking: with the container index, when
        the keyframe a seek would land on is not after `pos`; without one, when t is within
        `_LINEAR_WINDOW_S` of `pos`."""
        keys = self.index_keyframes()
        if not keys:
            return t - pos <= _LINEAR_WINDOW_S
        j = bisect.bisect_right(keys, t + _EPS) - 1
        return j < 0 or keys[j] <= pos + _EPS

    def exact(self, t: float, *, allow_linear: bool = True):
        """The frame on screen at t (relative seconds)."""
        pos = (
            self._time(self.look)
            if self.look is not None
            else (self._time(self.cur) if self.cur is not None else None)
        )
        linear = (
            allow_linear
            and self.gen is not None
            and self.cur is not None
            and self._time(self.cur) <= t + _EPS
            and pos is not None
            and self._decode_on(pos, t)
        )
        gen = self.gen if linear else None
        if gen is None:
            gen, first = self.seek_before(t)
            self.gen = gen
            if first is None:
                raise MediaError(f"{self.path}: no decodable frame at {t:.3f} s (file truncated or corrupt?)")
            self.cur, self.look = first, None
        if self.look is not None:
            if self._time(self.look) > t + _EPS:
                return self.cur
            self.cur, self.look = self.look, None
        if self._time(self.cur) > t + _EPS:  # target before the first frame of the stream
            return self.cur
        for f in gen:
            if self._time(f) <= t + _EPS:
                self.cur = f
            else:
                self.look = f
                return self.cur
        self.eof = True
        if t - self._time(self.cur) > self.max_gap:
            raise MediaError(
                f"{self.path}: no decodable frame at {t:.3f} s, the last one is at {self._time(self.cur):.3f} s "
                f"(file truncated or corrupt?)"
            )
        return self.cur


# swscale's scaler for the resize: AREA (box averaging) is an anti-aliased downscale and the cheapest of
# swscale's filters after FAST_BILINEAR (CPU time per 720p -> 512 px frame, docs/BENCHMARKS.md)
_SWS_INTERPOLATION = "AREA"


def _to_image(frame, sar: float | None, max_side: int) -> Image.Image:
    """The frame as an RGB image at its display size fitted to `max_side`, scaled by swscale inside the
    pixel-format conversion (one pass; no full-size RGB copy, no PIL resize)."""
    w, h = display_size(frame.width, frame.height, sar, max_side)
    if (w, h) == (frame.width, frame.height):
        return frame.to_image()
    # scale in the decoder's pixel format (a 4:2:0 frame scales 1.5 bytes per pixel), then convert the small
    # frame to RGB: measured ~2x cheaper than scaling inside the RGB conversion (docs/BENCHMARKS.md)
    return frame.reformat(width=w, height=h, interpolation=_SWS_INTERPOLATION).to_image()


def _is_attached_pic(stream) -> bool:
    try:
        import av

        return bool(stream.disposition & av.stream.Disposition.attached_pic)
    except Exception:
        return False


def _decode_pyav(
    path: str,
    targets: list[float],
    mode: str,
    max_side: int,
    frame_pixels: int = 0,
    window: tuple[float, float] | None = None,
    sar: float | None = None,
    threads: int = 0,
) -> list[tuple[float, Image.Image]]:
    reader = _PyAVReader(path, threads)
    lo, hi = window or (-math.inf, math.inf)
    if sar is None:
        sar = reader.sar
    try:
        out: list[tuple[float, Image.Image]] = []
        last = -math.inf
        taken_hint = None  # key_hint time of the keyframe taken last (the index's times are approximate)
        for pos, t in enumerate(targets):
            if mode == "exact":
                frame = reader.exact(t)
            else:
                nxt = targets[pos + 1] if pos + 1 < len(targets) else math.inf

                def fits(k: float, slack: float = 0.0, last: float = last, nxt: float = nxt) -> bool:
                    # after the previous sample's frame, before the frame on screen at the next target, and
                    # inside the sampled window (skip_s honoured at both ends)
                    return (
                        k > last + _EPS - slack
                        and k + reader.frame_s <= nxt + _EPS + slack
                        and lo - _EPS - slack <= k <= hi + _EPS + slack
                    )

                hint = reader.key_hint(t)
                frame = None
                if hint is None or (hint[0] != taken_hint and fits(*hint)):
                    frame = reader.keyframe_from_index(t) or reader.keyframe_near(t)
                    if frame is None:
                        raise MediaError(
                            f"{path}: no decodable keyframe near {t:.3f} s (file truncated or corrupt?)"
                        )
                    if fits(reader._time(frame)):
                        taken_hint = hint[0] if hint is not None else None
                    else:
                        frame = None
                if frame is None:  # keyframes sparser than the samples here: the exact frame at t
                    frame = reader.exact(t)
            ts = reader._time(frame)
            if ts > last + _EPS:
                out.append((ts, _to_image(frame, sar, max_side)))
                last = ts
        return out
    finally:
        reader.close()


# ------------------------------------------------------------------------------------------ driver
def _decord_safe(container: str) -> bool:
    """decord seeks by its own frame index; trusted only for containers with a real index (MP4/MOV, MKV/WebM).

    It returns frames one GOP off in MPEG-TS (checked against a full decode), so "auto" never uses it there.
    """
    names = set(container.split(","))
    return bool(names & {"mov", "mp4", "matroska", "webm"})


def _backends(decoder: str, mode: str, vfr: bool, container: str = "") -> list[str]:
    if decoder != "auto":
        return [decoder]
    if vfr or not _decord_safe(container):
        return ["pyav"]
    return ["pyav", "decord"]  # PyAV first in both modes: decord measured slower (module docstring)


class DecodeJob(TypedDict):
    """The arguments of one `decode_targets` call, as `sample_frames` builds them (and pickles them to the
    worker, which adds "jpeg_quality")."""

    path: str
    targets: list[float]
    mode: str
    decoder: str
    max_side: int
    vfr: bool
    duration_s: float
    frame_pixels: int
    container: str
    window: tuple[float, float] | None
    sar: float | None
    threads: int


def decode_targets(
    path: str,
    targets: list[float],
    *,
    mode: str,
    decoder: str,
    max_side: int,
    vfr: bool,
    duration_s: float,
    frame_pixels: int = 1920 * 1080,
    container: str = "",
    window: tuple[float, float] | None = None,
    sar: float | None = None,
    threads: int = 0,
) -> list[tuple[float, Image.Image]]:
    """Decode the frames for `targets` (in this process); MediaError when no backend can.

    `window`: (start, end) seconds a keyframe must lie in (`plan_window`); `sar`: the sample aspect ratio
    from the probe (None: read from the stream by PyAV, square pixels for decord); `threads`: decoder
    threads (0: one per core)."""
    errors = []
    for name in _backends(decoder, mode, vfr, container):
        fn = _decode_decord if name == "decord" else _decode_pyav
        try:
            frames = fn(path, targets, mode, max_side, frame_pixels, window, sar, threads)
        except Exception as e:  # any decoder failure: try the next backend
            msg = str(e).replace(f"{path}: ", "").strip()[:300]
            errors.append(
                f"{name}: {msg}" if isinstance(e, MediaError) else f"{name}: {type(e).__name__}: {msg}"
            )
            continue
        if not frames:
            errors.append(f"{name}: no frames decoded")
            continue
        return _clean(frames, duration_s)
    raise MediaError(f"{path}: could not decode frames ({'; '.join(errors)})", path=path)


def _clean(frames: list[tuple[float, Image.Image]], duration_s: float) -> list[tuple[float, Image.Image]]:
    """Clamp into [0, duration] and keep timestamps strictly increasing."""
    out: list[tuple[float, Image.Image]] = []
    for ts, img in frames:
        ts = round(min(max(ts, 0.0), duration_s), 6)
        if not out or ts > out[-1][0]:
            out.append((ts, img))
    return out


def _worker_argv() -> list[str]:
    return [sys.executable, "-m", "anime_pipeline.media._worker"]


_SECRET_ENV = re.compile(
    r"(SECRET|TOKEN|PASSWORD|PASSWD|CREDENTIAL|CLIENT_ID|API_KEY|ACCESS_KEY|^AWS_|^MAL_)", re.I
)


def worker_env(environ) -> dict[str, str]:
    """The decoder worker parses untrusted video with native code: it gets no secrets or credentials."""
    return {k: v for k, v in environ.items() if not _SECRET_ENV.search(k)}


_HEADER = struct.Struct(">Q")
_MAX_REPLY = 1 << 31  # bytes; a longer announced reply is garbage
_MAX_JOBS = 256  # a worker is replaced after this many jobs (bounds memory growth in native libraries)
_AUTO_WORKERS_MAX = 4  # exact mode, workers=0: decoder processes per episode, at most
_MIN_TARGETS_PER_WORKER = 4  # fewer targets than this per process: not worth another process
_IDLE_KEPT = _AUTO_WORKERS_MAX  # idle workers kept per process


class _WorkerDied(Exception):
    def __init__(self, returncode: int | None, stderr_tail: str, *, before_reply: bool):
        super().__init__(stderr_tail)
        self.returncode, self.stderr_tail, self.before_reply = returncode, stderr_tail, before_reply


class DecoderWorker:
    """One long-lived decoding process (`python -m anime_pipeline.media._worker`, see its docstring).

    `request(raw, timeout_s)` sends one framed message and waits at most `timeout_s` seconds for the framed
    reply; past the limit the worker and its process group are killed (`TimeoutError`); a worker that dies
    or answers garbage raises `_WorkerDied`. Its stderr goes to an unlinked temp file (never a pipe that
    could fill up and block it), read back only for the message when it dies.
    """

    def __init__(self, argv: list[str]):
        import anime_pipeline

        self.argv = list(argv)
        self.jobs = 0
        env = worker_env(os.environ)
        pkg_root = str(Path(anime_pipeline.__file__).resolve().parents[1])
        env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("OMP_NUM_THREADS", "2")
        env["ANIME_PIPELINE_WORKER_PARENT"] = str(os.getpid())  # the worker dies with us (see _worker.py)
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115  (lives as long as the worker; closed in kill)
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
            start_new_session=True,
            bufsize=0,
        )
        if self.proc.stdin is None or self.proc.stdout is None:  # never: both are PIPE above
            self.proc.kill()
            self.proc.wait()
            self._stderr.close()
            raise RuntimeError(f"decoder worker {self.argv}: started without its stdin/stdout pipes")
        self._to_worker: IO[bytes] = self.proc.stdin
        self._from_worker: IO[bytes] = self.proc.stdout
        self.pid_owner = os.getpid()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """Kill the worker and its process group (it was started in a new session), then reap it. Never
        signals a pid already reaped (it may belong to another process by now)."""
        if self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except OSError:
                with contextlib.suppress(OSError):
                    self.proc.kill()
        for f in (self._to_worker, self._from_worker):
            with contextlib.suppress(OSError):
                f.close()
        with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILL: only a hung kernel call delays it
            self.proc.wait(timeout=10)
        self._stderr.close()

    close = kill

    def interrupt(self) -> None:
        """SIGKILL the worker's process group from another thread; the thread waiting on its reply then sees
        it die and cleans up (its pipes are not closed here: that would leave the reader blocked)."""
        if self.proc.returncode is None:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    def _stderr_tail(self) -> str:
        try:
            self._stderr.seek(0, os.SEEK_END)
            size = self._stderr.tell()
            self._stderr.seek(max(0, size - 2000))
            return self._stderr.read().decode("utf-8", "replace").strip()[-500:]
        except (OSError, ValueError):
            return ""

    def _exit_status(self, timeout: float) -> int | None:
        """The worker's exit code (negative: killed by that signal) once it has exited, without reaping it
        (a zombie keeps its pid and process group, so `kill` can still signal the group safely)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = os.waitid(os.P_PID, self.proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:  # already reaped
                return self.proc.returncode
            if info is not None and info.si_pid:
                return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.01)

    def _died(self, *, before_reply: bool) -> _WorkerDied:
        code = self._exit_status(5.0)
        tail = self._stderr_tail()
        self.kill()
        return _WorkerDied(code, tail, before_reply=before_reply)

    def request(self, raw: bytes, timeout_s: float) -> bytes:
        deadline = time.monotonic() + timeout_s
        try:  # a fresh stderr for this job (the worker's offset is shared with ours: it writes from 0 again)
            self._stderr.seek(0)
            self._stderr.truncate()
        except OSError:
            pass
        try:
            view = memoryview(_HEADER.pack(len(raw)) + raw)
            while view:  # an unbuffered pipe write may be partial
                view = view[self._to_worker.write(view) :]
        except (BrokenPipeError, OSError, ValueError):
            raise self._died(before_reply=True) from None
        self.jobs += 1
        fd = self._from_worker.fileno()
        header = self._read(fd, _HEADER.size, deadline, first=True)
        (n,) = _HEADER.unpack(header)
        if n > _MAX_REPLY:
            raise self._died(before_reply=False)
        return self._read(fd, n, deadline, first=False)

    def _read(self, fd: int, n: int, deadline: float, *, first: bool) -> bytes:
        chunks, got = [], 0
        with selectors.DefaultSelector() as sel:
            sel.register(fd, selectors.EVENT_READ)
            while got < n:
                left = deadline - time.monotonic()
                if left <= 0 or not sel.select(left):
                    self.kill()
                    raise TimeoutError
                chunk = os.read(fd, min(n - got, 1 << 22))
                if not chunk:
                    raise self._died(before_reply=first and got == 0)
                chunks.append(chunk)
                got += len(chunk)
        return b"".join(chunks)


class _WorkerPool:
    """Idle decoder workers of this process, by argv (a worker started before a fork is never reused in the
    child). Thread-safe: a worker serves one caller at a time; more concurrent callers start more workers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: list[DecoderWorker] = []
        self._pid = os.getpid()

    def _mine(self) -> None:
        if self._pid != os.getpid():  # forked: the parent's workers are not ours to use or kill
            self._idle, self._pid = [], os.getpid()
            self._lock = threading.Lock()

    def take(self, argv: list[str]) -> tuple[DecoderWorker, bool]:
        """(a worker, whether it served a job before)."""
        self._mine()
        with self._lock:
            for i, w in enumerate(self._idle):
                if w.argv == argv:
                    del self._idle[i]
                    if w.alive():
                        return w, w.jobs > 0
                    w.kill()
                    break
        return DecoderWorker(argv), False

    def give(self, w: DecoderWorker) -> None:
        self._mine()
        if w.pid_owner != os.getpid() or not w.alive() or w.jobs >= _MAX_JOBS:
            if w.pid_owner == os.getpid():
                w.kill()
            return
        with self._lock:
            self._idle.append(w)
            extra = self._idle[:-_IDLE_KEPT] if len(self._idle) > _IDLE_KEPT else []
            self._idle = self._idle[len(extra) :]
        for old in extra:
            old.kill()

    def prestart(self, argv: list[str], n: int = 1) -> None:
        """Have `n` idle workers ready, starting the missing ones now (their interpreter start and imports
        overlap with the caller's probing). Started by the calling thread: a worker dies with the thread
        that started it (PR_SET_PDEATHSIG), so short-lived threads must not start them."""
        self._mine()
        with self._lock:
            ready = sum(1 for w in self._idle if w.argv == argv and w.alive())
        for _ in range(n - ready):
            self.give(DecoderWorker(argv))

    def close(self) -> None:
        self._mine()
        with self._lock:
            idle, self._idle = self._idle, []
        for w in idle:
            w.kill()


_POOL = _WorkerPool()
atexit.register(_POOL.close)


def prestart_worker(n: int = 1) -> None:
    """Start decoder workers in the background until `n` are idle (see `_WorkerPool.prestart`)."""
    _POOL.prestart(_worker_argv(), n)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, e.g. a container's cpuset)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def decode_split(mode: str, n_targets: int, workers: int = 0, cores: int | None = None) -> tuple[int, int]:
    """(decoder processes, decoder threads in each) for one episode.

    Exact mode decodes about half a GOP per sample, each sample on its own after a seek: FFmpeg's frame
    threads lose most of their overlap at every seek, while processes that each take a contiguous share of
    the samples decode fully in parallel (2 single-threaded processes: 1.8x one process with 2 threads on
    a 2-core machine, docs/BENCHMARKS.md). So exact mode uses `workers` processes (0: one per available
    core, at most `_AUTO_WORKERS_MAX`), each with an equal share of the cores as threads, and never fewer
    than `_MIN_TARGETS_PER_WORKER` samples per process. Keyframe mode decodes one frame per sample: one
    process, FFmpeg's own threading."""
    if mode != "exact":
        return 1, 0
    cores = cores or available_cores()
    k = workers or min(cores, _AUTO_WORKERS_MAX)
    k = max(1, min(k, n_targets // _MIN_TARGETS_PER_WORKER))
    return (1, 0) if k == 1 else (k, max(1, cores // k))


def split_targets(targets: list[float], k: int) -> list[list[float]]:
    """`targets` in `k` contiguous runs of (nearly) equal length, in order."""
    n = len(targets)
    return [targets[i * n // k : (i + 1) * n // k] for i in range(k)]


def merge_packed(parts: list[list[tuple]]) -> list[tuple]:
    """The packed frames of contiguous runs, in order, each frame once (two runs can end on the same frame
    where samples are denser than frames)."""
    out: list[tuple] = []
    for part in parts:
        for item in part:
            if not out or item[0] > out[-1][0]:
                out.append(item)
    return out


def _decode_in_workers(job: dict, *, timeout_s: float, workers: int, what: str) -> list[tuple]:
    """`job` in decoder workers: split across processes per `decode_split`, run concurrently (each with the
    episode's time limit), merged in order."""
    k, threads = decode_split(job["mode"], len(job["targets"]), workers)
    jobs = [{**job, "targets": run, "threads": threads} for run in split_targets(job["targets"], k)]
    if k == 1:
        return run_worker(jobs[0], timeout_s=timeout_s, what=what)
    cancelled = threading.Event()
    busy: set[DecoderWorker] = set()
    lock = threading.Lock()

    def run(part: dict) -> list[tuple]:
        mine: list[DecoderWorker] = []

        def took(w: DecoderWorker) -> None:
            mine.append(w)
            with lock:
                busy.add(w)

        try:
            return run_worker(part, timeout_s=timeout_s, what=what, on_take=took, cancelled=cancelled)
        finally:
            with lock:
                busy.difference_update(mine)

    _POOL.prestart(_worker_argv(), k)  # started here, by the long-lived calling thread
    with ThreadPoolExecutor(k, thread_name_prefix="decode") as ex:
        futures = [ex.submit(run, j) for j in jobs]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)  # the first failure, not the first share, decides
            for f in futures:
                if f.done() and f.exception() is not None:
                    f.result()  # raises it
            parts = [f.result() for f in futures]
        except BaseException:  # a share failed, or the run was interrupted: stop the others now
            cancelled.set()
            with lock:
                doomed = list(busy)
            for w in doomed:
                w.interrupt()
            raise
    return merge_packed(parts)


def close_workers() -> None:
    """Stop this process's idle decoder workers (they also exit on their own when idle or orphaned)."""
    _POOL.close()


def run_worker(
    job: dict,
    *,
    timeout_s: float,
    what: str,
    argv: list[str] | None = None,
    on_take: Callable[[DecoderWorker], None] | None = None,
    cancelled: threading.Event | None = None,
) -> Any:
    """Run `job` in a decoder worker (reused across episodes; see the module docstring); MediaError on timeout,
    crash or failure. A reused worker found dead before it answered (e.g. killed with the thread that
    started it, PR_SET_PDEATHSIG) is replaced once; a timeout is never retried.

    `on_take` is told which worker serves the job (so another thread can `interrupt` it); once `cancelled`
    is set, no worker is taken or replaced any more."""
    argv = list(argv or _worker_argv())
    raw_job = pickle.dumps(job, protocol=pickle.HIGHEST_PROTOCOL)

    def stopped() -> bool:
        return cancelled is not None and cancelled.is_set()

    for attempt in (1, 2):
        if stopped():
            raise MediaError(f"{what}: decoding stopped (another part of the episode failed)")
        worker, reused = _POOL.take(argv)
        if on_take is not None:
            on_take(worker)
        if stopped():  # cancelled while taking it: the canceller may not have seen this worker
            _POOL.give(worker)
            raise MediaError(f"{what}: decoding stopped (another part of the episode failed)")
        try:
            raw = worker.request(raw_job, timeout_s)
        except TimeoutError:
            raise MediaError(
                f"{what}: decoding did not finish within {timeout_s:g} s; the decoder was stopped"
            ) from None
        except _WorkerDied as e:
            if (
                reused
                and attempt == 1
                and e.before_reply
                and e.returncode == -signal.SIGKILL
                and not stopped()
            ):
                continue
            raise MediaError(
                f"{what}: the decoder process died (exit code {e.returncode}): {e.stderr_tail}"
            ) from None
        except BaseException:
            worker.kill()
            raise
        try:
            status, payload = pickle.loads(raw)
        except Exception:
            worker.kill()
            raise MediaError(f"{what}: the decoder process died (exit code None): unreadable reply") from None
        _POOL.give(worker)
        if status == "ok":
            return payload
        raise MediaError(payload)
    raise AssertionError("unreachable")  # pragma: no cover


def sample_frames(
    path: Path | str,
    cfg: SamplingConfig | None = None,
    probe: VideoProbe | None = None,
    *,
    jpeg_quality: int | None = None,
) -> list[SampledFrame]:
    """Sample `path` per `cfg` (see the module docstring). MediaError when it cannot be decoded in time.

    `jpeg_quality`: the decoder also encodes each frame as JPEG at this quality and only the JPEG bytes come
    back (`SampledFrame.jpeg`, `image` None; `rgb()` decodes it): what a shard stores, without moving
    full RGB frames between processes. None: RGB images."""
    cfg = cfg or SamplingConfig()
    if probe is None:
        probe = probe_video(path, sha256=False)
    p = check_regular_file(path)
    targets = plan_timestamps(probe.duration_s, cfg)
    job = DecodeJob(
        path=str(p),
        targets=targets,
        mode=cfg.mode,
        decoder=cfg.decoder,
        max_side=cfg.max_side,
        vfr=probe.variable_frame_rate,
        duration_s=probe.duration_s,
        frame_pixels=probe.width * probe.height,
        container=probe.container,
        window=plan_window(probe.duration_s, cfg),
        sar=probe.sample_aspect_ratio,
        threads=0,
    )
    if jpeg_quality is not None and not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
    if cfg.timeout_s is None:
        packed = pack_frames(decode_targets(**job), jpeg_quality)
    else:
        packed = _decode_in_workers(
            {**job, "jpeg_quality": jpeg_quality}, timeout_s=cfg.timeout_s, workers=cfg.workers, what=str(p)
        )
    return unpack_frames(packed, jpeg_quality)
