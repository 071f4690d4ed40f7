"""Episode acquisition: put episode 1 of a title into `dest_dir/ep01.<ext>`, probed.

Sources (`acquire_episode(source, ...)`):
  * "demo"     — render the demo title's episode with ffmpeg (`demo_video.render_demo_episode`).
  * "local"    — a file you already have: a manifest row's `path` (relative paths are relative to the
                 manifest), else in `video_dir`: `<mal_id>.<ext>`, `<mal_id>/ep01.<ext>`, `<mal_id>_*.<ext>`
                 (first pattern that matches; two matches for one pattern is an error). It is hardlinked
                 (copied across file systems) into dest_dir.
  * "manifest" — a CSV/YAML manifest of `mal_id, url[, episode]` rows you are permitted to download
                 (a row may give `path` instead of `url`: then it is taken like "local"). Downloaded with
                 yt-dlp's Python API. Only http(s) URLs get that far (`validate_url`, checked when the
                 manifest is loaded and again before yt-dlp is called). We ship no site-specific extractor
                 or preset: yt-dlp's generic extractor handles direct file links and HTML pages with a
                 `<video>` tag.

yt-dlp runs with options built here only (`YtDlpOptions` holds numbers and a proxy/user agent, nothing
that names a command or a path outside the data dir): fixed `outtmpl` "ep01.%(ext)s" inside a staging
folder in dest_dir (`paths` home and temp both there), no post-processors / exec / fixups (never runs
ffmpeg; native downloaders only; live streams refused), no cookies (file or browser), no .netrc, no cache dir, no JS runtimes or remote components, no
user plugins, no info-json/thumbnails/subtitles, first playlist entry only. A per-title
`download_archive` (default `<dest_dir.parent>/.download-archive/<mal_id>.txt`, which must stay inside
dest_dir.parent) makes yt-dlp skip a URL it already fetched; an existing, probed `ep01.*` from the same
origin is reused without touching the network at all.

Every acquired file is probed before it is moved into place: a file that fails the probe is deleted and
`MediaError` raised (nothing partial is left). yt-dlp writes its archive entry into the staging folder; it
is copied to the real archive only after the episode is installed, so a run killed mid-download or before
the install never leaves an archive entry without an episode.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import os
import re
import shutil
import tempfile
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from anime_pipeline.paths import UnsafePathError, atomic_path, safe_component, within

from .demo_video import render_demo_episode
from .errors import MediaError
from .probe import VIDEO_EXTENSIONS, VideoProbe, probe_video
from .redact import redact_text, redact_url

log = logging.getLogger(__name__)

SOURCES = ("demo", "local", "manifest")
EPISODE_STEM = "ep01"
ALLOWED_URL_SCHEMES = ("http", "https")
MANIFEST_COLUMNS = {"mal_id", "url", "episode", "path", "title", "name", "note"}
_ORIGIN_FILE = ".ep01.origin"
_CONTAINER_EXT = {
    "mov": ".mp4",
    "mp4": ".mp4",
    "matroska": ".mkv",
    "webm": ".webm",
    "avi": ".avi",
    "flv": ".flv",
    "mpegts": ".ts",
    "mpeg": ".mpg",
    "asf": ".wmv",
    "ogg": ".ogv",
}


@dataclass(frozen=True)
class AcquiredEpisode:
    path: Path
    probe: VideoProbe
    source: str  # "demo" | "local" | "manifest"
    origin: str  # "demo:<mal_id>", the local file, or the URL

    def as_metadata(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "source": self.source,
            "origin": self.origin,
            **{k: v for k, v in self.probe.as_metadata().items() if k != "path"},
        }


@dataclass(frozen=True)
class ManifestRow:
    mal_id: int
    url: str | None = None
    episode: int = 1
    path: Path | None = None  # resolved against the manifest's folder
    row: int = 0  # 1-based data row (CSV: line number; YAML: entry number), for messages


@dataclass(frozen=True)
class YtDlpOptions:
    """The only yt-dlp knobs configuration may turn (nothing here can run a command or pick a path)."""

    max_height: int = 720
    retries: int = 3
    ratelimit: int | None = 10_000_000  # bytes per second; None: unlimited
    socket_timeout: float = 30.0
    max_filesize: int | None = 8 * 1024**3
    archive: Path | None = None  # default: <dest_dir.parent>/.download-archive/<mal_id>.txt
    proxy: str | None = None  # None: yt-dlp's default (environment); "": direct connection
    user_agent: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.max_height, int) or self.max_height < 16:
            raise ValueError(f"max_height must be an integer >= 16, got {self.max_height!r}")
        if not isinstance(self.retries, int) or not 0 <= self.retries <= 20:
            raise ValueError(f"retries must be an integer in 0..20, got {self.retries!r}")
        if self.ratelimit is not None and (not isinstance(self.ratelimit, int) or self.ratelimit <= 0):
            raise ValueError(
                f"ratelimit must be a positive integer (bytes/s) or None, got {self.ratelimit!r}"
            )
        if not self.socket_timeout > 0:
            raise ValueError(f"socket_timeout must be positive, got {self.socket_timeout!r}")
        if self.proxy and urllib.parse.urlsplit(self.proxy).scheme not in (
            "http",
            "https",
            "socks4",
            "socks5",
            "socks5h",
        ):
            raise ValueError(f"proxy must be an http(s)/socks URL, got {self.proxy!r}")


# --------------------------------------------------------------------------------------- validation
def normalize_mal_id(value: Any) -> int:
    """A positive MAL id from an int or a string of digits; MediaError for anything else (no paths, no signs)."""
    if isinstance(value, bool):
        raise MediaError(f"invalid MAL id {value!r}")
    if isinstance(value, int):
        mal_id = value
    elif isinstance(value, str) and re.fullmatch(r"[0-9]{1,12}", value.strip()):
        mal_id = int(value.strip())
    else:
        raise MediaError(f"invalid MAL id {value!r}: expected a positive integer")
    if mal_id <= 0:
        raise MediaError(f"invalid MAL id {value!r}: expected a positive integer")
    return mal_id


def episode_dir(episodes_dir: Path, mal_id: Any) -> Path:
    """`<episodes_dir>/<mal_id>`, proven to stay inside episodes_dir."""
    mal_id = normalize_mal_id(mal_id)
    try:
        return within(Path(episodes_dir), safe_component(str(mal_id)))
    except UnsafePathError as e:
        raise MediaError(str(e)) from None


def validate_url(url: Any) -> str:
    """Return the URL if it is an absolute http(s) URL yt-dlp may fetch; MediaError otherwise.

    Refused: other schemes (file:, ftp:, data:, javascript:, ...), option-like strings ("-..."), local or
    relative paths, whitespace/control characters, missing host, credentials in the URL. Messages show the
    URL redacted (`redact.redact_url`: no userinfo, no secret query values).
    """
    if not isinstance(url, str) or not url.strip():
        raise MediaError(f"URL {redact_url(url)!r}: empty or not text")
    url = url.strip()
    shown = redact_url(url)
    if url.startswith("-"):
        raise MediaError(f"URL {shown!r}: looks like a command-line option, refused")
    if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in url):
        raise MediaError(f"URL {shown!r}: contains whitespace or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError as e:
        raise MediaError(f"URL {shown!r}: not a valid URL ({redact_text(e)})") from None
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_URL_SCHEMES:
        what = f"scheme {scheme!r}" if scheme else "no scheme (a local or relative path?)"
        raise MediaError(f"URL {shown!r}: {what} is not allowed, only http and https")
    if not host:
        raise MediaError(f"URL {shown!r}: no host")
    if parts.username or parts.password:
        raise MediaError(f"URL {shown!r}: credentials in URLs are not supported (userinfo redacted here)")
    return url


# ----------------------------------------------------------------------------------------- manifest
class _RowProblem(ValueError):
    """One manifest row is unusable (the reason, without the file and row prefix)."""


@dataclass(frozen=True)
class InvalidRow:
    row: int  # 1-based data row (CSV: line number; YAML: entry number)
    reason: str  # secrets redacted
    mal_id: int | None = None  # when the row's MAL id itself was readable

    def as_dict(self) -> dict[str, Any]:
        return {"row": self.row, "mal_id": self.mal_id, "reason": self.reason}


@dataclass(frozen=True)
class ManifestReport:
    """Every row of a manifest, sorted into usable rows and invalid ones (each with its row and reason)."""

    path: Path
    rows: tuple[ManifestRow, ...]
    invalid: tuple[InvalidRow, ...]

    def row_for(self, mal_id: int, episode: int = 1) -> ManifestRow | None:
        for row in self.rows:
            if row.mal_id == mal_id and row.episode == episode:
                return row
        return None

    def invalid_for(self, mal_id: int) -> list[InvalidRow]:
        return [r for r in self.invalid if r.mal_id == mal_id]

    def problems(self, title_ids: set[int] | None = None) -> list[InvalidRow]:
        """Every invalid row, plus (when `title_ids` is given) each usable row whose MAL id is not a title of
        the catalog (nothing would ever ask for it), sorted by row."""
        extra = []
        if title_ids is not None:
            extra = [
                InvalidRow(
                    r.row, f"MAL id {r.mal_id} is not a title in the catalog (titles.parquet)", r.mal_id
                )
                for r in self.rows
                if r.mal_id not in title_ids
            ]
        return sorted([*self.invalid, *extra], key=lambda r: r.row)

    def describe_invalid(self, limit: int = 20) -> str:
        shown = "; ".join(f"row {r.row}: {r.reason}" for r in self.invalid[:limit])
        more = f"; ... and {len(self.invalid) - limit} more" if len(self.invalid) > limit else ""
        return shown + more


def _manifest_error(path: Path, row: int | None, msg: str) -> MediaError:
    where = f"{path}: row {row}" if row else str(path)
    return MediaError(f"{where}: {msg}", path=path)


def _row_mal_id(keys: dict[str, Any]) -> int | None:
    raw_id = keys.get("mal_id")
    if raw_id is None or isinstance(raw_id, (bool, dict, list)):
        return None
    try:
        return normalize_mal_id(raw_id if isinstance(raw_id, int) else str(raw_id))
    except MediaError:
        return None


def _parse_row(path: Path, n: int, raw: dict[str, Any]) -> ManifestRow:
    """One row; `_RowProblem` (reason only, secrets redacted) when it is unusable."""
    keys = {str(k).strip().lower(): v for k, v in raw.items() if k is not None}
    unknown = sorted(set(keys) - MANIFEST_COLUMNS)
    if unknown:
        raise _RowProblem(f"unknown column(s) {unknown}; allowed: {sorted(MANIFEST_COLUMNS)}")

    def text(name: str) -> str | None:
        v = keys.get(name)
        if v is None:
            return None
        if isinstance(v, (dict, list)):
            raise _RowProblem(f"{name} must be text, got {type(v).__name__}")
        v = str(v).strip()
        return v or None

    raw_id = keys.get("mal_id")
    if raw_id is None or (isinstance(raw_id, str) and not raw_id.strip()):
        raise _RowProblem("mal_id is missing")
    mal_id = _row_mal_id(keys)
    if mal_id is None:
        shown = redact_text(raw_id) if isinstance(raw_id, str) else raw_id
        raise _RowProblem(f"mal_id {shown!r} is not a positive integer")
    episode_raw = keys.get("episode")
    episode = 1
    if episode_raw not in (None, ""):
        s = str(episode_raw).strip()
        if isinstance(episode_raw, bool) or not re.fullmatch(r"[0-9]{1,5}", s) or not 1 <= int(s) <= 32767:
            shown = redact_text(episode_raw) if isinstance(episode_raw, str) else episode_raw
            raise _RowProblem(f"episode {shown!r} is not an integer in 1..32767")
        episode = int(s)
    url, local = text("url"), text("path")
    if url is None and local is None:
        raise _RowProblem("needs a url or a path")
    if url is not None:
        try:
            url = validate_url(url)
        except MediaError as e:
            raise _RowProblem(str(e)) from None
    file_path = None
    if local is not None:
        if "\x00" in local:
            raise _RowProblem("path contains a NUL character")
        file_path = Path(local).expanduser()
        if not file_path.is_absolute():
            file_path = path.parent / file_path
    return ManifestRow(mal_id=mal_id, url=url, episode=episode, path=file_path, row=n)


def _raw_rows(path: Path) -> tuple[list[tuple[int, dict]], list[InvalidRow]]:
    """The manifest's data rows (row number, mapping) and rows unusable before parsing; MediaError when the
    file as a whole is unusable (missing, unreadable, wrong format, no mal_id/url header)."""
    if not path.is_file():
        raise _manifest_error(path, None, "manifest file does not exist")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise _manifest_error(path, None, f"cannot read manifest ({e})") from None
    raw_rows: list[tuple[int, dict]] = []
    bad: list[InvalidRow] = []
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            header = [h.strip().lower() for h in (reader.fieldnames or []) if h is not None]
        except csv.Error as e:
            raise _manifest_error(path, None, f"unreadable CSV ({e})") from None
        if "mal_id" not in header or not ({"url", "path"} & set(header)):
            raise _manifest_error(path, None, f"CSV header must have mal_id and url (or path), got {header}")
        while True:
            try:
                rec = next(reader)
            except StopIteration:
                break
            except csv.Error as e:
                bad.append(InvalidRow(reader.line_num, f"unreadable CSV line ({e})"))
                continue
            if None in rec:
                keys = {str(k).strip().lower(): v for k, v in rec.items() if k is not None}
                bad.append(InvalidRow(reader.line_num, "more values than header columns", _row_mal_id(keys)))
                continue
            if not any((v or "").strip() for v in rec.values()):
                continue  # blank line
            raw_rows.append((reader.line_num, rec))
    elif suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise _manifest_error(path, None, f"invalid YAML ({redact_text(e)})") from None
        if isinstance(data, dict) and "episodes" in data:
            data = data["episodes"]
        if data is None:
            data = []
        if not isinstance(data, list):
            raise _manifest_error(path, None, "YAML manifest must be a list of rows (or {episodes: [...]})")
        for i, rec in enumerate(data, start=1):
            if not isinstance(rec, dict):
                bad.append(InvalidRow(i, f"expected a mapping with mal_id and url, got {type(rec).__name__}"))
                continue
            raw_rows.append((i, rec))
    else:
        raise _manifest_error(path, None, "manifest must be .csv, .yaml or .yml")
    return raw_rows, bad


def read_manifest(path: Path | str) -> ManifestReport:
    """Read a manifest (.csv, or .yaml/.yml: a list of mappings or {"episodes": [...]}) and validate every
    row: usable rows and invalid rows (row number + reason, secrets redacted) side by side, so one bad row
    fails only itself. Two rows for the same (MAL id, episode) are both invalid (which one is meant cannot be
    told). MediaError only when the file as a whole is unusable."""
    path = Path(path).expanduser()
    raw_rows, bad = _raw_rows(path)
    parsed: list[ManifestRow] = []
    for n, rec in raw_rows:
        try:
            parsed.append(_parse_row(path, n, rec))
        except _RowProblem as e:
            keys = {str(k).strip().lower(): v for k, v in rec.items() if k is not None}
            bad.append(InvalidRow(n, str(e), _row_mal_id(keys)))
    seen: dict[tuple[int, int], int] = {}
    rows = []
    for row in parsed:
        key = (row.mal_id, row.episode)
        if key in seen:
            bad.append(
                InvalidRow(
                    row.row,
                    f"MAL id {row.mal_id} episode {row.episode} already listed in row {seen[key]}",
                    row.mal_id,
                )
            )
        else:
            seen[key] = row.row
            rows.append(row)
    return ManifestReport(path=path, rows=tuple(rows), invalid=tuple(sorted(bad, key=lambda r: r.row)))


def load_manifest(path: Path | str) -> list[ManifestRow]:
    """The rows of a manifest that must be valid as a whole (see `read_manifest`); MediaError naming every
    invalid row (row number and reason) when any is."""
    report = read_manifest(path)
    if report.invalid:
        first = report.invalid[0].row
        raise _manifest_error(
            report.path,
            first if len(report.invalid) == 1 else None,
            report.invalid[0].reason
            if len(report.invalid) == 1
            else f"{len(report.invalid)} invalid rows: {report.describe_invalid()}",
        )
    return list(report.rows)


def _manifest_row(manifest: Path, mal_id: int) -> ManifestRow | None:
    """The manifest's row for episode 1 of `mal_id`; other rows' problems do not matter here. MediaError
    naming the row and reason when this title's row is invalid."""
    report = read_manifest(manifest)
    row = report.row_for(mal_id, 1)
    if row is not None:
        return row
    mine = report.invalid_for(mal_id)
    if mine:
        raise _manifest_error(report.path, mine[0].row, mine[0].reason)
    return None


# -------------------------------------------------------------------------------------------- helpers
def _episode_files(dest_dir: Path) -> list[Path]:
    if not dest_dir.is_dir():
        return []
    return sorted(
        p
        for p in dest_dir.iterdir()
        if p.is_file() and p.stem == EPISODE_STEM and p.suffix.lower() in VIDEO_EXTENSIONS
    )


def _reusable(dest_dir: Path, origin: str) -> VideoProbe | None:
    """Probe of an existing ep01.* acquired from the same origin, else None."""
    files = _episode_files(dest_dir)
    marker = dest_dir / _ORIGIN_FILE
    if len(files) != 1 or not marker.is_file() or marker.read_text(encoding="utf-8") != origin:
        return None
    try:
        return probe_video(files[0])
    except MediaError:
        return None


def _install(staged: Path, dest_dir: Path, ext: str, origin: str) -> tuple[Path, VideoProbe]:
    """Probe `staged`, then move it to dest_dir/ep01<ext> (removing other ep01.*); MediaError on failure."""
    try:
        probe = probe_video(staged)
    except MediaError as e:
        staged.unlink(missing_ok=True)
        raise MediaError(
            str(e).replace(str(staged), f"{origin} (acquired as {staged.name})"), path=staged
        ) from None
    if ext not in VIDEO_EXTENSIONS:
        first = probe.container.split(",")[0]
        ext = _CONTAINER_EXT.get(first, ".mp4")
    dest = dest_dir / f"{EPISODE_STEM}{ext}"
    for old in _episode_files(dest_dir):
        if old != dest:
            old.unlink(missing_ok=True)
    os.replace(staged, dest)
    with atomic_path(dest_dir / _ORIGIN_FILE) as tmp:
        tmp.write_text(origin, encoding="utf-8")
    return dest, dataclasses.replace(probe, path=dest)


def _stage_dir(dest_dir: Path) -> Path:
    """A fresh staging folder in dest_dir; staging folders left by a killed run are removed first."""
    dest_dir.mkdir(parents=True, exist_ok=True)
    for stale in dest_dir.glob(".acquire-*"):
        shutil.rmtree(stale, ignore_errors=True)
    return Path(tempfile.mkdtemp(prefix=".acquire-", dir=dest_dir))


# ------------------------------------------------------------------------------------------- sources
def _acquire_demo(mal_id: int, dest_dir: Path) -> AcquiredEpisode:
    from anime_pipeline.demo import demo_title

    try:
        title = demo_title(mal_id)
    except KeyError:
        raise MediaError(f"MAL id {mal_id} is not a demo title (source 'demo')") from None
    origin = f"demo:{mal_id}"
    if (probe := _reusable(dest_dir, origin)) is not None:
        return AcquiredEpisode(probe.path, probe, "demo", origin)
    stage = _stage_dir(dest_dir)
    try:
        staged = render_demo_episode(title, stage / f"{EPISODE_STEM}.mp4")
        path, probe = _install(staged, dest_dir, ".mp4", origin)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return AcquiredEpisode(path, probe, "demo", origin)


def find_local_episode(mal_id: int, video_dir: Path | None, manifest: Path | None = None) -> Path:
    """The user's file for `mal_id` (see the module docstring); MediaError when none or ambiguous."""
    mal_id = normalize_mal_id(mal_id)
    tried = []
    if manifest is not None:
        row = _manifest_row(Path(manifest), mal_id)
        if row is not None and row.path is not None:
            if not row.path.is_file():
                raise MediaError(f"{manifest}: row {row.row}: path {row.path} is not a file", path=row.path)
            return row.path
        tried.append(f"a `path` row in {manifest}")
    if video_dir is not None:
        video_dir = Path(video_dir).expanduser()
        if not video_dir.is_dir():
            raise MediaError(f"video dir {video_dir} does not exist")
        patterns = (f"{mal_id}.*", f"{mal_id}/{EPISODE_STEM}.*", f"{mal_id}_*.*")
        for pattern in patterns:
            hits = sorted(
                p for p in video_dir.glob(pattern) if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file()
            )
            if len(hits) > 1:
                names = ", ".join(str(h.relative_to(video_dir)) for h in hits)
                raise MediaError(f"{video_dir}: several files match MAL id {mal_id} ({names}); keep one")
            if hits:
                return hits[0]
        tried.append(f"{video_dir}/{{{', '.join(patterns)}}} with a video extension")
    if not tried:
        raise MediaError(
            f"MAL id {mal_id}: source 'local' needs a video dir (ANIME_PIPELINE_VIDEO_DIR) or a manifest"
        )
    raise MediaError(f"MAL id {mal_id}: no episode file found (looked for {'; '.join(tried)})")


def _acquire_file(src: Path, mal_id: int, dest_dir: Path, source: str) -> AcquiredEpisode:
    src = Path(src)
    stage = _stage_dir(dest_dir)
    try:
        ext = src.suffix.lower() if src.suffix.lower() in VIDEO_EXTENSIONS else ""
        staged = stage / f"{EPISODE_STEM}{ext or '.video'}"
        try:
            os.link(src.resolve(), staged)
        except OSError:
            try:
                shutil.copyfile(src, staged)
            except OSError as e:
                raise MediaError(f"{src}: cannot copy the episode into {dest_dir} ({e})", path=src) from None
        path, probe = _install(staged, dest_dir, ext, str(src))
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return AcquiredEpisode(path, probe, source, str(src))


def _archive_path(opts: YtDlpOptions, dest_dir: Path, mal_id: int) -> Path:
    root = dest_dir.resolve().parent
    try:
        if opts.archive is None:
            return within(root, ".download-archive", f"{mal_id}.txt")
        return within(root, str(Path(opts.archive).resolve().relative_to(root)))
    except (UnsafePathError, ValueError):
        raise MediaError(f"yt-dlp download archive {opts.archive} must be inside {root}") from None


class _YtDlpLogger:
    """yt-dlp's messages into our log, every URL in them redacted (they quote the URL being fetched)."""

    def debug(self, msg: str) -> None:
        if not msg.startswith("[debug] "):
            log.debug("yt-dlp: %s", redact_text(msg))

    def info(self, msg: str) -> None:
        log.info("yt-dlp: %s", redact_text(msg))

    def warning(self, msg: str) -> None:
        log.warning("yt-dlp: %s", redact_text(msg))

    def error(self, msg: str) -> None:
        log.error("yt-dlp: %s", redact_text(msg))


def _not_live(info: dict, *, incomplete: bool = False) -> str | None:
    """yt-dlp match filter: refuse live streams (they never end and need ffmpeg)."""
    if info.get("is_live") or info.get("live_status") in ("is_live", "is_upcoming"):
        return "live streams are not supported"
    return None


def ytdlp_params(opts: YtDlpOptions, stage: Path, archive: Path) -> dict[str, Any]:
    """The complete yt-dlp parameter dict (built here only; see the module docstring)."""
    h = opts.max_height
    params: dict[str, Any] = {
        "format": f"bv*[height<={h}]/b[height<={h}]/bv*/b",
        "outtmpl": {"default": f"{EPISODE_STEM}.%(ext)s"},
        "paths": {"home": str(stage), "temp": str(stage)},
        "restrictfilenames": True,
        "windowsfilenames": True,
        "trim_file_name": 64,
        "noplaylist": True,
        "playlist_items": "1",
        "download_archive": str(archive),
        "retries": opts.retries,
        "fragment_retries": opts.retries,
        "extractor_retries": opts.retries,
        "socket_timeout": opts.socket_timeout,
        "continuedl": False,
        "overwrites": True,
        "quiet": True,
        "no_warnings": False,
        "noprogress": True,
        "logger": _YtDlpLogger(),
        "cachedir": False,
        "usenetrc": False,
        "cookiefile": None,
        "cookiesfrombrowser": None,
        "postprocessors": [],
        "fixup": "never",
        "external_downloader": {"default": "native"},  # never ffmpeg or another program
        "match_filter": _not_live,
        "js_runtimes": {},
        "remote_components": [],
        "writeinfojson": False,
        "writedescription": False,
        "writethumbnail": False,
        "write_all_thumbnails": False,
        "writesubtitles": False,
        "writeautomaticsub": False,
        "writelink": False,
        "allow_playlist_files": False,
        "getcomments": False,
        "updatetime": False,
        "consoletitle": False,
        "ignoreerrors": False,
        "check_formats": False,
    }
    if opts.ratelimit is not None:
        params["ratelimit"] = opts.ratelimit
    if opts.max_filesize is not None:
        params["max_filesize"] = opts.max_filesize
    if opts.proxy is not None:
        params["proxy"] = opts.proxy
    # never yt-dlp's random browser User-Agent: the configured one, else the project's default
    params["http_headers"] = {"User-Agent": opts.user_agent or default_user_agent()}
    if opts.max_filesize is not None:
        params["progress_hooks"] = [_ByteCap(opts.max_filesize)]
    return params


def default_user_agent() -> str:
    """The project's User-Agent (`Settings.user_agent`'s default; ANIME_PIPELINE_USER_AGENT overrides it in
    the assets, which pass it in `YtDlpOptions.user_agent`)."""
    from anime_pipeline.settings import Settings

    default = Settings.__dataclass_fields__["user_agent"].default
    if not isinstance(default, str):  # a default_factory (or no default) would leave MISSING here
        raise TypeError(f"Settings.user_agent has no plain string default: {default!r}")
    return default


class SizeCapExceeded(Exception):
    """Raised from yt-dlp's progress hook when more bytes than `max_filesize` were written."""


class _ByteCap:
    """yt-dlp progress hook: abort once the bytes actually written pass the cap (yt-dlp's own `max_filesize`
    only checks a Content-Length the server sends). Checked after every block, so at most one block
    (yt-dlp's adaptive block size, <= 4 MiB) is written past the cap before the download stops; the
    partial file is removed with the staging folder."""

    def __init__(self, cap: int):
        self.cap = cap

    def __call__(self, status: dict) -> None:
        done = status.get("downloaded_bytes") or 0
        if done > self.cap:
            raise SizeCapExceeded(f"more than max_filesize {self.cap} bytes received, download stopped")


def _disable_ytdlp_plugins() -> None:
    """User plugins are code from outside the project: keep yt-dlp from loading them, through its own
    switch (the YTDLP_NO_PLUGINS environment variable, read whenever yt-dlp looks for plugins)."""
    os.environ["YTDLP_NO_PLUGINS"] = "1"


def download_url(url: str, mal_id: int, dest_dir: Path, opts: YtDlpOptions | None = None) -> AcquiredEpisode:
    """Download `url` (validated first) with yt-dlp into dest_dir/ep01.<ext> and probe it.

    Every failure is a MediaError naming the URL redacted (`redact.redact_url`): yt-dlp's DownloadError,
    and anything else raised under it (e.g. requests' InvalidSchema for a redirect to file:// or ftp://,
    a size cap hit, an OSError). The episode's `origin` (stored in probe.json and the origin marker) is the
    redacted URL too, so a signed URL whose token rotates still reuses the file it fetched.
    """
    url = validate_url(url)  # before anything reaches yt-dlp
    shown = redact_url(url)
    mal_id = normalize_mal_id(mal_id)
    opts = opts or YtDlpOptions()
    dest_dir = Path(dest_dir)
    if (probe := _reusable(dest_dir, shown)) is not None:
        return AcquiredEpisode(probe.path, probe, "manifest", shown)
    archive = _archive_path(opts, dest_dir, mal_id)
    archive.parent.mkdir(parents=True, exist_ok=True)
    before = archive.read_text(encoding="utf-8") if archive.is_file() else None

    import yt_dlp

    _disable_ytdlp_plugins()
    stage = _stage_dir(dest_dir)
    try:
        # yt-dlp records the URL in a copy of the archive inside the staging folder; the real archive gets
        # it only once the episode is installed. A run killed in between (or a file that fails the probe)
        # leaves the real archive as it was, so the next run downloads again instead of being refused.
        staged_archive = stage / ".download-archive.txt"
        if before is not None:
            staged_archive.write_text(before, encoding="utf-8")
        try:
            with yt_dlp.YoutubeDL(ytdlp_params(opts, stage, staged_archive)) as ydl:
                ydl.extract_info(url, download=True)
        except yt_dlp.utils.DownloadError as e:
            msg = re.sub(r"^ERROR:\s*", "", redact_text(e)).strip()
            raise MediaError(f"{shown}: download failed ({msg[:500]})") from None
        except Exception as e:  # every other failure under yt-dlp, named and redacted
            msg = redact_text(e).strip()
            raise MediaError(f"{shown}: download failed ({type(e).__name__}: {msg[:500]})") from None
        files = sorted(
            p
            for p in stage.iterdir()
            if p.is_file() and p.stem == EPISODE_STEM and not p.name.endswith((".part", ".ytdl", ".temp"))
        )
        now = staged_archive.read_text(encoding="utf-8") if staged_archive.is_file() else None
        if not files:
            if before and now == before:
                raise MediaError(
                    f"{shown}: already downloaded once (recorded in {archive}) but {dest_dir} has no episode "
                    f"file; remove the line from the archive to download it again"
                )
            raise MediaError(f"{shown}: yt-dlp wrote no file (over max_filesize {opts.max_filesize}?)")
        staged = files[0]
        size = staged.stat().st_size
        if opts.max_filesize is not None and size > opts.max_filesize:
            raise MediaError(f"{shown}: downloaded {size} bytes, over max_filesize {opts.max_filesize}")
        path, probe = _install(staged, dest_dir, staged.suffix.lower(), shown)
        if now is not None and now != before:
            with atomic_path(archive, suffix=".txt") as tmp:
                tmp.write_text(now, encoding="utf-8")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return AcquiredEpisode(path, probe, "manifest", shown)


def acquire_episode(
    source: str,
    mal_id: int,
    dest_dir: Path,
    *,
    video_dir: Path | None = None,
    manifest: Path | None = None,
    ytdlp: YtDlpOptions | None = None,
) -> AcquiredEpisode:
    """Acquire episode 1 of `mal_id` from `source` into dest_dir (see the module docstring)."""
    mal_id = normalize_mal_id(mal_id)
    dest_dir = Path(dest_dir)
    if source == "demo":
        return _acquire_demo(mal_id, dest_dir)
    if source == "local":
        return _acquire_file(find_local_episode(mal_id, video_dir, manifest), mal_id, dest_dir, "local")
    if source == "manifest":
        if manifest is None:
            raise MediaError(f"MAL id {mal_id}: source 'manifest' needs a manifest (ANIME_PIPELINE_MANIFEST)")
        row = _manifest_row(Path(manifest), mal_id)
        if row is None:
            raise MediaError(f"{manifest}: no row for MAL id {mal_id} episode 1")
        if row.url is None:
            assert row.path is not None
            if not row.path.is_file():
                raise MediaError(f"{manifest}: row {row.row}: path {row.path} is not a file", path=row.path)
            return _acquire_file(row.path, mal_id, dest_dir, "manifest")
        return download_url(row.url, mal_id, dest_dir, ytdlp)
    raise MediaError(f"unknown episode source {source!r}; expected one of {', '.join(SOURCES)}")
