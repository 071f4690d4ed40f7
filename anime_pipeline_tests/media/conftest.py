"""Session-scoped media files for the media tests (generated once with ffmpeg lavfi, tiny)."""

from __future__ import annotations

import functools
import http.server
import shutil
import sys
import threading
from pathlib import Path

import pytest

try:
    from anime_pipeline_tests.fixtures import media as fx
except ModuleNotFoundError:  # pytest run without the repo root on sys.path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from anime_pipeline_tests.fixtures import media as fx

if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:  # pragma: no cover
    pytest.skip("ffmpeg/ffprobe not installed", allow_module_level=True)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("media")


def _cached(name: str, maker):
    @pytest.fixture(scope="session")
    def fixture(media_dir: Path) -> Path:
        return maker(media_dir / name)

    return fixture


normal_clip = _cached("normal.mp4", fx.make_normal_clip)
clip_4k = _cached("uhd.mp4", fx.make_4k_clip)
vfr_clip = _cached("vfr.mp4", fx.make_vfr_clip)
audio_only = _cached("audio.m4a", fx.make_audio_only)
zero_length = _cached("empty.mp4", fx.make_zero_length)
truncated_clip = _cached("truncated.mp4", fx.make_truncated)
text_mp4 = _cached("text.mp4", fx.make_text_as_mp4)
hls_mp4 = _cached("playlist.mp4", fx.make_hls_playlist_as_mp4)
short_clip = _cached("short.mp4", fx.make_short_clip)


@pytest.fixture(scope="session")
def demo_episode(media_dir: Path) -> Path:
    from anime_pipeline.demo import demo_titles
    from anime_pipeline.media.demo_video import render_demo_episode

    return render_demo_episode(demo_titles()[0], media_dir / "demo" / "ep01.mp4")


class _Handler(http.server.SimpleHTTPRequestHandler):
    hits: list  # set per server

    def log_message(self, *args) -> None:
        pass

    def do_GET(self) -> None:
        self.hits.append(("GET", self.path))
        super().do_GET()

    def do_HEAD(self) -> None:
        self.hits.append(("HEAD", self.path))
        super().do_HEAD()


class LoopbackServer:
    """A static file server on 127.0.0.1 that records every request."""

    def __init__(self, root: Path):
        self.root = root
        self.hits: list[tuple[str, str]] = []
        handler = type("Handler", (_Handler,), {"hits": self.hits})
        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(handler, directory=str(root))
        )
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def url(self, name: str) -> str:
        return f"{self.base}/{name}"

    def count(self, path: str) -> int:
        return sum(1 for _, p in self.hits if p == path)


@pytest.fixture
def http_server(tmp_path: Path, normal_clip: Path):
    root = tmp_path / "www"
    root.mkdir()
    shutil.copy(normal_clip, root / "clip.mp4")
    (root / "page.html").write_text(
        "<!doctype html><html><head><title>Episode 1</title></head><body>"
        '<video controls src="clip.mp4"></video></body></html>'
    )
    (root / "notvideo.mp4").write_text("plain text served as a video\n")
    server = LoopbackServer(root)
    server.thread.start()
    try:
        yield server
    finally:
        server.httpd.shutdown()
        server.httpd.server_close()
