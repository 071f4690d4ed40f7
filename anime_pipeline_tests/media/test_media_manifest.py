"""Manifest acquisition: one bad row fails only itself, secrets never shown, every download failure a MediaError."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest

from anime_pipeline.media.errors import MediaError
from anime_pipeline.media.redact import redact_text, redact_url
from anime_pipeline.media.sources import (
    YtDlpOptions,
    acquire_episode,
    default_user_agent,
    download_url,
    load_manifest,
    read_manifest,
)

OPTS = YtDlpOptions(proxy="", retries=0, socket_timeout=10)
SECRETS = ("hunter2", "s3cr3t-token", "AKIAXYZ")


def _no_secret(text: str) -> None:
    for s in SECRETS:
        assert s not in text, text


# ------------------------------------------------------------------------------------------ redaction
@pytest.mark.parametrize(
    "url, shown",
    [
        ("https://user:hunter2@example.org/a.mp4", "https://***@example.org/a.mp4"),
        ("https://hunter2@example.org:8443/a.mp4", "https://***@example.org:8443/a.mp4"),
        ("https://example.org/a.mp4?token=s3cr3t-token&ep=1", "https://example.org/a.mp4?token=***&ep=1"),
        (
            "https://b.s3.amazonaws.com/k.mp4?X-Amz-Credential=AKIAXYZ&X-Amz-Signature=abc&X-Amz-Expires=60",
            "https://b.s3.amazonaws.com/k.mp4?X-Amz-Credential=***&X-Amz-Signature=***&X-Amz-Expires=60",
        ),
        ("https://example.org/a.mp4", "https://example.org/a.mp4"),
        ("ftp://u:hunter2@host/x", "ftp://***@host/x"),
    ],
)
def test_redact_url(url, shown):
    assert redact_url(url) == shown


def test_redact_text_finds_every_url():
    text = "ERROR: [generic] Unable to download https://u:hunter2@h/a.mp4 (redirect to file://x:s3cr3t-token@y/z)"
    out = redact_text(text)
    _no_secret(out)
    assert "https://***@h/a.mp4" in out and "file://***@y/z" in out


# ------------------------------------------------------------------------------------------- manifest
BAD_MANIFEST = (
    "mal_id,url\n"
    "1,https://example.org/one.mp4\n"  # row 2: valid
    "2,https://alice:hunter2@example.org/two.mp4\n"  # row 3: credentials
    "abc,https://example.org/x.mp4\n"  # row 4: MAL id not numeric
    "3,file:///etc/passwd\n"  # row 5: file://
    "4,ftp://example.org/four.mp4\n"  # row 6: ftp://
    "1,https://example.org/one-again.mp4\n"  # row 7: duplicate of row 2
    "5,https://example.org/five.mp4?token=s3cr3t-token\n"  # row 8: valid (signed URL)
    "6,\n"  # row 9: no url
)


def test_every_invalid_row_is_reported_and_valid_rows_proceed(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text(BAD_MANIFEST)
    report = read_manifest(m)
    assert [r.mal_id for r in report.rows] == [1, 5]
    assert report.rows[0].url == "https://example.org/one.mp4"  # the first of the duplicates is used
    bad = {r.row: r for r in report.invalid}
    assert sorted(bad) == [3, 4, 5, 6, 7, 9]
    assert "credentials" in bad[3].reason and bad[3].mal_id == 2
    assert "mal_id 'abc' is not a positive integer" in bad[4].reason and bad[4].mal_id is None
    assert "scheme 'file'" in bad[5].reason and "scheme 'ftp'" in bad[6].reason
    assert "already listed in row 2" in bad[7].reason
    assert "needs a url or a path" in bad[9].reason
    for r in report.invalid:
        _no_secret(r.reason)
    # the strict reader names every invalid row at once, no secret in the message
    with pytest.raises(MediaError) as exc:
        load_manifest(m)
    msg = str(exc.value)
    assert "6 invalid rows" in msg and all(f"row {n}:" in msg for n in bad)
    _no_secret(msg)


def test_acquire_takes_its_valid_row_despite_other_bad_rows(tmp_path, http_server):
    m = tmp_path / "m.csv"
    m.write_text(BAD_MANIFEST.replace("https://example.org/one.mp4", http_server.url("clip.mp4")))
    ep = acquire_episode("manifest", 1, tmp_path / "ep" / "1", manifest=m, ytdlp=OPTS)
    assert ep.path.is_file() and ep.origin == http_server.url("clip.mp4")
    # the bad row's title fails alone, with its row and reason, secret redacted
    with pytest.raises(
        MediaError, match=r"m.csv: row 3: URL 'https://\*\*\*@example.org/two.mp4'.*credentials"
    ) as e:
        acquire_episode("manifest", 2, tmp_path / "ep" / "2", manifest=m, ytdlp=OPTS)
    _no_secret(str(e.value))
    with pytest.raises(MediaError, match=r"row 6: .*scheme 'ftp' is not allowed"):
        acquire_episode("manifest", 4, tmp_path / "ep" / "4", manifest=m, ytdlp=OPTS)


# ----------------------------------------------------------------------------------- hostile server
class _Hostile(http.server.BaseHTTPRequestHandler):
    clip: bytes = b""
    agents: list
    protocol_version = "HTTP/1.0"

    def log_message(self, *a) -> None:
        pass

    def do_HEAD(self) -> None:
        self.do_GET(body=False)

    def do_GET(self, body: bool = True) -> None:
        self.agents.append(self.headers.get("User-Agent"))
        path = self.path.split("?")[0]
        if path.startswith("/to-"):
            target = {"/to-file.mp4": "file:///etc/passwd", "/to-ftp.mp4": "ftp://127.0.0.1:9/x.mp4"}[path]
            self.send_response(302)
            self.send_header("Location", target)
            self.end_headers()
            return
        if path == "/endless.mp4":  # no Content-Length: only the bytes actually written can be capped
            self.send_response(200)
            self.send_header("Content-Type", "video/mp4")
            self.end_headers()
            if body:
                chunk = self.clip[:65536].ljust(65536, b"\0")
                try:
                    for _ in range(200):  # 12.5 MiB
                        self.wfile.write(chunk)
                except OSError:
                    pass
            return
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(len(self.clip)))
        self.end_headers()
        if body:
            self.wfile.write(self.clip)


@pytest.fixture
def hostile(normal_clip):
    handler = type("H", (_Hostile,), {"clip": Path(normal_clip).read_bytes(), "agents": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", handler
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.mark.parametrize("target", ["to-file", "to-ftp"])
def test_redirect_to_another_scheme_is_a_media_error_naming_the_url(tmp_path, hostile, target):
    base, _ = hostile
    url = f"{base}/{target}.mp4?token=s3cr3t-token"
    dest = tmp_path / "episodes" / "7"
    with pytest.raises(MediaError, match=rf"{base}/{target}.mp4\?token=\*\*\*: download failed") as e:
        download_url(url, 7, dest, OPTS)
    _no_secret(str(e.value))
    assert not [p for p in dest.rglob("*") if p.is_file()] if dest.exists() else True


def test_downloads_use_the_project_user_agent(tmp_path, hostile):
    base, handler = hostile
    download_url(f"{base}/clip.mp4", 8, tmp_path / "8", OPTS)
    assert handler.agents and set(handler.agents) == {default_user_agent()}
    handler.agents.clear()
    download_url(
        f"{base}/clip.mp4?x=1",
        9,
        tmp_path / "9",
        YtDlpOptions(proxy="", retries=0, socket_timeout=10, user_agent="my-team/1.0 (me@example.org)"),
    )
    assert set(handler.agents) == {"my-team/1.0 (me@example.org)"}


def test_size_cap_applies_to_bytes_written_without_content_length(tmp_path, hostile):
    base, _ = hostile
    dest = tmp_path / "episodes" / "9"
    opts = YtDlpOptions(proxy="", retries=0, socket_timeout=10, max_filesize=1_000_000, ratelimit=None)
    with pytest.raises(MediaError, match=r"endless.mp4: download failed .*max_filesize 1000000"):
        download_url(f"{base}/endless.mp4", 9, dest, opts)
    assert not [p for p in dest.rglob("*") if p.is_file()]


def test_rows_whose_mal_id_is_not_a_title_are_reported(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text(BAD_MANIFEST)
    report = read_manifest(m)
    problems = report.problems(title_ids={1, 2, 3})
    by_row = {p.row: p.reason for p in problems}
    assert "MAL id 5 is not a title" in by_row[8] and 2 not in by_row
    assert sorted(by_row) == [3, 4, 5, 6, 7, 8, 9]
    assert [p.row for p in report.problems()] == [3, 4, 5, 6, 7, 9]  # no catalog: invalid rows only
