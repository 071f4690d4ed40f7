"""Smoke test of the benchmark scripts: each runs with `--quick` (tiny sizes) as a subprocess, exits 0
and prints its final JSON line with the expected keys. No timing is asserted (benchmarks report ratios;
they are not timed tests)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks"

CASES = {
    "frame_extraction": (["--quick"], {"benchmark", "speedup", "flatness", "overhead_s", "targets_met"}),
    "loader": (
        ["--quick"],
        {"benchmark", "samples_per_s", "samples_per_s_per_core", "target_met", "vs_limit"},
    ),
    "train_step": (["--quick"], {"benchmark", "wait_fraction", "wait_fraction_incl_first", "target_met"}),
    "gpu": (["--quick", "--tiny", "--device", "cpu"], {"benchmark", "results", "epoch_minutes", "skipped"}),
    "incremental": (["--quick"], {"benchmark", "requests", "request_ratio", "wall_ratio", "change_detected"}),
    "media_run": (["--quick"], {"benchmark", "runs", "summary", "ratio"}),
}


@pytest.fixture(scope="module")
def bench_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bench-cache")


def run_script(name: str, args: list[str], cache: Path, tmp_path: Path) -> dict:
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        ANIME_PIPELINE_BENCH_CACHE=str(cache),
        ANIME_PIPELINE_HOME=str(tmp_path / "data"),
        TMPDIR=str(tmp_path),
    )
    out = tmp_path / f"{name}.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), *args, "--out", str(out)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, (
        f"{name} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    )
    last = proc.stdout.strip().splitlines()[-1]
    result = json.loads(last)
    assert json.loads(out.read_text()) == result
    return result


SLOW = {"frame_extraction", "loader"}  # > ~15-20 s each here (clip generation, 512-px collation)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in CASES])
def test_benchmark_quick_run(name, bench_cache, tmp_path):
    args, keys = CASES[name]
    result = run_script(name, args, bench_cache, tmp_path)
    assert result["benchmark"] == name
    assert keys <= set(result), sorted(keys - set(result))
    if name == "gpu":
        assert result["device"] == "cpu" and result["model"] == "tiny"
        assert {"flash", "qlora_sdpa"} <= set(
            result["skipped"]
        )  # GPU-only variants are skipped with a reason
        assert {r["variant"] for r in result["results"]} >= {"sdpa", "sdpa_towergrad", "sdpa_cached"}
    if name == "incremental":
        assert len(result["requests"]) == 3
