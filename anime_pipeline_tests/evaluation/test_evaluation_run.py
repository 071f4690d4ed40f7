"""`evaluate_adapter` evaluates as trained: the run's frames per sample and token budget, the base it was
trained on (4-bit for QLoRA where possible, stated otherwise), cleaned captions."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import torch

from anime_pipeline_tests.training.conftest import colour_titles, tiny_model_dir, write_dataset  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing.*:FutureWarning")


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):  # noqa: F811
    from anime_pipeline.training.train import TrainConfig, train

    home = tmp_path_factory.mktemp("eval")
    train_t, val_t = colour_titles()
    long_answer = " ".join(["The red world turns blue and the white square drifts left."] * 30)
    ds = {
        "train": write_dataset(home, train_t[:4], split="train"),
        "val": write_dataset(
            home, [*val_t[:2], {"mal_id": 9998, "colours": ["red"], "synopsis": long_answer}], split="val"
        ),
    }
    cfg = TrainConfig(
        base_model=str(tiny_model_dir),
        train_samples=str(ds["train"]),
        data_home=str(home),
        output_dir=str(home / "models" / "run"),
        max_steps=1,
        save_steps=0,
        lora_r=4,
        lora_alpha=8,
        max_frames=2,
        max_length=100,
        torch_threads=1,
        batch_size=2,
    )
    res = train(cfg)
    return {"home": home, "val": ds["val"], "train": ds["train"], "adapter": res.adapter_path}


def test_evaluates_with_the_training_frames_and_budget_and_cleans_captions(
    trained,
    tiny_model_dir,  # noqa: F811
    monkeypatch,
):
    import anime_pipeline.training.inference as inference
    from anime_pipeline.evaluation.run import evaluate_adapter, training_settings

    assert training_settings(trained["adapter"]) == {
        "max_frames": 2,
        "max_length": 100,
        "max_side": None,
        "qlora": False,
        "dtype": "auto",
        "attn_implementation": "auto",
    }
    frames_seen, lengths = [], []
    real_generate, real_loss = inference.generate_captions, inference.compute_loss

    def spy_generate(model, processor, samples, **kw):
        frames_seen.extend(len(s["images"]) for s in samples)
        # what a byte-level BPE can decode from stray bytes: a control character and U+FFFD
        return [c + " \x18end\ufffd" for c in real_generate(model, processor, samples, **kw)]

    def spy_loss(model, processor, samples, **kw):
        lengths.append(kw.get("max_length"))
        return real_loss(model, processor, samples, **kw)

    monkeypatch.setattr(inference, "generate_captions", spy_generate)
    monkeypatch.setattr(inference, "compute_loss", spy_loss)
    logs: list[str] = []
    res = evaluate_adapter(
        base_model=str(tiny_model_dir),
        adapter_dir=trained["adapter"],
        val_samples=trained["val"],
        train_samples=trained["train"],
        data_home=trained["home"],
        out_dir=trained["home"] / "eval",
        max_new_tokens=4,
        batch_size=2,
        log=logs.append,
    )
    assert frames_seen == [2, 2, 2, 2]  # base + fine-tuned, 2 val titles, 2 of 4 frames each (as trained)
    assert lengths == [100, 100]
    # the over-long val sample is skipped and listed, as in training
    assert res.num_samples == 2 and [s["mal_id"] for s in res.extras["skipped"]] == [9998]
    assert res.extras["eval_base"] == "as trained (no quantization)"
    table = pl.read_parquet(res.captions_path)
    for col in ("caption_base", "caption_finetuned"):
        assert all(c.endswith(" end") and "\x18" not in c and "\ufffd" not in c for c in table[col])
    assert "\x18" not in res.examples_markdown()
    card = (Path(trained["adapter"]) / "README.md").read_text()
    assert "| Frames per sample | 2 |" in card


def test_a_qlora_adapter_is_evaluated_on_the_4bit_base_or_says_why_not(trained, tiny_model_dir, monkeypatch):  # noqa: F811
    from anime_pipeline.evaluation.run import evaluate_adapter
    from anime_pipeline.training import inference
    from anime_pipeline.training.model import qlora_supported

    loads = []
    real_load = inference.load_model
    monkeypatch.setattr(inference, "load_model", lambda *a, **kw: loads.append(kw) or real_load(*a, **kw))
    cfg = json.loads((trained["home"] / "models/run/train_config.json").read_text())
    res = evaluate_adapter(
        base_model=str(tiny_model_dir),
        adapter_dir=trained["adapter"],
        val_samples=trained["val"],
        train_samples=None,
        data_home=trained["home"],
        out_dir=trained["home"] / "eval-q",
        max_new_tokens=2,
        batch_size=2,
        train_config=dict(cfg, qlora=True),
        log=lambda m: None,
    )
    why = qlora_supported()
    if why is None:  # CUDA + bitsandbytes: both rows on the 4-bit base, adapter unmerged
        assert [kw["qlora"] for kw in loads] == [True, True]
        assert res.extras["eval_base"].startswith("4-bit")
    else:
        assert not torch.cuda.is_available() or why
        assert [kw["qlora"] for kw in loads] == [False, False]
        assert (
            res.extras["eval_base"] == f"full precision: the adapter was trained on a 4-bit base, but {why}"
        )
