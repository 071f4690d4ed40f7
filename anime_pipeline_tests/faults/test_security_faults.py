"""Security faults: the MAL client id leaking, hostile manifest URLs, hostile ids/titles as paths, unsafe
deserialisation, and the webserver's bind address."""

from __future__ import annotations

import ast
import base64
import json
import os
import re
import secrets
import sqlite3
import subprocess
import sys
import urllib.parse
from pathlib import Path

import polars as pl
import pytest

from anime_pipeline.media.errors import MediaError
from anime_pipeline.media.shards import shard_path
from anime_pipeline.media.sources import acquire_episode, download_url, episode_dir, load_manifest
from anime_pipeline.paths import MAX_COMPONENT, UnsafePathError, safe_component, within
from anime_pipeline_tests.faults.helpers import REPO
from anime_pipeline_tests.faults.servers import FaultServer
from anime_pipeline_tests.fixtures.catalog_server import Canned, shikimori_anime

PACKAGE = REPO / "anime_pipeline"
LONG = (
    "A quiet courier crosses a flooded city to deliver letters nobody expects, and learns why they were "
    "never sent. "
)


# ------------------------------------------------------------------------------- secret scanning
def needles(secret: str) -> list[bytes]:
    """The secret as it could appear on disk: raw, URL-quoted, UTF-16, and base64 at every alignment."""
    raw = secret.encode()
    out = {raw, urllib.parse.quote(secret).encode(), secret.encode("utf-16-le")}
    for shift in range(3):
        b64 = base64.b64encode(raw[shift:])
        out.add(b64[4 : len(b64) - 4])  # the middle, independent of the bytes around it
    return sorted(out)


def scan(paths: list[Path], secret: str) -> list[str]:
    """Every file under `paths` whose bytes (or, for Parquet, decoded cells) contain the secret."""
    hits = []
    keys = needles(secret)
    for root in paths:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file()]
        for f in files:
            data = f.read_bytes()
            if any(k in data for k in keys):
                hits.append(str(f))
            elif f.suffix == ".parquet":
                text = json.dumps(pl.read_parquet(f).to_dicts(), default=str)
                if secret in text:
                    hits.append(f"{f} (decoded)")
    return hits


def test_scanner_finds_a_planted_secret(fault, tmp_path):
    fault.record(
        "control: the secret planted raw, base64-encoded and inside a compressed Parquet cell",
        "the scanner used below finds all three (so 'absent' means absent)",
    )
    secret = "mal-" + secrets.token_hex(16)
    (tmp_path / "a.log").write_text(f"header X-MAL-CLIENT-ID: {secret}\n")
    (tmp_path / "b.json").write_bytes(b'{"auth": "' + base64.b64encode(b"user:" + secret.encode()) + b'"}')
    pl.DataFrame({"x": [f"...{secret}..."] * 50}).write_parquet(tmp_path / "c.parquet", compression="zstd")
    assert len(scan([tmp_path], secret)) == 3
    fault.titles_lost = 0


# The live run happens in a child interpreter: its stdout/stderr are then the real file descriptors a
# worker writes to (pytest's own capture is not in the way), and Dagster's compute-log fd redirection
# never runs inside the test process.
LIVE_RUN = """
import json, logging, os, sys
logging.basicConfig(level=logging.DEBUG, stream=sys.stderr)
import dagster as dg
from anime_pipeline.definitions import defs
from anime_pipeline.defs.resources import build_resources
assets = list(defs.assets or []) + list(defs.asset_checks or [])
with dg.DagsterInstance.from_config(os.environ["DAGSTER_HOME"]) as instance:
    result = dg.materialize(
        assets,
        selection=["titles", "synopses"],
        instance=instance,
        resources=build_resources(),
        raise_on_error=False,
        run_config={
            "loggers": {"console": {"config": {"log_level": "DEBUG"}}},
            "ops": {"synopses": {"config": {"min_chars": 80}}},
        },
    )
    events = [json.dumps(dg.serialize_value(e)) for e in instance.all_logs(result.run_id)]
    run_config = json.dumps(instance.get_run_by_id(result.run_id).run_config, default=str)
with open(sys.argv[1], "w") as f:
    json.dump({"success": result.success, "events": events, "run_config": run_config}, f)
"""


def test_mal_client_id_never_leaks_from_a_live_run(fault, tmp_path):
    fault.record(
        "live profile titles+synopses via dg.materialize with MAL_CLIENT_ID set; MAL echoes the id "
        "in an error body; a cross-host redirect",
        "the server receives the id in X-MAL-CLIENT-ID; it is absent from the event log DB, compute "
        "logs, stdout/stderr, Python logs, HTTP cache and every Parquet output",
    )
    secret = "mal-" + secrets.token_hex(16)
    home, dagster_home = tmp_path / "data", tmp_path / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    with FaultServer(mal_client_id=secret) as server:
        ids = list(range(101, 107))
        server.shikimori_titles = [shikimori_anime(i) for i in ids]
        server.mal_synopses = {i: f"{LONG}(title {i})" for i in ids}
        server.jikan_synopses = {i: f"{LONG}(jikan {i})" for i in ids}
        # MAL fails for 105 with a body that echoes the client id back (seen in the wild on API gateways)
        server.always(
            "/mal/v2/anime/105", Canned(404, {"error": "not_found", "message": f"client {secret} failed"})
        )
        # MAL redirects 106 to another origin (localhost ≠ 127.0.0.1): the id must not follow
        port = server.base_url.rsplit(":", 1)[1]
        server.always(
            "/mal/v2/anime/106", Canned(302, "", {"Location": f"http://localhost:{port}/jikan/v4/anime/106"})
        )
        env = server.live_env(
            ANIME_PIPELINE_HOME=str(home), DAGSTER_HOME=str(dagster_home), MAL_CLIENT_ID=secret
        )
        report = tmp_path / "run.json"
        child = subprocess.run(
            [sys.executable, "-c", LIVE_RUN, str(report)],
            env={**os.environ, **env},
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=600,
        )
        mal = [r for r in server.requests if r.path.startswith("/mal/")]
        others = [r for r in server.requests if not r.path.startswith("/mal/")]
    assert child.returncode == 0, child.stderr[-4000:]
    run = json.loads(report.read_text())
    assert run["success"], child.stderr[-4000:]
    events, run_config = run["events"], run["run_config"]
    out, err = child.stdout, child.stderr
    assert "STEP_SUCCESS" in err and "DEBUG" in err, "the scan below reads the run's console and Python logs"

    # the server did get it, only on MAL requests
    assert mal and all(r.headers.get("X-MAL-CLIENT-ID") == secret for r in mal)
    assert not any(secret in json.dumps(r.headers) for r in others)
    assert any(r.path == "/jikan/v4/anime/106" and "X-MAL-CLIENT-ID" not in r.headers for r in others)
    synopses = pl.read_parquet(home / "catalog" / "synopses.parquet")
    assert sorted(synopses["mal_id"].to_list()) == ids
    assert dict(zip(synopses["mal_id"], synopses["source"]))[105] == "jikan"
    # and it is nowhere we keep
    assert any(dagster_home.rglob("*.db")), "the sqlite event log exists"
    assert any(dagster_home.rglob("compute_logs/*.err")), "the captured compute logs exist"
    assert any((home / "http-cache").rglob("*")), "the HTTP cache exists"
    places = [dagster_home, home / "http-cache", home / "catalog", home]
    assert scan(places, secret) == []
    texts = {
        "stdout": out,
        "stderr": err,
        "event log": "\n".join(events),
        "run config": run_config,
    }
    leaked = [
        name for name, text in texts.items() if any(k.decode("latin-1") in text for k in needles(secret))
    ]
    assert leaked == []
    assert "client *** failed" in "\n".join(events)  # the echoed id was redacted, the error kept
    assert "MAL_CLIENT_ID" in run_config or secret not in run_config  # config refers to the variable
    fault.titles_lost = len(set(ids) - set(synopses["mal_id"].to_list()))
    fault.note = f"{len(mal)} MAL requests carried it; {len(events)} events scanned"


def test_http_cache_is_not_pickle(fault, server, make_client, tmp_path):
    fault.record(
        "HTTP cache file replaced by a malicious pickle (shared data dir / restored backup)",
        "cache stored as JSON; a planted pickle is never executed (treated as a cache miss)",
    )
    import pickle

    client = make_client(cache=True)
    url = server.jikan_url + "/anime/5114"
    client.get_json(url)
    client.close()
    db = next((tmp_path / "http-cache").glob("*.sqlite"))
    canary = tmp_path / "pwned"

    class Boom:
        def __reduce__(self):
            return (open, (str(canary), "w"))

    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT key, value FROM responses").fetchall()
        assert rows and all(
            (v if isinstance(v, bytes) else v.encode()).lstrip()[:1] == b"{" for _, v in rows
        ), "cache values are JSON documents"
        for key, _ in rows:
            con.execute("UPDATE responses SET value = ? WHERE key = ?", (pickle.dumps(Boom()), key))
    again = make_client(cache=True)
    assert again.get_json(url)["data"]["mal_id"] == 5114
    assert not canary.exists(), "the planted pickle was executed"
    assert again.network_requests == 1  # refetched instead
    fault.titles_lost = 0


# --------------------------------------------------------------------------------- manifest URLs
HOSTILE_URLS = [
    "file:///etc/passwd",
    "FILE:///etc/shadow",
    "ftp://127.0.0.1/ep.mp4",
    "data:video/mp4;base64,AAAA",
    "javascript:alert(1)",
    "ytsearch:anime episode 1",
    "ytsearch5:x",
    "view-source:http://127.0.0.1/",
    "gopher://127.0.0.1:70/",
    "rtmp://127.0.0.1/live",
    "hls+http://127.0.0.1/x.m3u8",
    "-o/tmp/x",
    "--exec=touch /tmp/pwned",
    "/etc/passwd",
    "../../etc/passwd",
    "ep.mp4",
    "http:///no-host",
    "https://user:pw@127.0.0.1/ep.mp4",
    "http://127.0.0.1/a b.mp4",
    "http://127.0.0.1/x\n--exec=id",
    "http://127.0.0.1/\x00.mp4",
    "http://[::1/",
    "",
]


@pytest.fixture
def no_ytdlp(monkeypatch):
    import yt_dlp

    calls = []

    class Forbidden:
        def __init__(self, *a, **k):
            calls.append(a)
            raise AssertionError("yt-dlp must not be called")

    monkeypatch.setattr(yt_dlp, "YoutubeDL", Forbidden)
    return calls


def test_non_http_manifest_urls_never_reach_ytdlp(fault, tmp_path, no_ytdlp):
    fault.record(
        f"{len(HOSTILE_URLS)} hostile manifest URLs (file:, ytsearch:, data:, option-like, "
        "credentials, control chars, …) in CSV, YAML and direct calls",
        "each refused with a MediaError naming the row/URL before yt-dlp is constructed",
    )
    refused = 0
    for i, url in enumerate(HOSTILE_URLS):
        with pytest.raises(MediaError):
            download_url(url, 16, tmp_path / "episodes" / "16")
        y = tmp_path / f"m{i}.yaml"
        y.write_text(json.dumps([{"mal_id": 16, "url": url}]))  # JSON is YAML
        with pytest.raises(MediaError, match=rf"m{i}.yaml: row 1"):
            acquire_episode("manifest", 16, tmp_path / "episodes" / "16", manifest=y)
        refused += 1
        if "\n" in url or '"' in url:
            continue
        c = tmp_path / f"m{i}.csv"
        c.write_text(f'mal_id,url\n16,"{url}"\n')
        with pytest.raises(MediaError, match=rf"m{i}.csv"):
            load_manifest(c)
    assert no_ytdlp == []
    assert not (tmp_path / "episodes" / "16").exists()
    assert not Path("/tmp/pwned").exists()
    fault.titles_lost = 0
    fault.note = f"{refused} refused, yt-dlp constructed 0 times"


# ------------------------------------------------------------------------------------------ paths
HOSTILE_NAMES = [
    "../../etc/passwd",
    "..",
    ".",
    "/etc/passwd",
    "a/b/c",
    "a\\..\\..\\b",
    "nul\x00byte",
    "-rf --no-preserve-root",
    "~root",
    "$(id)",
    "`id`",
    "CON",
    " ",
    "",
    "\u202etxt.mp4",
    "進撃の巨人" * 2000,
    "🎌" * 500,
    "Ｓｔｅｉｎｓ；Ｇａｔｅ/../..",
    "x" * 5000,
    "..\u2215..\u2215etc",
    "%2e%2e%2fetc",
]


def test_hostile_titles_and_ids_give_safe_paths(fault, tmp_path):
    fault.record(
        "titles/ids like ../../etc/passwd, absolute paths, NUL, very long Unicode, look-alike slashes",
        "safe_component gives one short ASCII name; within/episode_dir/shard_path stay inside the data "
        "dir or raise",
    )
    root = tmp_path / "data"
    root.mkdir()
    for name in HOSTILE_NAMES:
        comp = safe_component(name)
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", comp), (name[:40], comp)
        assert len(comp) <= MAX_COMPONENT and comp not in (".", "..")
        p = within(root, comp)
        assert root.resolve() in p.parents
        # ids: only a positive integer makes a path; anything else is refused before touching the disk
        try:
            d = episode_dir(root / "episodes", name)
        except MediaError:
            pass
        else:
            assert (root / "episodes").resolve() in d.parents and d.name.isdigit(), (name, d)
        with pytest.raises(ValueError):
            shard_path(root / "frames", name)  # type: ignore[arg-type]
    for escape in ("../x", "/etc/passwd", "a/../../x", "./../../etc"):
        with pytest.raises(UnsafePathError):
            within(root, escape)
    (root / "link").symlink_to(tmp_path.parent)
    with pytest.raises(UnsafePathError):
        within(root, "link", "x")
    assert episode_dir(root / "episodes", "42") == (root / "episodes" / "42").resolve()
    assert sorted(p.name for p in root.iterdir()) == ["link"]  # nothing was created
    fault.titles_lost = 0


def test_hostile_partition_key_never_touches_the_disk(fault, tmp_path, monkeypatch):
    fault.record(
        "a dynamic partition key '../../../outside' materialised as `episodes`",
        "the run fails (ValueError) before any file is written; nothing outside the data dir",
    )
    import dagster as dg

    from anime_pipeline.definitions import defs
    from anime_pipeline.defs.resources import build_resources

    home = tmp_path / "data"
    env = {"ANIME_PIPELINE_HOME": str(home), "ANIME_PIPELINE_PROFILE": "demo"}
    key = "../../../outside"
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions("mal_ids", [key])
        result = dg.materialize(
            list(defs.assets or []),
            selection=["episodes"],
            partition_key=key,
            instance=instance,
            resources=build_resources(env=env),
            raise_on_error=False,
        )
    assert not result.success
    assert not (tmp_path / "outside").exists() and not (tmp_path.parent / "outside").exists()
    written = [p for p in home.rglob("*") if p.is_file()] if home.exists() else []
    assert written == []
    fault.titles_lost = 0


# ------------------------------------------------------------------------------ deserialisation
# The decoder worker's request/result travel as pickles over the pipes of a child process this package
# starts itself (`sampling.run_worker` ↔ `_worker.main`); nothing read from disk or the network is unpickled.
ALLOWED_UNPICKLE = {("media/sampling.py", "run_worker"), ("media/_worker.py", "main")}
UNSAFE_CALLS = {
    "pickle.load",
    "pickle.loads",
    "pickle.Unpickler",
    "cPickle.load",
    "cPickle.loads",
    "dill.load",
    "dill.loads",
    "cloudpickle.load",
    "cloudpickle.loads",
    "joblib.load",
    "marshal.load",
    "marshal.loads",
    "shelve.open",
    "pd.read_pickle",
    "pandas.read_pickle",
    "yaml.unsafe_load",
    "yaml.full_load",
    "torch.serialization.load",
}


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return ""


def _kw(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value.value if isinstance(kw.value, ast.Constant) else "<expr>"
    return None


def _calls():
    """(file, enclosing function, call) for every call in the package."""
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        stack: list[tuple[ast.AST, str]] = [(tree, "<module>")]
        while stack:
            node, func = stack.pop()
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                func = node.name
            if isinstance(node, ast.Call):
                yield rel, func, node
            stack.extend((child, func) for child in ast.iter_child_nodes(node))


def test_no_unsafe_deserialisation_in_the_package(fault):
    fault.record(
        "source audit: pickle/joblib/marshal/yaml.load, torch.load without weights_only=True, "
        "np.load(allow_pickle=True), trust_remote_code, non-safetensors saves",
        "none, except the decoder worker's own pipe; checkpoints load with weights_only=True; adapters "
        "saved as safetensors",
    )
    bad, torch_loads, saves = [], [], []
    for rel, func, call in _calls():
        name = _dotted(call.func)
        where = f"{rel}:{call.lineno} ({func})"
        if name in UNSAFE_CALLS and (rel, func) not in ALLOWED_UNPICKLE:
            bad.append(f"{where}: {name}")
        if name == "yaml.load" and "SafeLoader" not in ast.unparse(call):
            bad.append(f"{where}: yaml.load without SafeLoader")
        if name == "torch.load":
            torch_loads.append(where)
            if _kw(call, "weights_only") is not True:
                bad.append(f"{where}: torch.load without weights_only=True")
        if name.endswith(("np.load", "numpy.load")) and _kw(call, "allow_pickle") not in (None, False):
            bad.append(f"{where}: np.load(allow_pickle=True)")
        if _kw(call, "trust_remote_code") not in (None, False):
            bad.append(f"{where}: trust_remote_code")
        if _kw(call, "safe_serialization") is False or _kw(call, "use_safetensors") is False:
            bad.append(f"{where}: non-safetensors serialisation")
        if name.endswith("save_pretrained") and rel == "training/train.py":  # adapters and checkpoints
            saves.append((where, _kw(call, "safe_serialization")))
    # the plain-text grep the audit is usually done with, as a second net
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).as_posix()
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            code = line.split("#", 1)[0]
            if re.search(
                r"\b(joblib\.load|cPickle|dill\.load|pd\.read_pickle|allow_pickle\s*=\s*True)", code
            ):
                bad.append(f"{rel}:{n}: {line.strip()}")
            if re.search(r"\bpickle\.loads?\(", code) and rel not in {
                "media/sampling.py",
                "media/_worker.py",
            }:
                bad.append(f"{rel}:{n}: {line.strip()}")
            if "torch.load(" in code and "weights_only=True" not in code:
                bad.append(f"{rel}:{n}: {line.strip()}")
    assert bad == []
    # the checkpoint loader is transformers' Trainer (training/train.py resumes through it: optimizer,
    # scheduler, RNG states): every torch.load there must be weights_only=True too
    import transformers.trainer as hf_trainer

    hf_tree = ast.parse(Path(hf_trainer.__file__).read_text(encoding="utf-8"))
    hf_loads = [c for c in ast.walk(hf_tree) if isinstance(c, ast.Call) and _dotted(c.func) == "torch.load"]
    assert hf_loads, "the checkpoint loader was found and checked"
    assert all(_kw(c, "weights_only") is True for c in hf_loads), [c.lineno for c in hf_loads]
    assert saves and all(v is True for _, v in saves), saves
    fault.titles_lost = 0
    fault.note = (
        f"{len(torch_loads)} torch.load calls, all weights_only=True; {len(saves)} adapter/checkpoint "
        f"saves, all safe_serialization=True; worker pipe allow-listed"
    )


# ------------------------------------------------------------------------------------- webserver
def test_webserver_binds_loopback_by_default(fault):
    fault.record(
        "the documented way to open the UI (./scripts/dev, README)",
        "dagster dev bound to 127.0.0.1, never 0.0.0.0, in every script",
    )
    dev = (REPO / "scripts" / "dev").read_text()
    launch = [
        line for line in dev.splitlines() if "dagster dev" in line and not line.lstrip().startswith("#")
    ]
    assert launch and all(re.search(r"(-h|--host)\s+127\.0\.0\.1\b", line) for line in launch), launch
    for script in (REPO / "scripts").iterdir():
        assert "0.0.0.0" not in script.read_text(), script
    readme = (REPO / "README.md").read_text()
    assert "http://127.0.0.1:3000" in readme and "0.0.0.0" not in readme
    fault.titles_lost = 0
