from __future__ import annotations

import os
import shutil

import pytest

from anime_pipeline.media.errors import MediaError
from anime_pipeline.media.sources import (
    AcquiredEpisode,
    ManifestRow,
    acquire_episode,
    episode_dir,
    find_local_episode,
    load_manifest,
    normalize_mal_id,
    validate_url,
)


def _names(d):
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def _videos(d):
    return [n for n in _names(d) if not n.startswith(".")]


# ------------------------------------------------------------------------------------------------ demo
def test_demo_source(tmp_path):
    dest = tmp_path / "episodes" / "990001"
    ep = acquire_episode("demo", 990001, dest)
    assert isinstance(ep, AcquiredEpisode)
    assert ep.path == dest / "ep01.mp4" and ep.source == "demo" and ep.origin == "demo:990001"
    assert ep.probe.path == ep.path and ep.probe.duration_s == pytest.approx(12.0, abs=0.01)
    assert _videos(dest) == ["ep01.mp4"]
    mtime = ep.path.stat().st_mtime_ns
    again = acquire_episode("demo", "990001", dest)  # partition keys are strings
    assert again.path.stat().st_mtime_ns == mtime and again.probe.sha256 == ep.probe.sha256
    meta = ep.as_metadata()
    assert meta["source"] == "demo" and meta["width"] == 160


def test_demo_source_unknown_id(tmp_path):
    with pytest.raises(MediaError, match="MAL id 5 is not a demo title"):
        acquire_episode("demo", 5, tmp_path / "5")


def test_unknown_source(tmp_path):
    with pytest.raises(MediaError, match="unknown episode source 'youtube'"):
        acquire_episode("youtube", 1, tmp_path)


# ----------------------------------------------------------------------------------------------- local
@pytest.mark.parametrize("rel", ["123.mp4", "123/ep01.mkv", "123_Starlit Garden.MP4"])
def test_local_patterns(tmp_path, normal_clip, rel):
    videos = tmp_path / "videos"
    src = videos / rel
    src.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(normal_clip, src)
    # decoys that must not match
    shutil.copy(normal_clip, videos / "1234.mp4")
    (videos / "123.txt").write_text("notes")
    dest = tmp_path / "episodes" / "123"
    ep = acquire_episode("local", 123, dest, video_dir=videos)
    ext = src.suffix.lower()
    assert ep.path == dest / f"ep01{ext}" and ep.origin == str(src)
    assert ep.probe.sha256 and ep.probe.width == 160
    assert os.path.samefile(ep.path, src)  # hardlinked on the same file system
    assert _names(dest) == [".ep01.origin", f"ep01{ext}"]


def test_local_replaces_episode_with_other_extension(tmp_path, normal_clip):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(normal_clip, videos / "9.mp4")
    dest = tmp_path / "ep" / "9"
    acquire_episode("local", 9, dest, video_dir=videos)
    (videos / "9.mp4").rename(videos / "9.mkv")
    acquire_episode("local", 9, dest, video_dir=videos)
    assert _videos(dest) == ["ep01.mkv"]


def test_local_nothing_matches(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "77.txt").write_text("x")
    with pytest.raises(MediaError) as exc:
        acquire_episode("local", 77, tmp_path / "77", video_dir=videos)
    msg = str(exc.value)
    assert "MAL id 77: no episode file found" in msg and "77.*" in msg and "77_*.*" in msg


def test_local_needs_a_folder_or_manifest(tmp_path):
    with pytest.raises(MediaError, match="needs a video dir"):
        acquire_episode("local", 1, tmp_path / "1")
    with pytest.raises(MediaError, match="does not exist"):
        acquire_episode("local", 1, tmp_path / "1", video_dir=tmp_path / "missing")


def test_local_ambiguous(tmp_path, normal_clip):
    videos = tmp_path / "videos"
    videos.mkdir()
    shutil.copy(normal_clip, videos / "5_a.mp4")
    shutil.copy(normal_clip, videos / "5_b.mkv")
    with pytest.raises(MediaError, match=r"several files match MAL id 5 \(5_a.mp4, 5_b.mkv\)"):
        find_local_episode(5, videos)


@pytest.mark.parametrize("bad", ["text_mp4", "zero_length", "audio_only"])
def test_local_bad_file_leaves_nothing(request, tmp_path, bad):
    videos = tmp_path / "videos"
    videos.mkdir()
    src = request.getfixturevalue(bad)
    shutil.copy(src, videos / "3.mp4")
    dest = tmp_path / "episodes" / "3"
    with pytest.raises(MediaError) as exc:
        acquire_episode("local", 3, dest, video_dir=videos)
    assert str(videos / "3.mp4") in str(exc.value)
    assert _names(dest) == []  # no episode, no staging folder


def test_local_symlink_to_non_video_is_rejected(tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("password=hunter2\n")
    (videos / "4.mp4").symlink_to(secret)
    dest = tmp_path / "episodes" / "4"
    with pytest.raises(MediaError, match="not a readable media file"):
        acquire_episode("local", 4, dest, video_dir=videos)
    assert _names(dest) == [] and secret.read_text() == "password=hunter2\n"


def test_local_manifest_path_row(tmp_path, normal_clip):
    shutil.copy(normal_clip, tmp_path / "my episode.mp4")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("mal_id,path\n21,my episode.mp4\n")
    ep = acquire_episode("local", 21, tmp_path / "ep" / "21", manifest=manifest)
    assert ep.origin == str(tmp_path / "my episode.mp4") and ep.path.name == "ep01.mp4"
    manifest.write_text("mal_id,path\n21,missing.mp4\n")
    with pytest.raises(MediaError, match=r"manifest.csv: row 2: path .*missing.mp4 is not a file"):
        acquire_episode("local", 21, tmp_path / "ep" / "21b", manifest=manifest)


# -------------------------------------------------------------------------------------------- manifest
def test_load_csv_manifest(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text(
        "mal_id,url,episode,title\n"
        "1,https://example.org/a.mp4,,Some Title\n"
        "\n"
        " 2 , http://example.org/page.html , 1 ,\n"
        "2,https://example.org/ep2.mp4,2,\n"
    )
    rows = load_manifest(m)
    assert rows == [
        ManifestRow(mal_id=1, url="https://example.org/a.mp4", episode=1, path=None, row=2),
        ManifestRow(mal_id=2, url="http://example.org/page.html", episode=1, path=None, row=4),
        ManifestRow(mal_id=2, url="https://example.org/ep2.mp4", episode=2, path=None, row=5),
    ]


def test_load_yaml_manifest(tmp_path):
    m = tmp_path / "m.yaml"
    m.write_text(
        "episodes:\n  - {mal_id: 1, url: 'https://example.org/a.mp4'}\n  - mal_id: '2'\n    path: v/2.mkv\n"
    )
    rows = load_manifest(m)
    assert rows[0] == ManifestRow(1, "https://example.org/a.mp4", 1, None, 1)
    assert rows[1].mal_id == 2 and rows[1].path == tmp_path / "v" / "2.mkv" and rows[1].url is None
    plain = tmp_path / "p.yml"
    plain.write_text("- mal_id: 3\n  url: https://example.org/c.mp4\n  episode: 1\n")
    assert load_manifest(plain)[0].mal_id == 3


@pytest.mark.parametrize(
    "body, match",
    [
        ("id,url\n1,https://e.org/a.mp4\n", "CSV header must have mal_id and url"),
        ("mal_id,url\nabc,https://e.org/a.mp4\n", r"row 2: mal_id 'abc' is not a positive integer"),
        ("mal_id,url\n-1,https://e.org/a.mp4\n", r"row 2: mal_id '-1'"),
        ("mal_id,url\n1.5,https://e.org/a.mp4\n", r"row 2: mal_id '1.5'"),
        ("mal_id,url\n../1,https://e.org/a.mp4\n", r"row 2: mal_id '../1'"),
        ("mal_id,url\n,https://e.org/a.mp4\n", r"row 2: mal_id is missing"),
        ("mal_id,url\n1,\n", r"row 2: needs a url or a path"),
        ("mal_id,url\n1,file:///etc/passwd\n", r"row 2: .*scheme 'file' is not allowed"),
        (
            "mal_id,url\n1,https://e.org/a.mp4\n1,https://e.org/b.mp4\n",
            r"row 3: MAL id 1 episode 1 already listed in row 2",
        ),
        ("mal_id,url,episode\n1,https://e.org/a.mp4,zero\n", r"row 2: episode 'zero'"),
        ("mal_id,url,exec\n1,https://e.org/a.mp4,rm -rf /\n", r"row 2: unknown column\(s\) \['exec'\]"),
        ("mal_id,url\n1,https://e.org/a.mp4,extra\n", r"row 2: more values than header columns"),
    ],
)
def test_csv_manifest_errors(tmp_path, body, match):
    m = tmp_path / "bad.csv"
    m.write_text(body)
    with pytest.raises(MediaError, match=match) as exc:
        load_manifest(m)
    assert str(m) in str(exc.value)


@pytest.mark.parametrize(
    "body, match",
    [
        ("mal_id: 1\n", "must be a list of rows"),
        ("- 1\n- 2\n", r"row 1: expected a mapping"),
        ("- {mal_id: 1, url: [a, b]}\n", r"row 1: url must be text"),
        ("- {mal_id: true, url: 'https://e.org/a.mp4'}\n", r"row 1: mal_id True"),
        ("- {mal_id: 1, url: '--exec rm'}\n", r"row 1: .*command-line option"),
        ("[unclosed\n", "invalid YAML"),
    ],
)
def test_yaml_manifest_errors(tmp_path, body, match):
    m = tmp_path / "bad.yaml"
    m.write_text(body)
    with pytest.raises(MediaError, match=match):
        load_manifest(m)


def test_manifest_file_errors(tmp_path):
    with pytest.raises(MediaError, match="manifest file does not exist"):
        load_manifest(tmp_path / "none.csv")
    other = tmp_path / "m.json"
    other.write_text("[]")
    with pytest.raises(MediaError, match=r"must be \.csv, \.yaml or \.yml"):
        load_manifest(other)


def test_manifest_source_needs_a_row(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("mal_id,url\n1,https://example.org/a.mp4\n")
    with pytest.raises(MediaError, match="no row for MAL id 2 episode 1"):
        acquire_episode("manifest", 2, tmp_path / "2", manifest=m)
    with pytest.raises(MediaError, match="needs a manifest"):
        acquire_episode("manifest", 2, tmp_path / "2")


# --------------------------------------------------------------------------------- hostile ids / URLs
@pytest.mark.parametrize(
    "hostile",
    ["../../etc", "1/../2", "1; rm -rf /", "", " ", "-1", 0, -5, True, 1.0, None, "１２３", "1\x00"],
)
def test_hostile_ids_are_rejected(tmp_path, hostile):
    with pytest.raises(MediaError, match="invalid MAL id"):
        normalize_mal_id(hostile)
    with pytest.raises(MediaError):
        acquire_episode("demo", hostile, tmp_path / "x")
    with pytest.raises(MediaError):
        episode_dir(tmp_path, hostile)
    assert _names(tmp_path) == []


def test_episode_dir(tmp_path):
    assert episode_dir(tmp_path, "42") == (tmp_path / "42").resolve()


@pytest.mark.parametrize(
    "url",
    ["https://example.org/a.mp4", "http://127.0.0.1:8000/x/y.html?q=1", "HTTPS://EXAMPLE.ORG/A.MP4"],
)
def test_validate_url_accepts_http(url):
    assert validate_url(url) == url


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.org/a.mp4",
        "data:video/mp4;base64,AAAA",
        "javascript:alert(1)",
        "--exec",
        "-o /etc/x",
        "/etc/passwd",
        "../videos/a.mp4",
        "videos/a.mp4",
        "C:\\videos\\a.mp4",
        "http://",
        "https:///path",
        "http://user:pw@example.org/a.mp4",
        "http://example.org/a b.mp4",
        "http://example.org/a\n.mp4",
        "http://example.org:99999/a.mp4",
        "",
        None,
        42,
    ],
)
def test_validate_url_rejects(url):
    with pytest.raises(MediaError):
        validate_url(url)


def test_csv_manifest_with_quoted_fields(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text(
        'mal_id,url,title\n1,https://example.org/a.mp4,"A title, with\na newline"\n2,https://example.org/b.mp4,\n'
    )
    assert [(r.mal_id, r.row) for r in load_manifest(m)] == [(1, 3), (2, 4)]


def test_stale_staging_folders_are_cleaned(tmp_path):
    dest = tmp_path / "990002"
    (dest / ".acquire-old").mkdir(parents=True)
    (dest / ".acquire-old" / "ep01.mp4.part").write_bytes(b"partial")
    acquire_episode("demo", 990002, dest)
    assert _names(dest) == [".ep01.origin", "ep01.mp4"]
