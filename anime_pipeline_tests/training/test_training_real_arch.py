"""The real path must not rot: the real SmolVLM2-500M architecture (reference config, random weights, built
locally) fine-tuned for 2 optimizer steps at 4 frames on CPU through the training entry point
(`python -m anime_pipeline.training --config …`, what the Pipes worker runs), checked for a finite loss,
adapter-only updates, a saved and loadable adapter, and a reported peak memory.

Marked slow: each step runs the 512 px SigLIP tower on 4 × 1024 patches and the 360M text model forward,
recomputed and backward in fp32 (minutes on a busy 2-core CPU).
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import write_dataset

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(3300),
    pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning"),
]

REPO = Path(__file__).resolve().parents[2]


def _bench_common():
    spec = importlib.util.spec_from_file_location("_bench_common", REPO / "benchmarks" / "_common.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def real_arch_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """Processor files configured like SmolVLM2-500M (512 px, 64 tokens per frame; the tiny tokenizer, ids
    remapped) and random-init weights of the reference architecture, saved in bf16 (1 GB)."""
    from transformers import AutoConfig, AutoModelForImageTextToText

    dest = _bench_common().real_processor_dir(
        tmp_path_factory.mktemp("real") / "smolvlm2-500m-random", tiny_model_dir
    )
    cfg = AutoConfig.from_pretrained(str(dest))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForImageTextToText.from_config(cfg, dtype=torch.bfloat16)
    assert sum(p.numel() for p in model.parameters()) == 507_482_304
    model.save_pretrained(str(dest))
    del model
    return dest


def test_real_architecture_trains_two_steps_through_the_entry_point(real_arch_dir, tmp_path):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForImageTextToText

    titles = [
        {
            "mal_id": 1,
            "colours": ["red", "red", "blue", "blue", "green", "cyan"],
            "synopsis": "The episode opens in a red world. Later everything turns blue.",
        },
        {
            "mal_id": 2,
            "colours": ["yellow", "purple", "purple", "cyan"],
            "synopsis": "A yellow town; later it turns purple.",
        },
    ]
    samples = write_dataset(tmp_path, titles, size=(160, 90))
    out = tmp_path / "run"
    cfg = {
        "base_model": str(real_arch_dir),
        "train_samples": str(samples),
        "data_home": str(tmp_path),
        "output_dir": str(out),
        "max_frames": 4,
        "max_steps": 2,
        "batch_size": 1,
        "grad_accum": 1,
        "lora_r": 4,
        "lora_alpha": 8,
        "lora_dropout": 0.0,
        "lr": 1e-3,
        "warmup_steps": 0,
        "save_steps": 1,
        "gradient_checkpointing": True,
        "device": "cpu",
        "torch_threads": 2,
        "seed": 0,
    }
    cfg_path = tmp_path / "train.json"
    cfg_path.write_text(json.dumps(cfg))
    env = {k: v for k, v in os.environ.items() if not k.startswith("DAGSTER_PIPES")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run(
        [sys.executable, "-m", "anime_pipeline.training", "--config", str(cfg_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=3000,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    start, done = events[0], events[-1]
    assert start["event"] == "start" and done["event"] == "done" and done["steps"] == 2

    result = json.loads((out / "train_result.json").read_text())
    assert len(result["loss_history"]) == 2 and all(math.isfinite(x) for x in result["loss_history"])
    assert result["peak_memory_kind"] == "cpu_max_rss" and result["peak_memory_bytes"] > 2e9  # fp32 weights
    print(
        f"\nreal 500M architecture, 2 steps at 4 frames on CPU: losses {result['loss_history']}, "
        f"peak RSS {result['peak_memory_bytes'] / 2**30:.2f} GiB, {result['train_seconds']:.1f} s training"
    )

    # only the adapters were trainable: LoRA on the 224 text-model projections, nothing in the tower,
    # connector or LM head
    params = result["params"]
    assert (
        params["vision"]["trainable"]
        == params["connector"]["trainable"]
        == params["lm_head"]["trainable"]
        == 0
    )
    assert params["total"]["frozen"] == 507_482_304
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert all(".text_model." in k and ".lora_" in k for k in adapter)
    assert (
        len(adapter) == 2 * 224 and sum(t.numel() for t in adapter.values()) == params["total"]["trainable"]
    )
    # and they changed: lora_B starts at zero; after the first step it is not, and step 2 moved it again
    first = load_file(str(out / "checkpoints" / "checkpoint-1" / "adapter_model.safetensors"))
    assert all(float(adapter[k].abs().sum()) > 0 for k in adapter if "lora_B" in k)
    assert any(not torch.equal(first[k], adapter[k]) for k in adapter)

    # saved and loadable by peft on the base model
    base = AutoModelForImageTextToText.from_pretrained(str(real_arch_dir), dtype=torch.bfloat16)
    model = PeftModel.from_pretrained(base, str(out / "adapter"))
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(adapter)
    key = next(k for k in adapter if "lora_B" in k)
    match = [
        v
        for k, v in loaded.items()
        if k.replace(".default", "").endswith(key.split("base_model.model.", 1)[-1])
    ]
    assert match and torch.allclose(match[0].float(), adapter[key].float(), atol=1e-2)
