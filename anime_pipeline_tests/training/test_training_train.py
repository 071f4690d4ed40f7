"""Training loop: (f) resume after interruption, (g) the CLI, the final adapter, inference helpers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anime_pipeline.training.train import ResumeError, TrainConfig, TrainResult, train
from anime_pipeline_tests.training.conftest import pipes_context, tiny_train_config

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


class Interrupt(RuntimeError):
    pass


def _cfg(tiny_model_dir, ds, out: Path, **kw) -> TrainConfig:
    base = dict(lora_dropout=0.1, batch_size=2, max_steps=6, save_steps=2, val_max_samples=2, seed=7)
    return TrainConfig(**tiny_train_config(tiny_model_dir, ds, out, **{**base, **kw}))


def test_config_json_roundtrip(tmp_path):
    cfg = TrainConfig(
        base_model="m", train_samples="t.parquet", output_dir="o", max_length=2048, use_dora=True
    )
    p = tmp_path / "c.json"
    cfg.to_json(p)
    assert TrainConfig.from_json(p) == cfg
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        TrainConfig.from_dict({**cfg.to_dict(), "nope": 1})
    with pytest.raises(ValueError):
        TrainConfig(base_model="m", train_samples="t", output_dir="o", lr_schedule="weird")


def test_resume_after_interruption_matches_uninterrupted_run(tiny_model_dir, colour_dataset, tmp_path):
    events: list[dict] = []
    straight = train(_cfg(tiny_model_dir, colour_dataset, tmp_path / "a"), reporter=events.append)
    assert straight.steps == 6 and len(straight.loss_history) == 6
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["step"] for e in progress] == [1, 2, 3, 4, 5, 6]
    assert all(e["samples_per_s"] > 0 and "loss" in e for e in progress)
    # Trainer steps our schedule: warmup_steps=1 trains the first step at the full lr (not at 0), then cosine
    from anime_pipeline.training.train import lr_factor

    cfg = _cfg(tiny_model_dir, colour_dataset, tmp_path / "a")
    assert [e["lr"] for e in progress] == pytest.approx([cfg.lr * lr_factor(cfg, s, 6) for s in range(6)])
    assert progress[0]["lr"] == pytest.approx(cfg.lr) and progress[-1]["lr"] < 0.1 * cfg.lr

    def stop_at_3(event):
        if event["event"] == "progress" and event["step"] == 3:
            raise Interrupt

    out = tmp_path / "b"
    with pytest.raises(Interrupt):
        train(_cfg(tiny_model_dir, colour_dataset, out), reporter=stop_at_3)
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["checkpoint-2"] and not (out / "adapter").exists()
    resumed_events: list[dict] = []
    resumed = train(_cfg(tiny_model_dir, colour_dataset, out), reporter=resumed_events.append)
    assert resumed.resumed_from_step == 2 and resumed.steps == 6
    assert [e["step"] for e in resumed_events if e["event"] == "progress"] == [3, 4, 5, 6]
    assert not [e for e in resumed_events if e["event"] == "eval" and e["phase"] == "before"]
    # same data order, same RNG streams (dropout 0.1) → the same losses and the same adapter
    assert resumed.loss_history == pytest.approx(straight.loss_history, rel=1e-4, abs=1e-5)
    assert resumed.val_loss_before == pytest.approx(straight.val_loss_before)
    assert resumed.val_loss_after == pytest.approx(straight.val_loss_after, rel=1e-4)
    assert resumed.samples_seen == straight.samples_seen == 6 * 2 * 2
    from safetensors.torch import load_file

    a = load_file(Path(straight.adapter_path) / "adapter_model.safetensors")
    b = load_file(Path(resumed.adapter_path) / "adapter_model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-4", "checkpoint-6"]
    opt = torch.load(out / "checkpoints/checkpoint-6/optimizer.pt", weights_only=True)
    assert opt["state"]
    # a finished run resumed again does nothing more
    again = train(_cfg(tiny_model_dir, colour_dataset, out))
    assert again.steps == 6 and again.resumed_from_step == 6
    with pytest.raises(ResumeError):
        train(_cfg(tiny_model_dir, colour_dataset, out, lora_r=8))
    # a changed schedule (learning rate, its shape, the number of steps or epochs) is refused, by name
    for change in (
        {"lr_schedule": "linear"},
        {"lr": 1e-3},
        {"max_steps": 8},
        {"warmup_steps": 2},
        {"max_steps": None, "epochs": 2.0},
    ):
        with pytest.raises(ResumeError, match=f"{next(iter(change))}: .* in the checkpoint, .* now"):
            train(_cfg(tiny_model_dir, colour_dataset, out, **change))
    fresh = train(_cfg(tiny_model_dir, colour_dataset, out, resume=False, max_steps=1, save_steps=0))
    assert fresh.resumed_from_step is None and fresh.steps == 1


def test_result_and_adapter_are_loadable(tiny_model_dir, colour_dataset, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from anime_pipeline.training.data import ShardVideoDataset
    from anime_pipeline.training.inference import compute_loss, generate_captions, load_model
    from anime_pipeline.training.processor import load_processor

    cfg = _cfg(
        tiny_model_dir,
        colour_dataset,
        tmp_path / "r",
        max_steps=3,
        save_steps=0,
        feature_cache=True,
        use_dora=True,
        max_length=100,
    )
    res = train(cfg)
    assert isinstance(res, TrainResult)
    assert res.adapter_bytes > 0 and res.trainable_params > 0 and res.frozen_params > res.trainable_params
    assert res.frames_dropped > 0  # max_length=100 forces dropping frames
    assert res.feature_cache_misses > 0 and res.feature_cache_hits > 0
    assert res.peak_memory_bytes > 0 and res.peak_memory_kind == "cpu_max_rss" and res.dtype == "float32"
    assert res.params["vision"]["trainable"] == 0 and res.params["text"]["trainable"] == res.trainable_params
    assert set(os.listdir(res.adapter_path)) >= {"adapter_config.json", "adapter_model.safetensors"}
    saved = json.loads((tmp_path / "r/train_result.json").read_text())
    assert saved["steps"] == 3 and TrainConfig.from_json(tmp_path / "r/train_config.json") == cfg
    meta = res.metadata()
    assert all(v is not None and not isinstance(v, (dict, list)) for v in meta.values())

    base = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    peft_model = PeftModel.from_pretrained(base, res.adapter_path)
    assert any("lora_" in n for n, _ in peft_model.named_parameters())

    proc = load_processor(tiny_model_dir)
    samples = [ShardVideoDataset(colour_dataset["val"], colour_dataset["home"])[i] for i in range(3)]
    base_loss = compute_loss(load_model(tiny_model_dir), proc, samples)
    tuned = load_model(tiny_model_dir, res.adapter_path)
    tuned_loss = compute_loss(tuned, proc, samples)
    assert tuned_loss != pytest.approx(base_loss)
    caps = generate_captions(tuned, proc, samples, max_new_tokens=8, batch_size=2)
    single = [generate_captions(tuned, proc, [s], max_new_tokens=8)[0] for s in samples]
    assert caps == single and all(isinstance(c, str) for c in caps)


def test_cli_runs_training_and_writes_a_peft_adapter(tiny_model_dir, colour_dataset, tmp_path):
    cfg = _cfg(tiny_model_dir, colour_dataset, tmp_path / "cli", max_steps=2, save_steps=1, num_workers=1)
    cfg_path = tmp_path / "train.json"
    cfg.to_json(cfg_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_PIPES")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "anime_pipeline.training", "--config", str(cfg_path), "--set", "log_every=1"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("progress") == 2
    done = events[-1]
    assert done["steps"] == 2 and Path(done["adapter_path"]).is_dir()

    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    model = PeftModel.from_pretrained(
        AutoModelForImageTextToText.from_pretrained(tiny_model_dir), done["adapter_path"]
    )
    assert model.peft_config["default"].r == 4


def test_cli_flags_are_the_config_fields(tmp_path):
    from anime_pipeline.training.__main__ import build_config, parse_cli

    cfg = TrainConfig(base_model="m", train_samples="t.parquet", output_dir="o", lr=2e-4, max_frames=64)
    path = tmp_path / "c.json"
    cfg.to_json(path)
    args = parse_cli(
        [
            "--config",
            str(path),
            "--lr",
            "1e-3",
            "--max_frames",
            "8",
            "--qlora",
            "true",
            "--no_gradient_checkpointing",
            "--set",
            "lr=5e-4",
            "--lr_schedule",
            "linear",
        ]
    )
    got = build_config(args.config, args.overrides, {"train_config": {"max_frames": 16, "seed": 3}})
    # file < Pipes extras < --set < flags; fields not given keep the file's value
    assert (got.lr, got.max_frames, got.qlora, got.gradient_checkpointing, got.lr_schedule, got.seed) == (
        1e-3,
        8,
        True,
        False,
        "linear",
        3,
    )
    assert (got.base_model, got.output_dir, got.max_steps) == ("m", "o", None)
    assert build_config(*vars(parse_cli(["--config", str(path)])).values()) == cfg
    with pytest.raises(SystemExit):
        parse_cli(["--max_frames", "many"])


def test_cli_requires_config(capsys):
    from anime_pipeline.training.__main__ import main

    with pytest.raises(SystemExit):
        main([])


def test_cli_under_dagster_pipes_reports_logs_and_materialization(tiny_model_dir, colour_dataset, tmp_path):
    from dagster_pipes import encode_param

    cfg = _cfg(tiny_model_dir, colour_dataset, tmp_path / "pipes", max_steps=2, save_steps=0)
    messages = tmp_path / "messages.jsonl"
    context = pipes_context({"train_config": cfg.to_dict()})
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_PIPES")}
    env.update(
        HF_HUB_OFFLINE="1",
        DAGSTER_PIPES_CONTEXT=encode_param({"data": context}),
        DAGSTER_PIPES_MESSAGES=encode_param({"path": str(messages)}),
    )
    proc = subprocess.run(
        [sys.executable, "-m", "anime_pipeline.training"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    msgs = [json.loads(line) for line in messages.read_text().splitlines() if line.strip()]
    methods = [m["method"] for m in msgs]
    assert "report_asset_materialization" in methods and methods[-1] == "closed"
    logs = [m["params"]["message"] for m in msgs if m["method"] == "log"]
    assert sum('"event": "progress"' in x for x in logs) == 2
    mat = next(m for m in msgs if m["method"] == "report_asset_materialization")["params"]
    assert mat["asset_key"] == "tiny_adapter"
    assert mat["metadata"]["steps"]["raw_value"] == 2
    assert Path(mat["metadata"]["adapter_path"]["raw_value"]).is_dir()


def test_cached_second_epoch_builds_no_pixels(tiny_model_dir, colour_dataset, tmp_path, monkeypatch):
    from anime_pipeline.training.processor import FramesProcessor

    built = []
    real_uint8 = FramesProcessor.frame_uint8
    monkeypatch.setattr(
        FramesProcessor, "frame_uint8", lambda self, img: built.append(1) or real_uint8(self, img)
    )
    n_train = colour_dataset["n_train"]
    cfg = _cfg(
        tiny_model_dir,
        colour_dataset,
        tmp_path / "c",
        max_steps=None,
        epochs=2,
        batch_size=4,
        grad_accum=1,
        save_steps=0,
        feature_cache=True,
        uint8_pixels=True,
    )
    res = train(cfg)
    assert res.epochs == pytest.approx(2.0)
    # every frame preprocessed exactly once: the train frames in epoch 1, the 2 val samples before training
    assert len(built) == 4 * n_train + 4 * 2
    assert res.feature_cache_misses == len(built)
    assert res.feature_cache_hits == 4 * n_train + 4 * 2  # epoch 2 + the eval after training


def test_uint8_pixels_give_the_same_run(tiny_model_dir, colour_dataset, tmp_path):
    a = train(
        _cfg(tiny_model_dir, colour_dataset, tmp_path / "f32", max_steps=2, save_steps=0, uint8_pixels=False)
    )
    b = train(
        _cfg(tiny_model_dir, colour_dataset, tmp_path / "u8", max_steps=2, save_steps=0, uint8_pixels=True)
    )
    assert b.loss_history == pytest.approx(a.loss_history, rel=1e-6, abs=1e-7)
    assert b.val_loss_after == pytest.approx(a.val_loss_after, rel=1e-6)


def test_run_name_is_deterministic_per_data_version_and_configuration():
    from anime_pipeline.training.config import run_name

    cfg = TrainConfig(base_model="m", train_samples="t.parquet", output_dir="a", lr=1e-4)
    name = run_name(cfg, "f" * 64, "v1")
    assert name.startswith("f" * 12 + "-") and len(name) == 25
    # run control (where, how often to log/save, loader workers) does not make another run
    same = TrainConfig(
        base_model="m",
        train_samples="t.parquet",
        output_dir="b",
        lr=1e-4,
        log_every=7,
        num_workers=3,
        save_steps=5,
        feature_cache=True,
    )
    assert run_name(same, "f" * 64, "v1") == name
    others = [
        run_name(
            TrainConfig(base_model="m", train_samples="t.parquet", output_dir="a", lr=2e-4), "f" * 64, "v1"
        ),
        run_name(
            TrainConfig(
                base_model="m", train_samples="t.parquet", output_dir="a", lr=1e-4, lr_schedule="linear"
            ),
            "f" * 64,
            "v1",
        ),
        run_name(cfg, "e" * 64, "v1"),
        run_name(cfg, "f" * 64, "v2"),
    ]
    assert len({name, *others}) == 5
    with pytest.raises(ValueError, match="data version"):
        run_name(cfg, "")


def test_a_sample_too_long_for_max_length_is_recorded_and_skipped(tiny_model_dir, tmp_path):
    from .conftest import colour_titles, write_dataset

    train_t, val_t = colour_titles()
    long_answer = " ".join(["The red world turns blue and the white square drifts left."] * 30)
    train_t = [*train_t[:4], {"mal_id": 9999, "colours": ["red", "blue"], "synopsis": long_answer}]
    ds = {
        "home": tmp_path,
        "train": write_dataset(tmp_path, train_t, split="train"),
        "val": write_dataset(
            tmp_path, [*val_t[:2], {"mal_id": 9998, "colours": ["red"], "synopsis": long_answer}], split="val"
        ),
    }
    events: list[dict] = []
    res = train(
        _cfg(
            tiny_model_dir,
            ds,
            tmp_path / "out",
            max_steps=1,
            save_steps=0,
            grad_accum=1,
            max_length=100,
            val_max_samples=None,
        ),
        reporter=events.append,
    )
    assert res.steps == 1 and res.train_samples == 4 and res.val_samples == 2 and res.skipped_samples == 2
    skipped = [e for e in events if e["event"] == "skipped"]
    assert [(e["mal_id"], e["split"]) for e in skipped] == [(9999, "train"), (9998, "val")]
    assert "max_length=100" in skipped[0]["error"]
    recorded = json.loads((tmp_path / "out" / "skipped.json").read_text())
    assert [r["mal_id"] for r in recorded] == [9999, 9998] and res.metadata()["skipped_samples"] == 2


def test_resume_compares_data_paths_relative_to_the_data_home(tmp_path):
    from anime_pipeline.training.train import _resume_view

    def cfg(home, train="splits/train.parquet", base="/models/base"):
        return {
            "data_home": str(tmp_path / home),
            "train_samples": str(tmp_path / home / train),
            "base_model": base,
        }

    # the same split in another machine's own dir: the same run
    assert _resume_view(cfg("pod1")) == _resume_view(cfg("pod2"))
    assert _resume_view(cfg("pod1"))["train_samples"] == "{data_home}/splits/train.parquet"
    # another split, or another base model outside the data home: not the same run
    assert _resume_view(cfg("pod1")) != _resume_view(cfg("pod2", train="splits/other.parquet"))
    assert _resume_view(cfg("pod1")) != _resume_view(cfg("pod1", base="/models/other"))
