"""(a) label masking token by token, (c) the no-silent-truncation policy, padding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from anime_pipeline.training.collator import SampleTooLongError, VideoPromptCollator, VideoSFTCollator

from .conftest import make_sample


def test_labels_are_exactly_the_answer_and_closing_eou(tiny_processor, sample3):
    proc = tiny_processor
    batch = VideoSFTCollator(proc)([sample3])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    assert set(batch) == {"input_ids", "attention_mask", "labels", "pixel_values", "pixel_attention_mask"}
    assert batch["pixel_values"].shape == (1, 3, 3, 64, 64)
    on = labels != -100
    assert torch.equal(labels[on], ids[on])  # labels are the ids themselves where set
    assert proc.decode(ids[on]) == " " + sample3["answer"] + "<end_of_utterance>"
    # token by token: contiguous span, ends with the EOU, followed only by "\n"
    pos = on.nonzero().flatten().tolist()
    assert pos == list(range(pos[0], pos[-1] + 1))
    assert int(ids[pos[-1]]) == proc.end_of_utterance_id
    assert proc.decode(ids[pos[-1] + 1 :]) == "\n"
    assert proc.decode(ids[: pos[0]]).endswith("<end_of_utterance>\nAssistant:")
    for tid in proc.image_related_ids:
        assert not bool((labels == tid).any())
    # frame timestamps and the prompt are never labelled
    assert "Frame from" not in proc.decode(ids[on]) and "Summarize" not in proc.decode(ids[on])


def test_mask_with_padding_and_several_samples(tiny_processor, sample3):
    proc = tiny_processor
    short = make_sample(["cyan"], answer="Cyan.")
    batch = VideoSFTCollator(proc)([sample3, short])
    assert batch["pixel_values"].shape == (2, 3, 3, 64, 64)
    assert bool((batch["pixel_values"][1, 1:] == 0).all())  # padded frames are all zero
    assert batch["pixel_attention_mask"][1, 1:].sum() == 0
    lab = batch["labels"][1]
    assert proc.decode(batch["input_ids"][1][lab != -100]) == " Cyan.<end_of_utterance>"
    pad = batch["attention_mask"][1] == 0
    assert pad.any() and bool((batch["input_ids"][1][pad] == proc.pad_token_id).all())
    assert bool((lab[pad] == -100).all())
    assert not pad[: int((~pad).sum())].any()  # right padding


def test_all_text_policy_still_never_labels_image_tokens(tiny_processor, sample3):
    batch = VideoSFTCollator(tiny_processor, mask_policy="all_text")([sample3])
    lab = batch["labels"][0]
    assert int((lab != -100).sum()) > 30
    for tid in tiny_processor.image_related_ids:
        assert not bool((lab == tid).any())
    with pytest.raises(ValueError):
        VideoSFTCollator(tiny_processor, mask_policy="everything")


def test_too_long_drops_frames_uniformly_and_keeps_answer(tiny_processor):
    proc = tiny_processor
    colours = ["red", "green", "blue", "yellow", "purple", "cyan", "red", "green", "blue", "yellow"]
    s = make_sample(colours, answer="The episode opens in a red world. Later everything turns yellow.")
    full = VideoSFTCollator(proc).encode(s)
    assert full.frame_indices == list(range(10))
    per_frame = (
        len(full.input_ids)
        - len(
            VideoSFTCollator(proc, max_length=10_000)
            .encode(make_sample(colours[:1], answer=s["answer"]))
            .input_ids
        )
    ) / 9
    limit = len(full.input_ids) - int(per_frame * 5.5)
    col = VideoSFTCollator(proc, max_length=limit, return_stats=True)
    enc = col.encode(s)
    assert len(enc.input_ids) <= limit
    assert enc.frame_indices[0] == 0 and enc.frame_indices[-1] == 9 and 2 <= len(enc.frame_indices) < 10
    gaps = [b - a for a, b in zip(enc.frame_indices, enc.frame_indices[1:])]
    assert max(gaps) - min(gaps) <= 1  # uniform spread
    batch = col([s])
    lab = batch["labels"][0]
    assert proc.decode(batch["input_ids"][0][lab != -100]) == " " + s["answer"] + "<end_of_utterance>"
    n = len(enc.frame_indices)
    assert batch["pixel_values"].shape[1] == n
    assert int(batch["frames_kept"][0]) == n and int(batch["frames_total"][0]) == 10
    assert int((batch["input_ids"][0] == proc.image_token_id).sum()) == 4 * n
    text = proc.decode(batch["input_ids"][0])
    from num2words import num2words

    assert f"series of {num2words(n)} frames" in text  # the intro counts the kept frames
    with pytest.raises(SampleTooLongError, match="max_length"):
        VideoSFTCollator(proc, max_length=40).encode(s)


def test_prompt_collator_left_pads_and_has_no_labels(tiny_processor, sample3):
    proc = tiny_processor
    batch = VideoPromptCollator(proc)([sample3, make_sample(["red"])])
    assert "labels" not in batch
    am = batch["attention_mask"]
    assert am[0].all() and not am[1, 0] and am[1, -1]
    assert proc.decode(batch["input_ids"][0]).endswith("<end_of_utterance>\nAssistant:")
    limited = VideoPromptCollator(proc, max_length=len(batch["input_ids"][0]) + 10, max_new_tokens=30)
    assert len(limited.encode(sample3).frame_indices) < 3


def test_non_square_frames_are_squashed_like_the_image_processor(tiny_processor):
    import numpy as np

    from .conftest import solid

    img = solid((10, 200, 30), (320, 180))
    ours = tiny_processor.frame_array(img)
    ref = tiny_processor.image_processor(
        images=[[img]],
        do_image_splitting=False,
        size={"longest_edge": 64},
        max_image_size={"longest_edge": 64},
        return_tensors="np",
    )
    assert ours.shape == (3, 64, 64)
    np.testing.assert_allclose(ours, ref["pixel_values"][0][0], atol=1e-6)
    square = solid((10, 200, 30))
    ref2 = tiny_processor.image_processor(
        images=[[square]],
        do_image_splitting=False,
        size={"longest_edge": 64},
        max_image_size={"longest_edge": 64},
        return_tensors="np",
    )
    np.testing.assert_allclose(tiny_processor.frame_array(square), ref2["pixel_values"][0][0], atol=1e-6)


REAL_PREPROCESSOR = (
    Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "smolvlm2-500m-preprocessor_config.json"
)


@pytest.fixture(scope="module")
def real_processor(tiny_model_dir, tmp_path_factory):
    """FramesProcessor with the real SmolVLM2-500M preprocessor config (512 px, LANCZOS) and the tiny
    tokenizer (the real one is not available offline; the image path does not use it)."""
    from transformers import AutoImageProcessor

    from anime_pipeline.training.processor import FramesProcessor, load_processor

    d = tmp_path_factory.mktemp("real-pre")
    (d / "preprocessor_config.json").write_text(REAL_PREPROCESSOR.read_text())
    ip = AutoImageProcessor.from_pretrained(str(d))
    assert int(ip.resample) == 1  # LANCZOS, as the config says
    return FramesProcessor(
        tokenizer=load_processor(tiny_model_dir).tokenizer,
        image_processor=ip,
        image_seq_len=64,
        image_size=512,
        max_side=512,
    )


def _noise(size, seed=0):
    from PIL import Image

    w, h = size
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


SIZES = [(160, 120), (512, 288), (640, 360), (64, 64), (120, 160), (33, 700), (513, 289)]


@pytest.mark.parametrize("which", ["tiny", "real500m", "tiny_max_side_96"])
def test_fast_image_path_equals_the_hf_image_processor(which, tiny_processor, real_processor):
    import dataclasses

    proc = {
        "tiny": tiny_processor,
        "real500m": real_processor,
        "tiny_max_side_96": dataclasses.replace(tiny_processor, max_side=96),
    }[which]
    frames = [_noise(size, seed=i) for i, size in enumerate(SIZES)]
    for img in frames:
        fast, ref = proc.frame_array(img), proc.frame_array(img, fast=False)
        assert fast.shape == ref.shape == (3, proc.image_size, proc.image_size) and fast.dtype == np.float32
        np.testing.assert_allclose(fast, ref, rtol=0, atol=1e-6, err_msg=f"{which} {img.size}")
    # the whole batch, with padding frames, and the uint8 route normalised afterwards
    batch = [frames[:3], frames[3:]]
    fast, ref = proc.images(batch), proc.images(batch, fast=False)
    np.testing.assert_allclose(fast["pixel_values"].numpy(), ref["pixel_values"].numpy(), rtol=0, atol=1e-6)
    assert torch.equal(fast["pixel_attention_mask"], ref["pixel_attention_mask"])
    u8 = proc.images(batch, uint8=True)
    assert u8["pixel_values"].dtype == torch.uint8
    assert torch.equal(u8["pixel_attention_mask"], fast["pixel_attention_mask"])
    norm = proc.normalize_pixels(u8["pixel_values"], u8["pixel_attention_mask"])
    torch.testing.assert_close(norm, fast["pixel_values"], rtol=0, atol=1e-6)
    assert not norm[0, 3:].any()  # padding frames stay zero


def test_fast_path_handles_non_rgb_and_arrays(real_processor):
    img = _noise((300, 200)).convert("L")
    np.testing.assert_allclose(
        real_processor.frame_array(img), real_processor.frame_array(img, fast=False), rtol=0, atol=1e-6
    )
    arr = np.asarray(_noise((90, 60)))
    np.testing.assert_allclose(
        real_processor.frame_array(arr), real_processor.frame_array(arr, fast=False), rtol=0, atol=1e-6
    )


def test_uint8_collator_batch_normalises_to_the_float_batch(tiny_processor, sample3):
    two = make_sample(["cyan", "red"], answer="Two frames.", size=(96, 54))
    f32 = VideoSFTCollator(tiny_processor)([sample3, two])
    u8 = VideoSFTCollator(tiny_processor, uint8_pixels=True)([sample3, two])
    assert (
        u8["pixel_values"].dtype == torch.uint8
        and u8["pixel_values"].element_size() * 4 == f32["pixel_values"].element_size()
    )
    from anime_pipeline.training.train import prepare_batch

    got = prepare_batch(u8, torch.device("cpu"), tiny_processor)
    torch.testing.assert_close(got["pixel_values"], f32["pixel_values"], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="processor"):
        prepare_batch(u8, torch.device("cpu"))
