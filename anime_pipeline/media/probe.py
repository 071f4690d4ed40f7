"""Probe a video file with ffprobe (via ffmpeg-python) into a small, typed `VideoProbe`.

What is rejected here (always as `MediaError`, the message names the file):
  * a missing path, something that is not a regular file (directory, FIFO, device), a 0-byte file;
  * a file ffprobe cannot read (e.g. a text file named `.mp4`), or whose container is not one of the
    demuxers in `ALLOWED_DEMUXERS` (playlists such as HLS/concat are refused: they make ffmpeg open
    other files or URLs named inside them);
  * no video stream (audio-only files; cover art in an audio file does not count as video);
  * an unknown or non-positive duration.

Truncated files: when the index (`moov`) is intact ffprobe still succeeds and reports the full
duration. That is deliberate: the file is rejected later, when sampling cannot decode a frame it needs
(`sampling.sample_frames` raises `MediaError` naming the file and the timestamp).

`variable_frame_rate` is best effort: true when `r_frame_rate` and `avg_frame_rate` disagree, or when
the durations of the first packets (up to `VFR_PACKETS`) are irregular.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from fractions import Fraction
from itertools import pairwise
from pathlib import Path
from typing import Any

import ffmpeg

from anime_pipeline.paths import file_sha256

from .errors import MediaError

# Demuxers ffprobe / PyAV may use (comma-separated, as ffmpeg's `format_whitelist` expects).
# Audio containers are allowed so that an audio-only file reports "no video stream".
ALLOWED_DEMUXERS = (
    "mov,mp4,m4a,3gp,3g2,mj2,matroska,webm,avi,flv,mpegts,mpeg,asf,ogg,nut,mp3,wav,aac,flac,h264,hevc"
)
VIDEO_EXTENSIONS = (
    ".mp4",
    ".m4v",
    ".mkv",
    ".webm",
    ".mov",
    ".avi",
    ".flv",
    ".ts",
    ".mpg",
    ".mpeg",
    ".wmv",
    ".ogv",
)
VFR_PACKETS = 120
_VFR_TOLERANCE = 0.01


@dataclass(frozen=True)
class VideoProbe:
    path: Path
    codec: str
    width: int
    height: int
    fps: float  # average frame rate (0.0 when ffprobe cannot tell)
    duration_s: float
    size_bytes: int
    sha256: str
    has_audio: bool
    variable_frame_rate: bool  # best effort
    container: str = ""
    num_frames: int | None = None  # from the container header when present
    start_time_s: float = 0.0
    # width/height of one pixel as displayed (anamorphic DVD: 32/27, 64/45); None: not recorded (an older
    # probe.json), then the decoder reads it from the stream
    sample_aspect_ratio: float | None = 1.0

    def as_metadata(self) -> dict[str, Any]:
        """Plain JSON-able values (for Dagster metadata / logs)."""
        d = asdict(self)
        d["path"] = str(self.path)
        d["fps"] = round(self.fps, 3)
        d["duration_s"] = round(self.duration_s, 3)
        return d

    @classmethod
    def from_metadata(cls, meta: Mapping[str, Any], *, path: Path | str | None = None) -> VideoProbe:
        """The probe recorded by `as_metadata()` (e.g. the `episodes` asset's `episodes/<mal_id>/probe.json`;
        extra keys such as `source` / `origin` are ignored), without touching the file: no ffprobe, no
        hashing. `path` overrides the recorded path. MediaError when a field is missing or malformed.

        The file may have changed since it was recorded; `shards.extract_frame_shard` re-probes when its
        size differs from `size_bytes`.
        """
        where = path if path is not None else (meta.get("path") if isinstance(meta, Mapping) else None)

        def bad(why: str) -> MediaError:
            return MediaError(f"{where}: recorded probe is unusable ({why})", path=where)

        if not isinstance(meta, Mapping):
            raise bad(f"expected a mapping, got {type(meta).__name__}")

        def field(name: str, conv, default: Any = KeyError) -> Any:
            if name not in meta:
                if default is KeyError:
                    raise bad(f"missing {name!r}")
                return default
            try:
                return conv(meta[name])
            except (TypeError, ValueError):
                raise bad(f"{name} is {meta[name]!r}") from None

        raw_path = path if path is not None else field("path", str)
        if not raw_path:
            raise bad("no path")
        width, height = field("width", int), field("height", int)
        duration = field("duration_s", float)
        size = field("size_bytes", int)
        sha = field("sha256", lambda v: str(v or ""), "")
        nb = field("num_frames", lambda v: None if v is None else int(v), None)
        probe = cls(
            path=Path(raw_path),
            codec=str(meta.get("codec") or "unknown"),
            width=width,
            height=height,
            fps=_float(meta.get("fps")) or 0.0,
            duration_s=duration,
            size_bytes=size,
            sha256=sha,
            has_audio=bool(meta.get("has_audio", False)),
            variable_frame_rate=bool(meta.get("variable_frame_rate", False)),
            container=str(meta.get("container") or ""),
            num_frames=nb,
            start_time_s=_float(meta.get("start_time_s")) or 0.0,
            sample_aspect_ratio=_float(meta.get("sample_aspect_ratio")) or None,
        )
        if width <= 0 or height <= 0:
            raise bad(f"frame size {width}x{height}")
        if not (probe.duration_s > 0 and math.isfinite(probe.duration_s)):
            raise bad(f"duration_s is {meta.get('duration_s')!r}")
        if size <= 0:
            raise bad(f"size_bytes is {size}")
        if sha and not (len(sha) == 64 and all(c in "0123456789abcdef" for c in sha)):
            raise bad("sha256 is not a hex SHA-256 digest")
        return probe


def _rate(text: str | None) -> float:
    if not text:
        return 0.0
    try:
        value = Fraction(text)
    except (ValueError, ZeroDivisionError):
        return 0.0
    return float(value) if value > 0 else 0.0


def _ratio(text: Any) -> float:
    """ffprobe's `sample_aspect_ratio` ("32:27") as a float; 1.0 (square pixels) when absent or "0:1"."""
    try:
        num, den = (int(x) for x in str(text).split(":"))
    except (TypeError, ValueError):
        return 1.0
    return num / den if num > 0 and den > 0 else 1.0


def _float(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if f == f and f not in (float("inf"), float("-inf")) else None


def check_regular_file(path: Path | str) -> Path:
    """Resolve `path` and prove it is a non-empty regular file (else MediaError)."""
    p = Path(path).expanduser()
    try:
        p = p.resolve(strict=True)
    except (FileNotFoundError, RuntimeError, OSError):
        raise MediaError(f"{path}: file does not exist", path=path) from None
    if not p.is_file():
        raise MediaError(f"{p}: not a regular file", path=p)
    if p.stat().st_size == 0:
        raise MediaError(f"{p}: file is empty (0 bytes)", path=p)
    return p


def _ffprobe(path: Path, **kwargs: Any) -> dict:
    try:
        # An absolute path never starts with "-" or "proto:", so ffprobe reads it as a plain file.
        return ffmpeg.probe(str(path), v="error", format_whitelist=ALLOWED_DEMUXERS, **kwargs)
    except ffmpeg.Error as e:
        detail = (e.stderr or b"").decode("utf-8", "replace").strip().splitlines()
        reason = detail[-1] if detail else "ffprobe failed"
        if any("not on whitelist" in line for line in detail):
            reason = "container format not allowed: playlists and other indirect formats are refused"
        # ffprobe prefixes messages with the path; keep only the reason.
        reason = reason.replace(f"{path}: ", "")
        raise MediaError(f"{path}: not a readable media file ({reason})", path=path) from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise MediaError(f"{path}: ffprobe returned unreadable output", path=path) from None
    except FileNotFoundError as e:  # ffprobe binary missing
        raise MediaError(f"{path}: cannot probe, ffprobe is not installed ({e})", path=path) from None


def _irregular_packets(path: Path) -> bool:
    """True when the first packets of the first video stream have irregular durations."""
    try:
        info = _ffprobe(
            path,
            select_streams="v:0",
            show_entries="packet=pts_time",
            read_intervals=f"%+#{VFR_PACKETS}",
        )
    except MediaError:
        return False
    pts = sorted(t for p in info.get("packets", []) if (t := _float(p.get("pts_time"))) is not None)
    deltas = [b - a for a, b in pairwise(pts) if b > a]
    if len(deltas) < 3:
        return False
    med = statistics.median(deltas)
    return any(abs(d - med) > max(0.1 * med, 1e-3) for d in deltas[:-1])


def probe_video(path: Path | str, *, sha256: bool = True, check_vfr: bool = True) -> VideoProbe:
    """Probe `path`; raise MediaError when it is not a usable video (see the module docstring)."""
    p = check_regular_file(path)
    info = _ffprobe(p)
    streams = info.get("streams") or []
    fmt = info.get("format") or {}
    video = [
        s
        for s in streams
        if s.get("codec_type") == "video" and not (s.get("disposition") or {}).get("attached_pic")
    ]
    if not video:
        kinds = sorted({s.get("codec_type", "?") for s in streams}) or ["none"]
        raise MediaError(f"{p}: no video stream (streams: {', '.join(kinds)})", path=p)
    v = video[0]
    width, height = int(v.get("width") or 0), int(v.get("height") or 0)
    if width <= 0 or height <= 0:
        raise MediaError(f"{p}: video stream has no frame size", path=p)
    duration = _float(v.get("duration"))
    if duration is None or duration <= 0:
        duration = _float(fmt.get("duration"))
    if duration is None or duration <= 0:
        raise MediaError(f"{p}: unknown or non-positive duration ({fmt.get('duration')!r})", path=p)
    avg = _rate(v.get("avg_frame_rate"))
    real = _rate(v.get("r_frame_rate"))
    fps = avg or real
    vfr = bool(avg and real and abs(avg - real) / real > _VFR_TOLERANCE)
    if check_vfr and not vfr:
        vfr = _irregular_packets(p)
    nb = v.get("nb_frames")
    return VideoProbe(
        path=p,
        codec=str(v.get("codec_name") or "unknown"),
        width=width,
        height=height,
        fps=fps,
        duration_s=duration,
        size_bytes=p.stat().st_size,
        sha256=file_sha256(p) if sha256 else "",
        has_audio=any(s.get("codec_type") == "audio" for s in streams),
        variable_frame_rate=vfr,
        container=str(fmt.get("format_name") or ""),
        num_frames=int(nb) if str(nb or "").isdigit() else None,
        start_time_s=_float(v.get("start_time")) or 0.0,
        sample_aspect_ratio=_ratio(v.get("sample_aspect_ratio")),
    )
