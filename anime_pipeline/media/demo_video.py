"""Render a demo title's first episode with ffmpeg `lavfi` (no input files, no network).

Each scene is a solid background (`color` source, the scene's ffmpeg colour) with a white square that
moves across the frame in the scene's direction; the scenes are concatenated and encoded with libx264
(yuv420p, a keyframe exactly every `gop` frames). The square is an `overlay` of a white `color` source
whose x is an expression of the scene time `t` (`drawbox` cannot animate: its expressions have no time
variable). Encoding is single-threaded with bit-exact flags, so the same title always gives the same
bytes, and takes well under a second at the default 160x120.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from anime_pipeline.demo import DemoTitle
from anime_pipeline.paths import atomic_path

from .errors import MediaError

FFMPEG = "ffmpeg"


def demo_filtergraph(title: DemoTitle, *, seconds_per_scene: float, width: int, height: int, fps: int) -> str:
    side = max(2, (min(width, height) // 4) // 2 * 2)
    d = f"{seconds_per_scene:g}"
    parts, labels = [], []
    for i, scene in enumerate(title.scenes):
        if scene.direction == "right":
            x = f"(W-w)*t/{d}"
        elif scene.direction == "left":
            x = f"(W-w)*(1-t/{d})"
        else:
            raise ValueError(f"demo title {title.mal_id}: unknown direction {scene.direction!r}")
        parts.append(f"color=c={scene.ffmpeg_colour}:s={width}x{height}:r={fps}:d={d}[bg{i}]")
        parts.append(f"color=c=white:s={side}x{side}:r={fps}:d={d}[sq{i}]")
        parts.append(f"[bg{i}][sq{i}]overlay=x='{x}':y=(H-h)/2:eval=frame:shortest=1,format=yuv420p[v{i}]")
        labels.append(f"[v{i}]")
    parts.append(f"{''.join(labels)}concat=n={len(labels)}:v=1:a=0[out]")
    return ";".join(parts)


def render_demo_episode(
    title: DemoTitle,
    dest: Path,
    *,
    seconds_per_scene: float = 6.0,
    width: int = 160,
    height: int = 120,
    fps: int = 8,
    gop: int = 16,
) -> Path:
    """Render `title`'s episode to `dest` (MP4/H.264), atomically: `dest` is complete or absent."""
    if seconds_per_scene <= 0 or fps <= 0 or gop <= 0:
        raise ValueError("seconds_per_scene, fps and gop must be positive")
    if width < 16 or height < 16 or width % 2 or height % 2:
        raise ValueError(f"width and height must be even and at least 16, got {width}x{height}")
    dest = Path(dest)
    graph = demo_filtergraph(title, seconds_per_scene=seconds_per_scene, width=width, height=height, fps=fps)
    with atomic_path(dest, suffix=".mp4") as tmp:
        cmd = [
            FFMPEG,
            "-hide_banner",
            "-nostdin",
            "-v",
            "error",
            "-y",
            "-filter_complex",
            graph,
            "-map",
            "[out]",
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-pix_fmt",
            "yuv420p",
            "-g",
            str(gop),
            "-keyint_min",
            str(gop),
            "-sc_threshold",
            "0",
            "-threads",
            "1",
            "-fflags",
            "+bitexact",
            "-flags:v",
            "+bitexact",
            "-map_metadata",
            "-1",
            "-movflags",
            "+faststart",
            "-f",
            "mp4",
            str(tmp),
        ]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except FileNotFoundError:
            raise MediaError(
                f"{dest}: cannot render the demo episode, ffmpeg is not installed", path=dest
            ) from None
        except subprocess.TimeoutExpired:
            raise MediaError(f"{dest}: rendering the demo episode timed out", path=dest) from None
        if proc.returncode != 0:
            raise MediaError(
                f"{dest}: ffmpeg failed to render demo title {title.mal_id}: {proc.stderr.strip()[-500:]}",
                path=dest,
            )
    return dest
