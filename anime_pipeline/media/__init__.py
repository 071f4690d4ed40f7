"""Media stage (pure Python, no Dagster): acquire → probe → sample frames → Parquet shards.

Modules: `errors` (MediaError), `probe` (ffprobe), `demo_video` (ffmpeg lavfi demo episodes),
`sources` (demo / local / manifest+yt-dlp acquisition), `redact` (URL secrets out of messages),
`sampling` (seek-based frame sampling in a long-lived, time-limited decoder worker), `shards` (FRAMES
Parquet), `preview` (contact sheet PNG), `checks` (contracts).

The names below are imported on first use (PEP 562): the decoder worker imports `media.sampling` and
must not pay for polars, yt-dlp and the rest of the stage at every start.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "check_frames": "checks",
    "render_demo_episode": "demo_video",
    "MediaError": "errors",
    "contact_sheet": "preview",
    "VideoProbe": "probe",
    "probe_video": "probe",
    "SampledFrame": "sampling",
    "SamplingConfig": "sampling",
    "plan_timestamps": "sampling",
    "sample_frames": "sampling",
    "ShardInfo": "shards",
    "decode_frames": "shards",
    "extract_frame_shard": "shards",
    "read_frame_shard": "shards",
    "shard_path": "shards",
    "write_frame_shard": "shards",
    "AcquiredEpisode": "sources",
    "ManifestRow": "sources",
    "YtDlpOptions": "sources",
    "acquire_episode": "sources",
    "episode_dir": "sources",
    "load_manifest": "sources",
    "read_manifest": "sources",
    "validate_url": "sources",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
