"""Media stage: `episodes` and `frame_shards` (group `media`), one partition per MAL id."""

import json
import time
from pathlib import Path

import dagster as dg
import polars as pl
from pydantic import Field

from anime_pipeline import schemas
from anime_pipeline.defs._meta import (
    frames_sheet,
    image_md,
    mb,
    path_meta,
    seconds,
    stage_asset,
    table_metadata,
    title_label,
    title_name,
)
from anime_pipeline.defs.catalog import synopses
from anime_pipeline.defs.partitions import mal_id_partitions
from anime_pipeline.defs.resources import CatalogApiResource, DataStoreResource, PipelineResource
from anime_pipeline.media.errors import MediaError
from anime_pipeline.paths import atomic_path

DEMO_FRAMES = 8
LIVE_FRAMES = 64


class EpisodesConfig(dg.Config):
    force: bool = Field(
        default=False, description="Acquire again even if a probed episode file is already present."
    )


class FramesConfig(dg.Config):
    num_frames: int | None = Field(
        default=None,
        description=f"Frames per title (uniform). Unset: {LIVE_FRAMES} live, {DEMO_FRAMES} in the demo.",
    )
    strategy: str = Field(
        default="uniform", description="`uniform` (num_frames spread) or `fps` (a fixed rate)."
    )
    fps: float = Field(default=0.5, description="Frames per second for the `fps` strategy.")
    skip_s: float = Field(
        default=1.0, description="Seconds skipped at both ends (openings often start black)."
    )
    max_side: int = Field(
        default=512,
        description="Longest side of stored frames in pixels (display aspect kept: a non-square sample aspect "
        "ratio is applied, so anamorphic 720x480 SAR 32:27 is stored at 512x288).",
    )
    mode: str | None = Field(
        default=None,
        description="`exact` decodes the exact frame; `keyframe` takes the keyframe nearest each target inside "
        "[skip_s, duration - skip_s] (73-85x faster than a full decode on a 24-min episode, drift ≤ half a "
        "GOP; docs/BENCHMARKS.md), the exact frame where no unused keyframe fits. Unset: keyframe live, exact "
        "in the demo (short clips).",
    )
    jpeg_quality: int = Field(default=90, description="JPEG quality of stored frames.")
    timeout_s: float = Field(default=600.0, description="Time limit for sampling one episode.")
    workers: int = Field(
        default=0,
        description="Exact mode: decoder processes per episode, each taking a contiguous share of the samples "
        "(0: one per available core, at most 4). Keyframe mode always uses one.",
    )


def partition_mal_id(key: str) -> int:
    """The partition key as a MAL id: ASCII digits only (`int()` would also take "٤٢" and alias 42)."""
    from anime_pipeline.media.sources import normalize_mal_id

    try:
        return normalize_mal_id(key)
    except MediaError as e:
        raise dg.Failure(description=f"partition key {key!r} is not a MAL id: {e}") from e


def episode_file(probe_file: Path, meta: dict) -> Path:
    """The episode's video on this machine: the recorded path, or the file of that name beside probe.json
    (the probe was recorded on another machine and the episode fetched here from the data store)."""
    recorded = Path(str(meta.get("path") or "/nonexistent"))
    return recorded if recorded.exists() else probe_file.parent / recorded.name


def _record(path, payload: dict) -> None:
    with atomic_path(path, suffix=".json") as tmp:
        tmp.write_text(json.dumps(payload, indent=2, default=str))


@stage_asset(
    "media",
    deps=[synopses],
    partitions_def=mal_id_partitions,
    kinds={"ffmpeg", "video"},
    code_version="episodes-v1",
)
def episodes(
    context: dg.AssetExecutionContext,
    config: EpisodesConfig,
    pipeline: PipelineResource,
    data_store: DataStoreResource,
    catalog_api: CatalogApiResource,
) -> dg.MaterializeResult:
    """Episode 1 of the title (one video file per MAL id partition), probed with ffprobe.

    Sources: `demo` (generated with ffmpeg lavfi), `local` (a folder you already have) or `manifest`
    (URLs you are permitted to download, fetched with yt-dlp). Stored at `episodes/<mal_id>/ep01.<ext>`
    with `probe.json` (codec, fps, resolution, duration, size, sha256). A file that fails the probe, and
    every acquisition failure (an invalid manifest row for this title, any download error), is recorded in
    `episodes/<mal_id>/error.json` with URL secrets redacted; other titles' manifest rows do not matter here
    (the `episode_manifest_rows` check lists them). Downloads send the configured User-Agent.
    """
    from anime_pipeline.media.sources import YtDlpOptions, acquire_episode

    s = pipeline.settings()
    mal_id = partition_mal_id(context.partition_key)
    dest = s.episodes_dir / str(mal_id)
    probe_file = dest / "probe.json"
    started = time.monotonic()
    source = s.resolved_episode_source
    rel = f"episodes/{mal_id}"
    data_store.pull(f"{rel}/probe.json", missing_ok=True)
    recorded = json.loads(probe_file.read_text()) if probe_file.exists() else None
    if (
        recorded
        and not config.force
        and (
            episode_file(probe_file, recorded).exists()
            or data_store.exists(f"{rel}/{Path(str(recorded.get('path'))).name}")
        )
    ):
        meta = json.loads(probe_file.read_text())
        context.log.info(
            f"episode for {mal_id} already present ({meta['path']}); set force=true to re-acquire"
        )
        reused = True
    else:
        try:
            got = acquire_episode(
                source,
                mal_id,
                dest,
                video_dir=s.video_dir,
                manifest=s.manifest,
                ytdlp=YtDlpOptions(user_agent=catalog_api.user_agent),
            )
        except MediaError as e:
            _record(
                dest / "error.json",
                {"mal_id": mal_id, "stage": "episodes", "source": source, "error": str(e)},
            )
            data_store.push(f"{rel}/error.json")
            raise dg.Failure(
                description=f"episode for MAL id {mal_id}: {e}", metadata={"source": source}
            ) from e
        meta = {
            **got.probe.as_metadata(),
            "path": str(got.path),
            "source": got.source,
            "origin": str(got.origin),
        }
        _record(probe_file, meta)
        (dest / "error.json").unlink(missing_ok=True)
        data_store.push(rel)
        reused = False
    data_store.pull("catalog/titles.parquet", missing_ok=True)  # the title's name for the UI
    return dg.MaterializeResult(
        metadata={
            "title": title_label(mal_id, title_name(s.catalog_dir / "titles.parquet", mal_id)),
            "source": meta.get("source", source),
            "path": path_meta(data_store.uri(f"{rel}/{Path(str(meta['path'])).name}")),
            "codec": str(meta.get("codec")),
            "fps": round(float(meta.get("fps") or 0.0), 3),
            "resolution": f"{meta.get('width')}x{meta.get('height')}",
            "video_duration_s": round(float(meta.get("duration_s") or 0.0), 2),
            "size_mb": mb(int(meta.get("size_bytes") or 0)),
            "sha256": str(meta.get("sha256")),
            "reused": reused,
            "compute_s": seconds(time.monotonic() - started),
        },
        data_version=dg.DataVersion(str(meta.get("sha256"))[:16]),
    )


@stage_asset(
    "media",
    deps=[episodes],
    partitions_def=mal_id_partitions,
    kinds={"parquet", "pytorch"},
    code_version="frame_shards-v1",
    schema=schemas.FRAMES,
)
def frame_shards(
    context: dg.AssetExecutionContext,
    config: FramesConfig,
    pipeline: PipelineResource,
    data_store: DataStoreResource,
) -> dg.MaterializeResult:
    """Frames sampled from episode 1 by seeking (PyAV, decord fallback), resized and JPEG-encoded into a
    Parquet shard at `frames/mal_id=<id>/part-0.parquet` (mal_id, episode, frame_index, timestamp_s,
    width, height, image, source_sha256). Written atomically: a failure never leaves a partial shard.
    The metadata shows a contact sheet of the sampled frames.
    """
    from anime_pipeline.media.probe import VideoProbe
    from anime_pipeline.media.sampling import SamplingConfig, decode_split
    from anime_pipeline.media.shards import extract_frame_shard, read_frame_shard, shard_key

    s = pipeline.settings()
    mal_id = partition_mal_id(context.partition_key)
    probe_file = s.episodes_dir / str(mal_id) / "probe.json"
    if not data_store.pull(f"episodes/{mal_id}", missing_ok=True) or not probe_file.exists():
        raise dg.Failure(
            description=f"no episode for MAL id {mal_id}: materialize `episodes` for this partition first"
        )
    video = episode_file(probe_file, json.loads(probe_file.read_text()))
    num_frames = config.num_frames or (DEMO_FRAMES if s.profile == "demo" else LIVE_FRAMES)
    cfg = SamplingConfig(
        strategy=config.strategy,
        num_frames=num_frames,
        fps=config.fps,
        skip_s=config.skip_s,
        max_side=config.max_side,
        mode=config.mode or ("exact" if s.profile == "demo" else "keyframe"),
        timeout_s=config.timeout_s,
        workers=config.workers,
    )
    shard_rel = shard_key(mal_id)
    dest = s.home / shard_rel
    started = time.monotonic()
    try:
        # The probe the `episodes` asset recorded (re-probed only if the file changed): no re-hash.
        probe = VideoProbe.from_metadata(json.loads(probe_file.read_text()))
        info = extract_frame_shard(
            video, mal_id=mal_id, episode=1, dest=dest, cfg=cfg, probe=probe, jpeg_quality=config.jpeg_quality
        )
    except MediaError as e:
        _record(dest.parent / "error.json", {"mal_id": mal_id, "stage": "frame_shards", "error": str(e)})
        data_store.push(f"{Path(shard_rel).parent.as_posix()}/error.json")
        raise dg.Failure(description=f"frames for MAL id {mal_id}: {e}") from e
    (dest.parent / "error.json").unlink(missing_ok=True)
    elapsed = time.monotonic() - started
    df = read_frame_shard(dest)
    from anime_pipeline.inventory import scan_shards

    data_store.pull("catalog/titles.parquet", missing_ok=True)  # the title's name for the UI
    title = title_label(mal_id, title_name(s.catalog_dir / "titles.parquet", mal_id))
    stamps: list[float] = df["timestamp_s"].to_list()
    sheet = frames_sheet(df["image"].to_list(), stamps)
    data_store.push(shard_rel)
    return dg.MaterializeResult(
        metadata={
            "title": title,
            "num_frames": info.num_frames,
            "size_mb": mb(info.bytes),
            "frame_size": f"{info.width}x{info.height}",
            "video_duration_s": round(float(probe.duration_s), 2),
            "first_frame_s": round(min(stamps), 2),
            "last_frame_s": round(max(stamps), 2),
            "compute_s": seconds(elapsed),
            "sampling": f"{cfg.strategy}, {num_frames} frames, {cfg.mode} seek, {cfg.skip_s:g} s skipped at both ends, "
            f"{decode_split(cfg.mode, num_frames, cfg.workers)[0]} decoder process(es)",
            "path": path_meta(data_store.uri(shard_rel)),
            "contact_sheet": image_md(sheet, f"{title}: {df.height} frames, time in the video under each"),
            **table_metadata(
                schemas.FRAMES, int(scan_shards(s.home)["num_frames"].sum()), partition_row_count=df.height
            ),
        },
        data_version=dg.DataVersion(_shard_version(df)),
    )


def _shard_version(df: pl.DataFrame) -> str:
    import hashlib

    h = hashlib.sha256()
    for ts, img in zip(df["timestamp_s"].to_list(), df["image"].to_list()):
        h.update(f"{ts:.3f}".encode())
        h.update(img)
    return h.hexdigest()[:16]


@dg.asset_check(
    asset=frame_shards,
    partitions_def=mal_id_partitions,
    blocking=True,
    description="Frames per title as configured, timestamps strictly increasing and inside the episode.",
)
def frame_shards_contract(
    context: dg.AssetCheckExecutionContext, pipeline: PipelineResource, data_store: DataStoreResource
) -> dg.AssetCheckResult:
    from anime_pipeline.media.checks import check_frames
    from anime_pipeline.media.shards import read_frame_shard, shard_key

    s = pipeline.settings()
    mal_id = partition_mal_id(context.partition_key)
    data_store.pull(shard_key(mal_id), f"episodes/{mal_id}/probe.json")
    df = read_frame_shard(s.home / shard_key(mal_id))
    duration = json.loads((s.episodes_dir / str(mal_id) / "probe.json").read_text()).get("duration_s")
    ok, detail = check_frames(df, duration_s=duration)
    return dg.AssetCheckResult(passed=ok, metadata={"detail": detail, "frames": df.height})


@dg.asset_check(
    asset=episodes,
    partitions_def=mal_id_partitions,
    blocking=False,
    description="Every row of the episode manifest is usable: lists each invalid row (row number and reason, "
    "URL secrets redacted) and each row whose MAL id is not a catalog title. Valid rows proceed regardless.",
)
def episode_manifest_rows(
    context: dg.AssetCheckExecutionContext, pipeline: PipelineResource, data_store: DataStoreResource
) -> dg.AssetCheckResult:
    from anime_pipeline.media.sources import read_manifest

    s = pipeline.settings()
    if s.resolved_episode_source != "manifest" or s.manifest is None:
        return dg.AssetCheckResult(
            passed=True, metadata={"detail": f"source {s.resolved_episode_source!r}: no manifest"}
        )
    report = read_manifest(s.manifest)
    data_store.pull("catalog/titles.parquet", missing_ok=True)
    titles_file = s.catalog_dir / "titles.parquet"
    title_ids = (
        set(pl.read_parquet(titles_file, columns=["mal_id"])["mal_id"].to_list())
        if titles_file.exists()
        else None
    )
    problems = report.problems(title_ids)
    table = pl.DataFrame(
        [p.as_dict() for p in problems], schema={"row": pl.Int64, "mal_id": pl.Int64, "reason": pl.String}
    )
    return dg.AssetCheckResult(
        passed=not problems,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={
            "manifest": str(s.manifest),
            "valid_rows": len(report.rows),
            "invalid_rows": len(problems),
            "this_title": partition_mal_id(context.partition_key),
            "problems": dg.MetadataValue.table(
                records=[dg.TableRecord(r) for r in table.to_dicts()],
                schema=dg.TableSchema(
                    columns=[
                        dg.TableColumn("row", "int"),
                        dg.TableColumn("mal_id", "int"),
                        dg.TableColumn("reason", "string"),
                    ]
                ),
            ),
        },
    )
