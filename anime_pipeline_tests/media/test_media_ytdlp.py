"""The manifest source against a loopback HTTP server (yt-dlp's generic extractor; no internet)."""

from __future__ import annotations

import pytest
import yt_dlp

from anime_pipeline.media import sources
from anime_pipeline.media.errors import MediaError
from anime_pipeline.media.sources import YtDlpOptions, acquire_episode, download_url, ytdlp_params

OPTS = YtDlpOptions(proxy="", retries=0, socket_timeout=10)  # direct connection, fail fast


def _manifest(tmp_path, rows):
    m = tmp_path / "manifest.csv"
    m.write_text("mal_id,url\n" + "".join(f"{mal_id},{url}\n" for mal_id, url in rows))
    return m


def _names(d):
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


@pytest.fixture
def no_ytdlp(monkeypatch):
    """Fail the test if anything constructs yt_dlp.YoutubeDL."""
    calls = []

    class Forbidden:
        def __init__(self, *a, **k):
            calls.append((a, k))
            raise AssertionError("yt-dlp must not be called")

    monkeypatch.setattr(yt_dlp, "YoutubeDL", Forbidden)
    return calls


def test_direct_file_download(tmp_path, http_server):
    url = http_server.url("clip.mp4")
    manifest = _manifest(tmp_path, [(11, url)])
    episodes = tmp_path / "data" / "episodes"
    ep = acquire_episode("manifest", 11, episodes / "11", manifest=manifest, ytdlp=OPTS)
    assert ep.path == episodes / "11" / "ep01.mp4" and ep.source == "manifest" and ep.origin == url
    assert ep.path.read_bytes() == (http_server.root / "clip.mp4").read_bytes()
    assert ep.probe.width == 160 and ep.probe.has_audio
    assert _names(episodes / "11") == [".ep01.origin", "ep01.mp4"]  # no .part, no staging folder
    archive = episodes / ".download-archive" / "11.txt"
    assert archive.read_text().strip() == "generic clip"
    # a second acquisition reuses the file without any request
    hits = len(http_server.hits)
    again = acquire_episode("manifest", 11, episodes / "11", manifest=manifest, ytdlp=OPTS)
    assert again.path == ep.path and len(http_server.hits) == hits


def test_html_page_with_video_tag(tmp_path, http_server):
    url = http_server.url("page.html")
    ep = acquire_episode(
        "manifest", 12, tmp_path / "ep" / "12", manifest=_manifest(tmp_path, [(12, url)]), ytdlp=OPTS
    )
    assert ep.path.name == "ep01.mp4" and ep.origin == url
    assert ep.path.read_bytes() == (http_server.root / "clip.mp4").read_bytes()
    assert http_server.count("/page.html") == 1 and http_server.count("/clip.mp4") == 1


def test_download_archive_prevents_a_second_download(tmp_path, http_server):
    url = http_server.url("clip.mp4")
    episodes = tmp_path / "episodes"
    download_url(url, 13, episodes / "13", OPTS)
    first = http_server.count("/clip.mp4")  # the extractor's check (2026 yt-dlp) + the download
    assert first >= 1
    # same title, episode file gone (e.g. another dest dir): the archive stops yt-dlp from fetching it again
    with pytest.raises(MediaError, match=r"already downloaded once \(recorded in .*13.txt\)"):
        download_url(url, 13, episodes / "13-copy", OPTS)
    assert http_server.count("/clip.mp4") - first <= 1  # at most the extractor's header check, no transfer
    assert _names(episodes / "13-copy") == []


def test_downloaded_non_video_is_removed_and_archive_rolled_back(tmp_path, http_server):
    url = http_server.url("notvideo.mp4")
    episodes = tmp_path / "episodes"
    with pytest.raises(MediaError, match=r"notvideo.mp4 .*not a readable media file"):
        download_url(url, 14, episodes / "14", OPTS)
    assert _names(episodes / "14") == []
    archive = episodes / ".download-archive" / "14.txt"
    assert not archive.exists() or archive.read_text().strip() == ""


def test_http_error_is_a_media_error(tmp_path, http_server):
    url = http_server.url("missing.mp4")
    with pytest.raises(MediaError, match=r"missing.mp4: download failed \(.*404"):
        download_url(url, 15, tmp_path / "15", OPTS)
    assert _names(tmp_path / "15") == []


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://127.0.0.1/clip.mp4",
        "--exec",
        "--exec=touch /tmp/pwned",
        "-o/etc/x",
        "/etc/passwd",
        "clip.mp4",
        "../clip.mp4",
        "data:text/html,<video src=x>",
        "javascript:alert(1)",
    ],
)
def test_non_http_urls_never_reach_ytdlp(tmp_path, no_ytdlp, url):
    with pytest.raises(MediaError):
        download_url(url, 16, tmp_path / "16", OPTS)
    m = tmp_path / "m.yaml"
    m.write_text(f"- mal_id: 16\n  url: {url!r}\n")
    with pytest.raises(MediaError, match=r"m\.yaml: row 1"):
        acquire_episode("manifest", 16, tmp_path / "16", manifest=m, ytdlp=OPTS)
    assert no_ytdlp == []
    assert not (tmp_path / "16").exists()


def test_ytdlp_params_are_locked_down(tmp_path):
    stage, archive = tmp_path / "ep" / ".acquire-x", tmp_path / "archive.txt"
    p = ytdlp_params(YtDlpOptions(), stage, archive)
    assert p["outtmpl"] == {"default": "ep01.%(ext)s"}
    assert p["paths"] == {"home": str(stage), "temp": str(stage)}
    assert p["format"] == "bv*[height<=720]/b[height<=720]/bv*/b"
    assert p["download_archive"] == str(archive) and p["ratelimit"] == 10_000_000 and p["retries"] == 3
    assert p["postprocessors"] == [] and p["fixup"] == "never"
    assert p["external_downloader"] == {"default": "native"} and p["js_runtimes"] == {}
    assert p["cookiefile"] is None and p["cookiesfrombrowser"] is None and p["usenetrc"] is False
    assert p["cachedir"] is False and p["noplaylist"] is True
    forbidden = {
        "exec_cmd",
        "exec_before_dl_cmd",
        "postprocessor_args",
        "external_downloader_args",
        "ffmpeg_location",
        "load_info_filename",
        "batchfile",
        "plugin_dirs",
    }
    assert not forbidden & set(p)
    assert p["match_filter"]({"is_live": True}) == "live streams are not supported"


def test_archive_must_stay_in_the_data_dir(tmp_path, no_ytdlp):
    opts = YtDlpOptions(proxy="", archive=tmp_path.parent / "elsewhere.txt")
    with pytest.raises(MediaError, match=r"download archive .* must be inside"):
        download_url("http://127.0.0.1:9/a.mp4", 17, tmp_path / "episodes" / "17", opts)
    assert no_ytdlp == []


@pytest.mark.parametrize(
    "kw",
    [
        dict(retries=-1),
        dict(ratelimit=0),
        dict(max_height=0),
        dict(proxy="file:///tmp/sock"),
        dict(socket_timeout=0),
    ],
)
def test_ytdlp_options_validation(kw):
    with pytest.raises(ValueError):
        YtDlpOptions(**kw)


def test_no_user_plugins(tmp_path, monkeypatch):
    """A yt-dlp plugin on the path is found by yt-dlp's loader (control), and not once we disabled plugins."""
    from yt_dlp.globals import plugin_specs
    from yt_dlp.plugins import load_plugins

    pkg = tmp_path / "yt_dlp_plugins" / "extractor"
    pkg.mkdir(parents=True)
    (pkg / "evil_ie.py").write_text(
        "from yt_dlp.extractor.common import InfoExtractor\n"
        "class EvilIE(InfoExtractor):\n    _VALID_URL = r'evil://.*'\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("YTDLP_NO_PLUGINS", raising=False)
    spec = plugin_specs.value["extractor"]
    assert "EvilIE" in load_plugins(spec)  # control: the plugin would be loaded
    sources._disable_ytdlp_plugins()
    assert load_plugins(spec) == {}
