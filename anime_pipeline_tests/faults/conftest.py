"""Fixtures of the fault-injection suite, and the results file behind docs/RELIABILITY.md.

Every test takes the `fault` fixture and calls `fault.record(name, expected)` first, then sets
`fault.titles_lost` (titles that vanished silently: neither in the output nor in `rejected` nor reported
by a clear error; must be 0) and, if useful, `fault.note`. At the end of the session the records, with
each test's outcome, are written as JSON to `$ANIME_PIPELINE_FAULTS_RESULTS` (if set) or
`<pytest basetemp>/faults-results.json`; `report.py` renders them as the table in docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pytest

from anime_pipeline_tests.faults.servers import FaultServer
from anime_pipeline_tests.fixtures import media as fx
from anime_pipeline_tests.fixtures.http import make_client  # noqa: F401  (fixture)

RESULTS_ENV = "ANIME_PIPELINE_FAULTS_RESULTS"
_RESULTS_KEY = pytest.StashKey[list]()
_PATH_KEY = pytest.StashKey[Path]()

if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:  # pragma: no cover
    pytest.skip("ffmpeg/ffprobe not installed", allow_module_level=True)


# ------------------------------------------------------------------------------------------- results
@dataclass
class FaultRecord:
    test: str
    area: str
    fault: str = ""
    expected: str = ""
    titles_lost: int | None = None
    note: str = ""
    outcome: str = ""  # passed | failed | skipped | xfailed | xpassed | error
    seconds: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self, fault: str, expected: str) -> FaultRecord:
        self.fault, self.expected = fault, expected
        return self


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"_fault_rep_{rep.when}", rep)


def _outcome(item) -> str:
    setup = getattr(item, "_fault_rep_setup", None)
    call = getattr(item, "_fault_rep_call", None)
    if setup is not None and setup.failed:
        return "error"
    if call is None:
        return "skipped"
    if hasattr(call, "wasxfail"):
        return "xfailed" if call.skipped else "xpassed"
    return call.outcome


@pytest.fixture(scope="session")
def _fault_results(request, tmp_path_factory) -> Iterator[list[dict]]:
    records: list[dict] = []
    yield records
    if not records:
        return
    path = Path(os.environ.get(RESULTS_ENV) or tmp_path_factory.getbasetemp() / "faults-results.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "generated": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": sys.version.split()[0],
        "records": records,
    }
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False))
    request.config.stash[_PATH_KEY] = path


@pytest.fixture
def fault(request, _fault_results) -> Iterator[FaultRecord]:
    area = Path(request.node.path).stem.replace("test_", "").replace("_faults", "").replace("faults_", "")
    rec = FaultRecord(test=request.node.nodeid.split("::", 1)[-1], area=area)
    started = time.monotonic()
    yield rec
    rec.seconds = round(time.monotonic() - started, 2)
    rec.outcome = _outcome(request.node)
    _fault_results.append(asdict(rec))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    path = config.stash.get(_PATH_KEY, None)
    if path is not None:
        terminalreporter.write_line(
            f"fault-injection results: {path} (render: python anime_pipeline_tests/faults/report.py {path})"
        )


# ------------------------------------------------------------------------------------------ catalog
@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as s:
        yield s


# -------------------------------------------------------------------------------------------- media
@pytest.fixture(scope="session")
def fault_media(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fault-media")


@pytest.fixture(scope="session")
def clip(fault_media) -> Path:
    """4 s, 160x120, 10 fps, with audio (about 50 KB)."""
    return fx.make_normal_clip(fault_media / "clip.mp4")


@pytest.fixture(scope="session")
def bad_media(fault_media) -> dict[str, Path]:
    """Broken inputs by name (the FIFO is made per test: see test_media_faults)."""
    d = fault_media / "bad"
    return {
        "zero-length": fx.make_zero_length(d / "empty.mp4"),
        "truncated": fx.make_truncated(d / "truncated.mp4"),
        "audio-only": fx.make_audio_only(d / "audio.m4a"),
        "text named .mp4": fx.make_text_as_mp4(d / "text.mp4"),
        "HLS playlist named .mp4": fx.make_hls_playlist_as_mp4(d / "playlist.mp4"),
    }
