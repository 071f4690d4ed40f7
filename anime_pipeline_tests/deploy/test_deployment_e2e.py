"""The demo DAG the way a deployment runs it: data home on S3 (moto_server on loopback), instance storage on
PostgreSQL, every step in its own process with its own empty local dir, and the fine-tune and the eval
launched through the configured Pipes client into yet another process with its own empty dir.

Each job run is a separate `python -m anime_pipeline job NAME --multiprocess` (what a run worker pod does):
Dagster's multiprocess executor starts one process per step, and with ANIME_PIPELINE_CACHE_DIR unset each
process works in a fresh local dir of its own that is removed when it exits. So nothing on local disk is
shared between steps: every input comes from the bucket.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from .conftest import object_store

REPO = Path(__file__).resolve().parents[2]
PG_YAML = REPO / "deploy" / "dagster-postgres.yaml"
TITLES = 4  # media runs, launched concurrently as the sensor would; 3 titles land in train, 1 in validation
FAST = {
    "finetuned_adapter": {"max_steps": 12, "save_steps": 6, "log_every": 4},
    "caption_eval": {"max_new_tokens": 24},
}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]


@pytest.fixture
def deployment(s3_env, postgres_server, tmp_path, monkeypatch):
    pytest.importorskip("dagster_postgres", reason="dagster-postgres is not installed")
    dagster_home = tmp_path / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(PG_YAML, dagster_home / "dagster.yaml")
    env = {
        **s3_env,
        **postgres_server.env(),
        "DAGSTER_HOME": str(dagster_home),
        "ANIME_PIPELINE_PROFILE": "demo",
        # every step in its own process, media_job's two included (its default runs them in one)
        "ANIME_PIPELINE_MEDIA_EXECUTOR": "multiprocess",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("ANIME_PIPELINE_CACHE_DIR", raising=False)
    with dg.DagsterInstance.get() as instance:
        yield instance, {**os.environ}


def _start(env: dict, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "anime_pipeline", "job", *args, "--multiprocess"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=2400)
    assert proc.returncode == 0, f"{proc.args}: {out[-3000:]}\n{err[-6000:]}"
    return out


def _job(env: dict, *args: str) -> str:
    return _wait(_start(env, *args))


def _meta(instance, key: str) -> dict:
    ev = instance.get_latest_materialization_event(dg.AssetKey(key))
    assert ev is not None, key
    return {k: getattr(v, "value", v) for k, v in ev.asset_materialization.metadata.items()}


def test_demo_dag_on_s3_and_postgres_with_every_step_in_its_own_process(deployment, s3_env, tmp_path):
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    instance, env = deployment
    assert isinstance(instance.run_storage, PostgresRunStorage)
    assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
    caches = Path(tempfile.gettempdir()) / "anime_pipeline-cache"
    before = set(caches.iterdir()) if caches.exists() else set()

    _job(env, "catalog_job")
    keys = instance.get_dynamic_partitions("mal_ids")
    assert len(keys) == 24
    for proc in [_start(env, "media_job", "--partition", key) for key in keys[:TITLES]]:
        _wait(proc)
    _job(env, "training_job", "--config", json.dumps(FAST))

    # Runs belong to the project's jobs, all stored in PostgreSQL.
    runs = instance.get_runs()
    assert sorted(r.job_name for r in runs) == sorted(
        ["catalog_job", "training_job"] + ["media_job"] * TITLES
    )
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs)
    # Every step ran in a process of its own.
    starts = [e for r in runs for e in instance.all_logs(r.run_id, of_type=dg.DagsterEventType.STEP_START)]
    assert len(starts) >= 4 + 3 * TITLES + 4
    assert len({e.dagster_event.pid for e in starts}) == len(starts)
    # Each step's local dir was its own and is gone: nothing on local disk outlived a step.
    after = set(caches.iterdir()) if caches.exists() else set()
    assert after - before == set()

    # Every output is in the bucket.
    store = object_store(s3_env)
    objects = set(store.list_paths(""))
    expected = {
        "catalog/titles.parquet",
        "catalog/synopses.parquet",
        "catalog/rejected.parquet",
        "splits/train.parquet",
        "splits/val.parquet",
        "release/README.md",
    }
    for key in keys[:TITLES]:
        expected |= {
            f"episodes/{key}/probe.json",
            f"episodes/{key}/ep01.mp4",
            f"frames/mal_id={key}/part-0.parquet",
        }
    assert expected <= objects, expected - objects
    assert any(o.startswith("release/") and o.endswith(".parquet") for o in objects)
    adapter_meta = _meta(instance, "finetuned_adapter")
    adapter_key = adapter_meta["adapter_key"]
    run = adapter_key.split("/")[1]
    for name in ("adapter_config.json", "adapter_model.safetensors", "README.md"):
        assert f"{adapter_key}/{name}" in objects, name
    assert f"models/{run}/lineage.json" in objects
    assert f"eval/{run}/captions.parquet" in objects and f"eval/{run}/metrics.json" in objects
    assert adapter_meta["adapter_path"] == store.uri(adapter_key)
    frames = pl.scan_parquet(
        store.uri("frames/**/*.parquet"), storage_options=store.polars_storage_options()
    ).collect()
    assert frames["mal_id"].n_unique() == TITLES

    # The fine-tune and the eval ran through the Pipes subprocess client, each in its own empty dir.
    eval_meta = _meta(instance, "caption_eval")
    for md in (adapter_meta, eval_meta):
        assert md["worker_started_empty"] is True
        assert "anime-gpu-job-" in md["worker_data_dir"] and not Path(md["worker_data_dir"]).exists()
    assert adapter_meta["worker_data_dir"] != eval_meta["worker_data_dir"]
    # Metrics are recorded, and point at the bucket.
    for key in (
        "val_loss_base",
        "val_loss_finetuned",
        "bleu_finetuned",
        "rouge_l_finetuned",
        "cider_finetuned",
    ):
        assert isinstance(eval_meta[key], float), key
    assert eval_meta["captions_path"] == store.uri(f"eval/{run}/captions.parquet")
    captions = pl.read_parquet(eval_meta["captions_path"], storage_options=store.polars_storage_options())
    assert captions.height >= 1 and {"caption_base", "caption_finetuned"} <= set(captions.columns)

    # The adapter loads from the bucket on a machine that has nothing else.
    reader = tmp_path / "reader"
    for rel in store.list_paths(adapter_key) + store.list_paths("tiny-model"):
        store.fetch(rel, reader)
    base = AutoModelForImageTextToText.from_pretrained(reader / "tiny-model")
    model = PeftModel.from_pretrained(base, reader / adapter_key)
    assert any("lora_" in n for n, _ in model.named_parameters())
