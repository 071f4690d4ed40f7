"""QLoRA on the real SmolVLM2-500M architecture: which modules transformers' own bitsandbytes quantizer
turns into 4-bit layers, and the 4-bit parameter count.

bitsandbytes cannot run here (no CUDA), so the quantizer's real code path is run on a meta-device model
built from the reference config: `Bnb4BitHfQuantizer._process_model_before_weight_loading` (the skip list
from our `BitsAndBytesConfig` + the model's keep-in-fp32 modules) → `replace_with_bnb_linear`, with
`bnb.nn.Linear4bit` replaced by a stand-in class. The resulting module types are what `from_pretrained`
would load in 4 bit.
"""

from __future__ import annotations

import json
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from anime_pipeline.training.model import QLORA_SKIP_MODULES, param_report, qlora_config

REAL_CONFIG = Path(__file__).resolve().parents[2] / "benchmarks" / "data" / "smolvlm2-500m-config.json"


class FakeLinear4bit(nn.Linear):
    """Stands in for `bitsandbytes.nn.Linear4bit` (same constructor arguments)."""

    def __init__(
        self,
        in_features,
        out_features,
        bias=True,
        compute_dtype=None,
        compress_statistics=True,
        quant_type="fp4",
        quant_storage=torch.uint8,
        device=None,
    ):
        super().__init__(in_features, out_features, bias, device=device)
        self.quant_storage = quant_storage


def _quantized_module_names(monkeypatch, skip: list[str]) -> tuple[list[str], list[str]]:
    """(4-bit module names, all Linear names before conversion) for the real architecture with `skip`."""
    import transformers.integrations.bitsandbytes as tib
    from transformers import AutoModelForImageTextToText, SmolVLMConfig
    from transformers.quantizers.quantizer_bnb_4bit import Bnb4BitHfQuantizer

    cfg = SmolVLMConfig(**json.loads(REAL_CONFIG.read_text()))
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(cfg, dtype=torch.bfloat16)
    linears = [n for n, m in model.named_modules() if type(m) is nn.Linear]
    monkeypatch.setattr(
        tib, "bnb", types.SimpleNamespace(nn=types.SimpleNamespace(Linear4bit=FakeLinear4bit)), raising=False
    )
    qc = qlora_config(torch.bfloat16)
    qc.llm_int8_skip_modules = list(skip)
    Bnb4BitHfQuantizer(qc)._process_model_before_weight_loading(model, device_map=None)
    return [n for n, m in model.named_modules() if isinstance(m, FakeLinear4bit)], linears


def test_qlora_quantizes_only_the_text_model_of_the_real_architecture(monkeypatch):
    quantized, linears = _quantized_module_names(monkeypatch, QLORA_SKIP_MODULES)
    vision = [n for n in linears if n.startswith("model.vision_model.")]
    text = [n for n in linears if n.startswith("model.text_model.")]
    assert (
        len(vision) == 72 and "model.connector.modality_projection.proj" in linears and "lm_head" in linears
    )
    assert len(text) == 224  # 32 layers × q/k/v/o/gate/up/down
    assert sorted(quantized) == sorted(text)  # every text projection in 4 bit, nothing else
    assert not [n for n in quantized if "vision_model" in n or "connector" in n or n == "lm_head"]


def test_bare_names_would_have_quantized_the_tower(monkeypatch):
    """The former skip list: transformers matches an entry from the name's start or as its ending, so
    bare "vision_model"/"connector" skip nothing and only lm_head stays unquantized."""
    quantized, _ = _quantized_module_names(monkeypatch, ["vision_model", "connector", "lm_head"])
    assert sum(n.startswith("model.vision_model.") for n in quantized) == 72
    assert "model.connector.modality_projection.proj" in quantized and "lm_head" not in quantized


class Params4bit(nn.Parameter):
    """Named like bitsandbytes' class: packed 4-bit storage plus `quant_state.shape` (the original shape)."""

    def __new__(cls, data, shape=None):
        p = super().__new__(cls, data, requires_grad=False)
        p.quant_state = types.SimpleNamespace(shape=torch.Size(shape)) if shape is not None else None
        return p


@pytest.mark.parametrize("storage, per_element", [(torch.uint8, 2), (torch.bfloat16, 4), (torch.float32, 8)])
def test_four_bit_parameter_count_follows_the_storage_dtype(storage, per_element):
    out_f, in_f = 64, 96
    n = out_f * in_f
    packed = torch.zeros(n // per_element, 1, dtype=storage)

    class M(nn.Module):
        def __init__(self, with_state: bool):
            super().__init__()
            self.model = nn.Module()
            self.model.text_model = nn.Module()
            self.model.text_model.w = Params4bit(packed.clone(), (out_f, in_f) if with_state else None)

    for with_state in (True, False):  # quant_state.shape, else the storage dtype's packing
        rep = param_report(M(with_state))
        assert rep["text"]["frozen"] == n == rep["total"]["frozen"]
