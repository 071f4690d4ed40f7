"""Tiny model build, (d) frozen vision tower / LoRA placement, (e) cached features == pixels."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from anime_pipeline.training.collator import VideoSFTCollator
from anime_pipeline.training.config import TrainConfig
from anime_pipeline.training.model import (
    ModelSetupError,
    answer_loss,
    encode_frames,
    freeze_vision,
    load_for_training,
    param_report,
    restore_forward,
    smolvlm_parts,
    unwrap,
)

from .conftest import make_sample

# The real config class (issue 18), so a renamed or retyped field breaks these tests. load_for_training
# reads only the model/adapter fields; the data and output paths are placeholders it never opens.
CFG = TrainConfig(
    base_model="tiny",
    train_samples="unused.parquet",
    output_dir="unused",
    lora_r=4,
    lora_alpha=8,
    lora_dropout=0.0,
    use_dora=False,
    gradient_checkpointing=True,
    device="cpu",
)


def test_tiny_model_is_loadable_offline_and_idempotent(tiny_model_dir):
    from transformers import AutoModelForImageTextToText

    from anime_pipeline.training.tiny import IMAGE_SEQ_LEN, build_tiny_model

    marker = json.loads((tiny_model_dir / "tiny_model.json").read_text())
    mtime = (tiny_model_dir / "model.safetensors").stat().st_mtime_ns
    assert build_tiny_model(tiny_model_dir) == tiny_model_dir
    assert (tiny_model_dir / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not rebuilt
    assert not [p for p in tiny_model_dir.parent.iterdir() if p.name.startswith(".")]  # no temp leftovers
    m = AutoModelForImageTextToText.from_pretrained(tiny_model_dir)
    assert m.config.scale_factor == 4 and m.config.vision_config.image_size == 64
    assert m.model.image_seq_len == IMAGE_SEQ_LEN == 4 == marker["image_seq_len"]
    tc = m.config.text_config
    assert tc.num_attention_heads != tc.num_key_value_heads  # GQA
    assert m.lm_head.weight.data_ptr() != m.model.text_model.embed_tokens.weight.data_ptr()
    assert (
        json.loads((tiny_model_dir / "preprocessor_config.json").read_text())["do_image_splitting"] is False
    )
    assert (tiny_model_dir / "chat_template.jinja").read_text() == __import__(
        "anime_pipeline.training.prompt", fromlist=["x"]
    ).chat_template()


def test_special_tokens_carry_real_names(tiny_processor):
    tok = tiny_processor.tokenizer
    for t in (
        "<|im_start|>",
        "<|im_end|>",
        "<|endoftext|>",
        "<image>",
        "<fake_token_around_image>",
        "<global-img>",
        "<row_1_col_1>",
        "<row_6_col_6>",
        "<end_of_utterance>",
    ):
        assert tok.convert_tokens_to_ids(t) != tok.unk_token_id or t == "<|endoftext|>"
        assert tok.tokenize(t) == [t]
    assert tok.eos_token == "<end_of_utterance>" and tok.pad_token == "<|im_end|>"
    # arbitrary English round-trips through the byte-level BPE
    s = "Zebras don't fly, 1998: über-weird!"
    assert tok.decode(tok(s, add_special_tokens=False)["input_ids"]) == s


@pytest.fixture
def lora_model(tiny_model_dir):
    torch.manual_seed(0)
    return load_for_training(str(tiny_model_dir), CFG)


def test_frozen_tower_no_grad_and_lora_only_on_text(lora_model, tiny_processor, sample3):
    model = lora_model
    vision, connector, text = smolvlm_parts(model)
    grad_mode = []
    vision.embeddings.register_forward_hook(lambda *a: grad_mode.append(torch.is_grad_enabled()))
    outputs = []
    connector.register_forward_hook(lambda m, i, o: outputs.append(o))
    batch = VideoSFTCollator(tiny_processor)([sample3, make_sample(["red"], answer="Red.")])
    loss_sum, n = answer_loss(model, batch)
    (loss_sum / n).backward()
    assert grad_mode == [False]  # the vision forward ran, without autograd
    assert not outputs[0].requires_grad
    for name, p in list(vision.named_parameters()) + list(connector.named_parameters()):
        assert not p.requires_grad and p.grad is None, name
    lora = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert lora and all("text_model" in n for n in lora)
    assert all(p.requires_grad and p.grad is not None for p in lora.values())
    assert any(float(p.grad.abs().sum()) > 0 for n, p in lora.items() if "lora_B" in n)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == set(lora)
    lora_modules = [n for n, m in model.named_modules() if hasattr(m, "lora_A") and len(m.lora_A)]
    assert len(lora_modules) == 2 * 7 and all(".text_model." in n for n in lora_modules)
    kinds = {n.rsplit(".", 1)[-1] for n in lora_modules}
    assert kinds == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}

    def checkpointing(m):
        flag = getattr(m, "is_activation_checkpointing", None)
        return flag if flag is not None else m.is_gradient_checkpointing

    assert checkpointing(text) and not checkpointing(vision)
    rep = param_report(model)
    assert rep["vision"]["trainable"] == rep["connector"]["trainable"] == rep["lm_head"]["trainable"] == 0
    assert rep["text"]["trainable"] == rep["total"]["trainable"] == sum(p.numel() for p in lora.values())
    assert rep["vision"]["frozen"] > 0 and rep["connector"]["frozen"] > 0 and rep["lm_head"]["frozen"] > 0
    # the model's own loss agrees with ours (label-position LM head)
    with torch.no_grad():
        ref = unwrap(model)(**batch).loss
    assert torch.allclose(ref, loss_sum.detach() / n, atol=1e-5)


def test_freeze_vision_patches_once_and_restore_forward_undoes_it(lora_model):
    vision, connector, _ = smolvlm_parts(lora_model)
    hooks = len(connector._forward_hooks)
    wrapper = vision.__dict__["forward"]  # the no-grad wrapper is an instance attribute
    freeze_vision(lora_model)  # idempotent: no second wrapper, no second cast hook
    assert vision.__dict__["forward"] is wrapper and len(connector._forward_hooks) == hooks
    restore_forward(vision)
    assert "forward" not in vision.__dict__  # the class's forward again
    vision.requires_grad_(True)
    x = torch.zeros(1, 3, vision.config.image_size, vision.config.image_size)
    assert vision(pixel_values=x).last_hidden_state.requires_grad  # autograd runs through the tower
    vision.requires_grad_(False)
    freeze_vision(lora_model)  # wraps it again: restore_forward cleared the mark
    assert "forward" in vision.__dict__ and len(connector._forward_hooks) == hooks


def test_dora_targets_text_only(tiny_model_dir):
    cfg = dataclasses.replace(CFG, use_dora=True)
    model = load_for_training(str(tiny_model_dir), cfg)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lora_magnitude_vector" in n for n in trainable)
    assert all("text_model" in n for n in trainable)


def test_qlora_refuses_cpu(tiny_model_dir):
    cfg = dataclasses.replace(CFG, qlora=True)
    with pytest.raises(ModelSetupError, match="CUDA"):
        load_for_training(str(tiny_model_dir), cfg)


def test_cached_features_give_the_pixel_loss(lora_model, tiny_processor, sample3, tmp_path):
    from anime_pipeline.training.feature_cache import FeatureCache

    model = lora_model
    with torch.no_grad():  # make the adapters non-trivial
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    batch = VideoSFTCollator(tiny_processor)([sample3, make_sample(["cyan", "red"], answer="Two frames.")])
    model.eval()
    cache = FeatureCache(tmp_path / "fc", model)
    with torch.no_grad():
        pixel_loss = unwrap(model)(**batch).loss
        feats = cache.get(model, batch["pixel_values"], batch["pixel_attention_mask"])
        assert [f.shape for f in feats] == [(3, 4, 128), (2, 4, 128)]
        assert cache.misses == 4 and cache.hits == 0  # "red" appears twice: computed once
        s, n = answer_loss(model, batch, image_features=feats)
        feats2 = cache.get(model, batch["pixel_values"], batch["pixel_attention_mask"])
        s2, n2 = answer_loss(model, batch, image_features=feats2)
    assert cache.hits == 5
    assert len(list((tmp_path / "fc").rglob("*.safetensors"))) == 4
    torch.testing.assert_close(s / n, pixel_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s2 / n2, pixel_loss, rtol=1e-5, atol=1e-5)
    direct = encode_frames(model, batch["pixel_values"], batch["pixel_attention_mask"])
    torch.testing.assert_close(direct[0], feats[0])


def test_cache_keyed_by_frame_id_skips_pixels_on_the_second_epoch(
    lora_model, tiny_processor, tmp_path, monkeypatch
):
    from anime_pipeline.training.data import ShardVideoDataset
    from anime_pipeline.training.feature_cache import FeatureCache
    from anime_pipeline.training.processor import FramesProcessor

    from .conftest import write_dataset

    titles = [
        {"mal_id": 1, "colours": ["red", "red", "blue"], "synopsis": "Red then blue."},
        {"mal_id": 2, "colours": ["green", "cyan"], "synopsis": "Green then cyan."},
    ]
    ds = ShardVideoDataset(write_dataset(tmp_path, titles), tmp_path)
    model = lora_model
    model.eval()
    cache = FeatureCache(tmp_path / "fc", model, preprocessing=tiny_processor.preprocessing_id())
    collator = VideoSFTCollator(tiny_processor, feature_cache=cache)
    built = []
    real_uint8 = FramesProcessor.frame_uint8
    monkeypatch.setattr(
        FramesProcessor, "frame_uint8", lambda self, img: built.append(1) or real_uint8(self, img)
    )

    def epoch():
        batch = collator([ds[0], ds[1]])
        assert batch["frame_ids"] == [ds[0]["frame_ids"], ds[1]["frame_ids"]]
        with torch.no_grad():
            feats = cache.get(
                model,
                batch.get("pixel_values"),
                batch.get("pixel_attention_mask"),
                frame_ids=batch["frame_ids"],
            )
            return batch, answer_loss(model, batch, image_features=feats)

    b1, (s1, n1) = epoch()
    assert "pixel_values" in b1 and len(built) == 5
    assert cache.misses == 5 and cache.hits == 0  # ids, not pixels: the two identical red frames are distinct
    with torch.no_grad():
        pixel_loss = unwrap(model)(
            **{
                k: b1[k]
                for k in ("input_ids", "attention_mask", "labels", "pixel_values", "pixel_attention_mask")
            }
        ).loss
    torch.testing.assert_close(s1 / n1, pixel_loss, rtol=1e-5, atol=1e-5)

    b2, (s2, n2) = epoch()  # second epoch: everything cached
    assert "pixel_values" not in b2 and "pixel_attention_mask" not in b2
    assert len(built) == 5 and cache.hits == 5 and cache.misses == 5  # no frame was preprocessed again
    torch.testing.assert_close(s2 / n2, pixel_loss, rtol=1e-5, atol=1e-5)

    # a batch mixing a cached and a new sample: pixels only for the new one
    ds3 = ShardVideoDataset(
        write_dataset(
            tmp_path / "b", [{"mal_id": 3, "colours": ["yellow", "purple"], "synopsis": "Yellow."}]
        ),
        tmp_path / "b",
    )
    b3 = collator([ds[0], ds3[0]])
    assert len(built) == 7 and not b3["pixel_values"][0].any() and b3["pixel_values"][1, :2].all()
    with torch.no_grad():
        feats = cache.get(model, b3["pixel_values"], b3["pixel_attention_mask"], frame_ids=b3["frame_ids"])
    assert [f.shape[0] for f in feats] == [3, 2] and cache.misses == 7 and cache.hits == 8
    # the key covers the preprocessing: another max_side is another entry
    other = FeatureCache(
        tmp_path / "fc",
        model,
        preprocessing=dataclasses.replace(tiny_processor, max_side=96).preprocessing_id(),
    )
    assert not other.cached(ds[0]["frame_ids"]) and cache.cached(ds[0]["frame_ids"])
    with pytest.raises(RuntimeError, match="not cached"):
        other.get(model, None, frame_ids=[ds[0]["frame_ids"]])
