"""Media stage (pure Python, no Dagster): acquire → probe → sample frames → Parquet shards.

Modules: `errors` (MediaError), `probe` (ffprobe), `demo_video` (ffmpeg lavfi demo episodes),
`sources` (demo / local / manifest+yt-dlp acquisition), `sampling` (seek-based frame sampling with a
per-episode time limit), `shards` (FRAMES Parquet), `preview` (contact sheet PNG), `checks` (contracts).
"""

from .checks import check_frames
from .demo_video import render_demo_episode
from .errors import MediaError
from .preview import contact_sheet
from .probe import VideoProbe, probe_video
from .sampling import SampledFrame, SamplingConfig, plan_timestamps, sample_frames
from .shards import ShardInfo, decode_frames, extract_frame_shard, read_frame_shard, shard_path, write_frame_shard
from .sources import (
    AcquiredEpisode,
    ManifestRow,
    YtDlpOptions,
    acquire_episode,
    episode_dir,
    load_manifest,
    validate_url,
)

__all__ = [
    "AcquiredEpisode",
    "ManifestRow",
    "MediaError",
    "SampledFrame",
    "SamplingConfig",
    "ShardInfo",
    "VideoProbe",
    "YtDlpOptions",
    "acquire_episode",
    "check_frames",
    "contact_sheet",
    "decode_frames",
    "episode_dir",
    "extract_frame_shard",
    "load_manifest",
    "plan_timestamps",
    "probe_video",
    "read_frame_shard",
    "render_demo_episode",
    "sample_frames",
    "shard_path",
    "validate_url",
    "write_frame_shard",
]
