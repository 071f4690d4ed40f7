"""A fine-tune on a pod publishes each checkpoint as it is written, so a killed pod's retry resumes from it.

Two "pods" share nothing but the bucket (moto_server): each runs `gpu_job.execute` in its own empty dir.
"""

from __future__ import annotations

import pytest

from anime_pipeline.gpu_job import CheckpointPublisher, execute, train_job
from anime_pipeline.settings import Settings
from anime_pipeline.storage import data_store_from_settings
from anime_pipeline_tests.training.conftest import (  # noqa: F401 (fixtures)
    colour_dataset,
    tiny_model_dir,
    tiny_train_config,
)

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


def _store(s3_env, cache_dir):
    return data_store_from_settings(Settings.from_env({**s3_env, "ANIME_PIPELINE_CACHE_DIR": str(cache_dir)}))


def _write_checkpoint(root, step: int) -> None:
    ckpt = root / "models" / "r1" / "checkpoints" / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    for name in ("adapter_model.safetensors", "optimizer.pt", "rng_state.pth", "scheduler.pt"):
        (ckpt / name).write_bytes(f"{name} {step}".encode())
    (ckpt / "trainer_state.json").write_text("{}")
    (ckpt / "run_state.json").write_text("{}")


def test_checkpoint_files_go_up_marker_last_and_rotated_ones_are_deleted(s3_env, tmp_path):
    store = _store(s3_env, tmp_path / "pod")
    keys: list[str] = []
    store.objects.s3().meta.events.register(
        "before-call.s3.PutObject", lambda params, **kw: keys.append(params["url_path"].rsplit("/", 1)[-1])
    )
    logs: list[str] = []
    publish = CheckpointPublisher(store, logs.append)
    root = store.root
    _write_checkpoint(root, 2)
    publish({"event": "checkpoint", "step": 2, "path": str(root / "models/r1/checkpoints/checkpoint-2")})
    assert keys[-1] == "run_state.json" and len(keys) == 6  # the completeness marker goes up last
    # the trainer writes checkpoint-4 and rotates checkpoint-2 away (keep_checkpoints=1)
    _write_checkpoint(root, 4)
    import shutil

    shutil.rmtree(root / "models/r1/checkpoints/checkpoint-2")
    publish({"event": "checkpoint", "step": 4, "path": str(root / "models/r1/checkpoints/checkpoint-4")})
    listed = store.list("models/r1/checkpoints")
    assert listed and all(p.startswith("models/r1/checkpoints/checkpoint-4/") for p in listed)
    assert "removed rotated checkpoint-2" in logs[-1]
    publish({"event": "progress", "step": 5})  # other events: nothing to do
    outside = tmp_path / "elsewhere" / "checkpoint-5"
    outside.mkdir(parents=True)
    publish({"event": "checkpoint", "step": 5, "path": str(outside)})  # not the store's: said, not uploaded
    assert "outside the data dir" in logs[-1] and store.list("models/r1/checkpoints") == listed
    # a local data dir is the store itself: nothing is moved
    local = data_store_from_settings(Settings.from_env({"ANIME_PIPELINE_HOME": str(tmp_path / "local")}))
    CheckpointPublisher(local, logs.append)({"event": "checkpoint", "path": str(tmp_path / "x")})


@pytest.mark.slow
def test_a_pod_killed_after_a_checkpoint_is_resumed_from_it_by_the_next_pod(
    s3_env,
    tmp_path,
    monkeypatch,
    tiny_model_dir,  # noqa: F811
    colour_dataset,  # noqa: F811
):
    home = colour_dataset["home"]  # the orchestrator's data dir: splits and frames
    _store(s3_env, home).push("splits", "frames")
    cfg = tiny_train_config(
        tiny_model_dir,
        colour_dataset,
        home / "models" / "r1",
        batch_size=2,
        grad_accum=1,
        max_steps=4,
        save_steps=1,
        keep_checkpoints=1,
        val_max_samples=2,
        max_frames=2,
        seed=3,
    )
    store = {
        "data_uri": s3_env["ANIME_PIPELINE_HOME"],
        "endpoint_url": s3_env["ANIME_PIPELINE_S3_ENDPOINT_URL"],
    }
    job = train_job(
        store=store,
        train_config=cfg,
        home=home,
        inputs=["splits/train.parquet", "splits/val.parquet", "frames"],
        run_dir="models/r1",
        asset_key="finetuned_adapter",
    )

    class Killed(BaseException):  # not an Exception: nothing on the way may swallow it, like SIGKILL
        pass

    def pod1_log(msg: str) -> None:
        if "published models/r1/checkpoints/checkpoint-2 " in msg:
            raise Killed

    monkeypatch.setenv("ANIME_PIPELINE_CACHE_DIR", str(tmp_path / "pod1"))
    with pytest.raises(Killed):
        execute(job, pod1_log)
    monkeypatch.setenv("ANIME_PIPELINE_CACHE_DIR", str(tmp_path / "pod2"))  # a fresh pod: an empty dir
    logs: list[str] = []
    md = execute(job, logs.append)
    reader = _store(s3_env, tmp_path / "reader")
    assert md["resumed_from_step"] == 2, logs  # pod 2 began where pod 1 was killed, from the store alone
    assert any("published models/r1/checkpoints/checkpoint-4 " in m for m in logs)
    ckpts = {p.split("/")[3] for p in reader.list("models/r1/checkpoints")}
    assert ckpts == {"checkpoint-4"}  # rotated ones deleted from the store as well
    assert reader.exists("models/r1/adapter/adapter_model.safetensors")
