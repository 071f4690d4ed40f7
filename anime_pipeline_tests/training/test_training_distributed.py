"""Data-parallel training: the sampler's per-rank shards, and a real 2-process `torchrun` (Gloo on CPU)
compared with one process at the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from anime_pipeline.training.data import EpochSampler
from anime_pipeline_tests.training.conftest import pipes_context, tiny_train_config

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


@pytest.mark.parametrize("n, world", [(24, 2), (10, 4), (3, 4), (7, 3)])
def test_rank_shards_are_interleaved_even_and_cover_the_order(n, world):
    base = EpochSampler(n, seed=5)
    ranks = [EpochSampler(n, seed=5, rank=r, world_size=world) for r in range(world)]
    for s in ranks:
        s.set_epoch(3)
    shards = [list(s) for s in ranks]
    per = -(-n // world)
    assert all(len(sh) == per == len(s) for sh, s in zip(shards, ranks))  # same number of steps per rank
    order = base.order(3)
    # micro-batch k over all ranks = a contiguous chunk of the single-process order (padded by wrapping)
    flat = [shards[r][k] for k in range(per) for r in range(world)]
    assert flat[:n] == order and set(flat[n:]) <= set(order)
    if n % world == 0:
        assert sorted(flat) == sorted(order)  # disjoint
    # resuming inside the shard, and the unpadded (evaluation) variant
    ranks[1].set_epoch(3, start=1)
    assert list(ranks[1]) == shards[1][1:]
    evals = [list(EpochSampler(n, shuffle=False, rank=r, world_size=world, pad=False)) for r in range(world)]
    assert sorted(i for e in evals for i in e) == list(range(n))
    # one rank is the plain order
    one = EpochSampler(n, seed=5)
    one.set_epoch(3, start=2)
    assert list(one) == order[2:]


def _run_cfg(tiny_model_dir, ds, out: Path, **kw) -> dict:
    base = dict(lora_dropout=0.0, max_steps=2, val_max_samples=3, seed=11, device="cpu", num_workers=0)
    return tiny_train_config(tiny_model_dir, ds, out, **{**base, **kw})


def _env() -> dict:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("DAGSTER_PIPES") and k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    }
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",
        PYTHONPATH=str(REPO),
    )
    return env


@pytest.mark.slow
def test_torchrun_two_processes_match_one_process_with_the_same_global_batch(
    tiny_model_dir, colour_dataset, tmp_path
):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    from anime_pipeline.launch import training_command
    from anime_pipeline.training.train import TrainConfig, train

    if not (BIN / "torchrun").exists():
        pytest.skip("torchrun is not installed in this environment")
    # one process, batch 2 × grad_accum 2 (in-process: the single-process path is the unchanged loop)
    single_events: list[dict] = []
    single = train(
        TrainConfig(**_run_cfg(tiny_model_dir, colour_dataset, tmp_path / "one", batch_size=2)),
        reporter=single_events.append,
    )

    # two processes, batch 1 × grad_accum 2 each: same global batch (4 samples per optimizer step)
    out = tmp_path / "two"
    cfg_path = tmp_path / "ddp.json"
    cfg_path.write_text(json.dumps(_run_cfg(tiny_model_dir, colour_dataset, out, batch_size=1)))
    cmd = training_command(cfg_path, gpus=2, launcher="torchrun", bin_dir=BIN)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-4000:]

    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    kinds = [e["event"] for e in events]  # rank 0 alone reports: one start, one done
    assert kinds.count("start") == 1 and kinds.count("done") == 1 and kinds.count("progress") == 2
    assert events[0]["world_size"] == 2
    done = events[-1]
    assert done["world_size"] == 2 and done["steps"] == 2
    # samples seen in total (over both ranks) = the single-process run's
    assert done["samples_seen"] == single.samples_seen == 2 * 4
    result = json.loads((out / "train_result.json").read_text())
    assert result["samples_seen"] == single.samples_seen and result["world_size"] == 2

    # exactly one adapter (and the rank-0 checkpoints), loadable by peft
    adapters = sorted(p.parent.relative_to(out).as_posix() for p in out.rglob("adapter_model.safetensors"))
    assert adapters == ["adapter", "checkpoints/checkpoint-1", "checkpoints/checkpoint-2"]
    ck = out / "checkpoints/checkpoint-2"
    assert (ck / "rng_state_0.pth").is_file() and (ck / "rng_state_1.pth").is_file()  # one RNG state per rank
    assert json.loads((ck / "run_state.json").read_text())["world_size"] == 2
    model = PeftModel.from_pretrained(
        AutoModelForImageTextToText.from_pretrained(tiny_model_dir, use_safetensors=True),
        str(out / "adapter"),
    )
    assert model.peft_config["default"].r == 4

    # DDP averages gradients; × world size over all-rank token counts gives the single-process step
    a = load_file(str(Path(single.adapter_path) / "adapter_model.safetensors"))
    b = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys()
    moved = sum(
        float(
            (b[k] - load_file(str(out / "checkpoints/checkpoint-1/adapter_model.safetensors"))[k]).abs().sum()
        )
        for k in b
    )
    assert moved > 0
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=2e-5)
    assert result["loss_history"] == pytest.approx(single.loss_history, rel=1e-4)
    # AdamW hides a gradient scale error in the weights; the (pre-clipping) gradient norm does not
    norms = [e["grad_norm"] for e in events if e["event"] == "progress"]
    assert norms == pytest.approx(
        [e["grad_norm"] for e in single_events if e["event"] == "progress"], rel=1e-4
    )
    assert result["val_loss_before"] == pytest.approx(single.val_loss_before, rel=1e-5)
    assert result["val_loss_after"] == pytest.approx(single.val_loss_after, rel=1e-4)

    # resume on two ranks: a run interrupted after step 1 (its step-2 checkpoint and adapter gone) continues
    # to step 2 → the straight two-process result (same config: max_steps is part of the resume key)
    import shutil

    res = tmp_path / "resumed"
    shutil.copytree(out, res)
    shutil.rmtree(res / "checkpoints/checkpoint-2")
    shutil.rmtree(res / "adapter")
    cfg_path.write_text(json.dumps(_run_cfg(tiny_model_dir, colour_dataset, res, batch_size=1)))
    proc = subprocess.run(
        training_command(cfg_path, gpus=2, launcher="torchrun", bin_dir=BIN),
        capture_output=True,
        text=True,
        env=_env(),
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [e["step"] for e in events if e["event"] == "resume"] == [1]
    c = load_file(str(res / "adapter" / "adapter_model.safetensors"))
    for k in b:
        torch.testing.assert_close(c[k], b[k], rtol=1e-5, atol=1e-7)
    # another world size cannot resume these checkpoints (different data order)
    from anime_pipeline.training.train import ResumeError

    with pytest.raises(ResumeError, match="world_size"):
        train(TrainConfig(**_run_cfg(tiny_model_dir, colour_dataset, res, batch_size=1)))


@pytest.mark.slow
def test_torchrun_under_dagster_pipes_reports_once_from_rank_0(tiny_model_dir, colour_dataset, tmp_path):
    from dagster_pipes import encode_param

    from anime_pipeline.launch import training_command

    if not (BIN / "torchrun").exists():
        pytest.skip("torchrun is not installed in this environment")
    out = tmp_path / "pipes"
    # the file says 5 steps and another output dir; the Pipes extras (read by every rank) say otherwise
    cfg_path = tmp_path / "file.json"
    cfg_path.write_text(
        json.dumps(
            _run_cfg(
                tiny_model_dir, colour_dataset, tmp_path / "wrong", batch_size=1, max_steps=5, save_steps=0
            )
        )
    )
    extras = {"train_config": {"output_dir": str(out), "max_steps": 1}}
    context = pipes_context(extras)
    messages = tmp_path / "messages.jsonl"
    env = _env()
    env.update(
        DAGSTER_PIPES_CONTEXT=encode_param({"data": context}),
        DAGSTER_PIPES_MESSAGES=encode_param({"path": str(messages)}),
    )
    proc = subprocess.run(
        training_command(cfg_path, gpus=2, launcher="torchrun", bin_dir=BIN),
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    methods = [json.loads(line)["method"] for line in messages.read_text().splitlines() if line.strip()]
    assert methods.count("opened") == 1 and methods.count("closed") == 1 and methods[-1] == "closed"
    assert methods.count("report_asset_materialization") == 1
    assert not (tmp_path / "wrong").exists()
    result = json.loads((out / "train_result.json").read_text())
    assert result["steps"] == 1 and result["world_size"] == 2 and result["samples_seen"] == 2 * 2
