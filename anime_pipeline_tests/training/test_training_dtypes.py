"""The predecessor's QLoRA failure (transformers #41453): vision/connector and text model in different dtypes.

On CPU we cannot quantize, but we can reproduce the dtype split that 4-bit loading (or peft's blanket fp32
upcast) leaves behind, and check that the training forward still works and keeps the frozen tower
out of quantisation and autograd. Which modules 4-bit loading converts is tested on the real architecture
with transformers' own quantizer in test_training_qlora.py.
"""

import pytest
import torch

from anime_pipeline.training.collator import VideoSFTCollator
from anime_pipeline.training.model import answer_loss, load_base_model
from anime_pipeline.training.processor import load_processor

from .conftest import make_sample


@pytest.mark.parametrize("text_dtype", [torch.bfloat16, torch.float16])
def test_forward_with_fp32_vision_and_low_precision_text(tiny_model_dir, text_dtype):
    model = load_base_model(str(tiny_model_dir), device="cpu", dtype="fp32")
    proc = load_processor(tiny_model_dir)
    batch = VideoSFTCollator(proc)([make_sample(["red", "blue", "green"], answer="A red then blue world.")])
    ref_sum, ref_n = answer_loss(model, batch)
    model.model.text_model.to(text_dtype)  # what a 4-bit text model computes in
    model.lm_head.to(text_dtype)
    assert next(model.model.vision_model.parameters()).dtype == torch.float32
    loss_sum, n = answer_loss(model, batch)
    assert n == ref_n > 0 and torch.isfinite(loss_sum)
    assert float(loss_sum) == pytest.approx(float(ref_sum), rel=0.05)
