"""Loading SmolVLM for LoRA/DoRA/QLoRA training, and the loss used by training, eval and inference.

Pitfalls handled (training-pitfalls.md):

- P3 dtype: one dtype for every non-quantized module (bf16 on CUDA, fp32 on CPU), no blanket fp32
  upcast (`prepare_model_for_kbit_training` is not used), the connector's output is cast to the text
  embedding dtype, and `merge_image_features` casts explicitly when features are fed via `inputs_embeds`.
- P4 frozen tower: vision tower and connector are frozen and their `forward` runs under
  `torch.no_grad()` whenever none of their parameters requires grad, so autograd never records them
  (even with `enable_input_require_grads` hooks). Gradient checkpointing is enabled on the text model
  only (non-reentrant).
- P5 attention: `flash_attention_2` only with CUDA + an importable `flash_attn` + bf16/fp16; SDPA otherwise.
- P10 LoRA targets: a regex over the text model's projections only.
- QLoRA (CUDA + bitsandbytes only): 4-bit NF4 text model; vision tower, connector and `lm_head` stay
  unquantized via `llm_int8_skip_modules`.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import logging
import warnings
import weakref
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from transformers import PreTrainedModel

    from anime_pipeline.training.config import TrainConfig

log = logging.getLogger(__name__)

TEXT_LORA_TARGET = r".*text_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
MODEL_INPUT_KEYS = ("input_ids", "attention_mask", "pixel_values", "pixel_attention_mask")
# Modules bitsandbytes must leave unquantized, named as transformers matches them: its filter
# (`quantizers_utils.should_convert_module`) skips a module whose full name starts with an entry (followed
# by "." or not) or ends with it, so a bare "vision_model" matches nothing ("model.vision_model.…" neither
# starts nor ends with it) and the whole tower would be loaded in 4 bit. `lm_head` is a top-level name.
QLORA_SKIP_MODULES = ["model.vision_model", "model.connector", "lm_head"]


class ModelSetupError(RuntimeError):
    """The requested model setup is impossible here (e.g. QLoRA without CUDA/bitsandbytes)."""


# Resolution of device / dtype / attention ---------------------------------------------------------
def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(device: torch.device, dtype: str | torch.dtype | None = "auto") -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "fp32": torch.float32,
        "float32": torch.float32,
    }[str(dtype)]


def flash_attn_available() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def resolve_attn(device: torch.device, dtype: torch.dtype, attn: str | None = "auto") -> str:
    if attn not in (None, "auto"):
        return str(attn)
    if device.type == "cuda" and dtype in (torch.bfloat16, torch.float16) and flash_attn_available():
        return "flash_attention_2"
    return "sdpa"


# Structure helpers -------------------------------------------------------------------------------
def unwrap(model) -> Any:
    """The `SmolVLMForConditionalGeneration` inside a peft wrapper (LoRA layers stay injected)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def smolvlm_parts(model) -> tuple[torch.nn.Module, torch.nn.Module, PreTrainedModel]:
    """(vision_model, connector, text_model) of a SmolVLM (possibly peft-wrapped) model."""
    inner = unwrap(model).model
    return inner.vision_model, inner.connector, inner.text_model


# Modules already patched (kept out of the modules themselves: nn.Module's attribute typing is for
# tensors and submodules, not flags).
_NO_GRAD_WRAPPED: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()
_CAST_HOOKED: weakref.WeakSet[torch.nn.Module] = weakref.WeakSet()


def _run_without_grad_when_frozen(module: torch.nn.Module) -> None:
    """Make `module.forward` run under `torch.no_grad()` while none of its parameters requires grad."""
    if module in _NO_GRAD_WRAPPED:
        return
    original = module.forward

    @functools.wraps(original)
    def forward(*args, **kwargs):
        if any(p.requires_grad for p in module.parameters()):
            return original(*args, **kwargs)
        with torch.no_grad():
            return original(*args, **kwargs)

    module.forward = forward  # an instance attribute: restore_forward removes it
    _NO_GRAD_WRAPPED.add(module)


def restore_forward(module: torch.nn.Module) -> None:
    """Undo `_run_without_grad_when_frozen`: `module` runs its class's forward again (with autograd)."""
    module.__dict__.pop("forward", None)  # the wrapper was an instance attribute
    _NO_GRAD_WRAPPED.discard(module)


def freeze_vision(model) -> None:
    """Freeze vision tower + connector, run them without autograd, cast connector output to text dtype."""
    vision, connector, text = smolvlm_parts(model)
    for module in (vision, connector):
        module.requires_grad_(False)
        _run_without_grad_when_frozen(module)
    if connector not in _CAST_HOOKED:
        embed = text.get_input_embeddings()

        def cast(_mod, _inp, out):
            return out.to(embed.weight.dtype) if torch.is_tensor(out) and out.is_floating_point() else out

        connector.register_forward_hook(cast)
        _CAST_HOOKED.add(connector)


def enable_text_checkpointing(model) -> None:
    """Gradient (activation) checkpointing on the text model only, non-reentrant."""
    _, _, text = smolvlm_parts(model)
    kwargs = {"use_reentrant": False}
    if hasattr(text, "activation_checkpointing_enable"):
        text.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:  # transformers < 5.x minor that only has the old name
        text.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


# Loading -----------------------------------------------------------------------------------------
def qlora_supported(device: str | torch.device | None = "auto") -> str | None:
    """None when a 4-bit base can be loaded here, else why not (no CUDA device, no bitsandbytes)."""
    if resolve_device(device).type != "cuda":
        return "qlora needs a CUDA device (bitsandbytes 4-bit)"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "qlora needs the 'bitsandbytes' package (pip install anime_pipeline[gpu])"
    return None


def qlora_config(dtype: torch.dtype):
    """The 4-bit NF4 quantization config: double quantization, compute and storage in `dtype` (the dtype
    every non-quantized module has, P3), vision tower / connector / LM head left out (QLORA_SKIP_MODULES)."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=dtype,
        bnb_4bit_quant_storage=dtype,
        llm_int8_skip_modules=list(QLORA_SKIP_MODULES),
    )


@contextlib.contextmanager
def quiet_peft():
    """peft 0.21 still reads transformers' deprecated `is_gradient_checkpointing` (a FutureWarning)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def load_base_model(
    model_id_or_dir: str,
    *,
    device: str | torch.device = "auto",
    dtype: Any = "auto",
    attn_implementation: str | None = "auto",
    qlora: bool = False,
):
    """Load the (frozen) base model on `device` in one dtype; QLoRA quantizes the text model to 4 bit."""
    from transformers import AutoModelForImageTextToText

    dev = resolve_device(device)
    dt = resolve_dtype(dev, dtype)
    attn = resolve_attn(dev, dt, attn_implementation)
    # use_safetensors: never unpickle a checkpoint (a directory with only pytorch_model.bin fails)
    kwargs: dict[str, Any] = {"dtype": dt, "attn_implementation": attn, "use_safetensors": True}
    if qlora:
        why = qlora_supported(dev)
        if why is not None:
            raise ModelSetupError(f"qlora=True: {why}; set qlora=false on CPU")
        kwargs["quantization_config"] = qlora_config(dt)
        kwargs["device_map"] = {"": dev.index if dev.index is not None else torch.cuda.current_device()}
    # typed as nn.Module: transformers' `@wraps(nn.Module.to)` on PreTrainedModel.to leaks `self`
    # into the stub's signature, so `model.to(dev)` would not type-check as a PreTrainedModel
    model: torch.nn.Module = AutoModelForImageTextToText.from_pretrained(str(model_id_or_dir), **kwargs)
    if not qlora:
        model.to(dev)
    model.requires_grad_(False)
    freeze_vision(model)
    return model


def load_for_training(model_id_or_dir: str, cfg: TrainConfig):
    """Base model + LoRA/DoRA adapters on the text model's q/k/v/o/gate/up/down projections.

    Reads the `TrainConfig` fields `lora_r`, `lora_alpha`, `lora_dropout`, `use_dora`, `qlora`,
    `gradient_checkpointing`, `attn_implementation`, `device`, `dtype` (their defaults live there only).
    Returns a peft model in train mode whose only trainable parameters are the adapters.
    """
    from peft import LoraConfig, get_peft_model

    model = load_base_model(
        model_id_or_dir,
        device=cfg.device,
        dtype=cfg.dtype,
        attn_implementation=cfg.attn_implementation,
        qlora=cfg.qlora,
    )
    model.config.use_cache = False
    if cfg.gradient_checkpointing:
        enable_text_checkpointing(model)
    lora = LoraConfig(
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=TEXT_LORA_TARGET,
        use_dora=cfg.use_dora,
        bias="none",
    )
    with quiet_peft():
        model = get_peft_model(model, lora)
    bad = [n for n, p in model.named_parameters() if p.requires_grad and "text_model" not in n]
    if bad:
        raise ModelSetupError(f"trainable parameters outside the text model: {bad[:5]}")
    model.train()
    return model


# Parameter accounting ----------------------------------------------------------------------------
def _component(name: str) -> str:
    if "vision_model" in name:
        return "vision"
    if "connector" in name:
        return "connector"
    if "lm_head" in name:
        return "lm_head"
    if "text_model" in name:
        return "text"
    return "other"


def _numel(p: torch.nn.Parameter) -> int:
    """Parameters a tensor stands for. A bitsandbytes `Params4bit` packs 4-bit values into its storage dtype
    (`bnb_4bit_quant_storage`: uint8 holds 2, bf16 4, fp32 8); its `quant_state.shape` is the original shape."""
    if type(p).__name__ != "Params4bit":
        return int(p.numel())
    shape = getattr(getattr(p, "quant_state", None), "shape", None)
    if shape is not None:
        return int(torch.Size(shape).numel())
    return int(p.numel() * p.element_size() * 8 // 4)


def param_report(model) -> dict[str, dict[str, int]]:
    """Trainable / frozen parameter counts per component (vision, connector, text, lm_head, total)."""
    out = {
        k: {"trainable": 0, "frozen": 0} for k in ("vision", "connector", "text", "lm_head", "other", "total")
    }
    for name, p in model.named_parameters():
        key = "trainable" if p.requires_grad else "frozen"
        n = _numel(p)
        out[_component(name)][key] += n
        out["total"][key] += n
    if not any(out["other"].values()):
        del out["other"]
    return out


# Forward / loss ------------------------------------------------------------------------------------
def model_inputs(batch: dict) -> dict:
    """Only the keys the model takes (drops labels and collator statistics)."""
    return {k: batch[k] for k in MODEL_INPUT_KEYS if k in batch}


def to_device(batch: dict, device: torch.device, *, non_blocking: bool = False) -> dict:
    return {
        k: (v.to(device, non_blocking=non_blocking) if torch.is_tensor(v) else v) for k, v in batch.items()
    }


@torch.no_grad()
def encode_frames(
    model, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """Post-connector features per sample, `[n_real_frames, image_seq_len, hidden]` each."""
    base = unwrap(model)
    inner = base.model
    real = (pixel_values != 0).flatten(2).any(-1)  # (B, F): zero frames are batch padding
    out = inner.get_image_features(pixel_values, pixel_attention_mask, return_dict=True)
    feats = out.pooler_output if hasattr(out, "pooler_output") else out
    if torch.is_tensor(feats):
        feats = list(feats.split(real.sum(1).tolist()))
    seq = inner.image_seq_len
    return [f.reshape(-1, seq, f.shape[-1]) for f in feats]


def merge_image_features(model, input_ids: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """Text embeddings with the `<image>` positions replaced (in order) by `features` (P7)."""
    base = unwrap(model)
    embeds = base.get_input_embeddings()(input_ids)
    mask = input_ids == base.config.image_token_id
    n = int(mask.sum())
    if n * embeds.shape[-1] != features.numel():
        raise ValueError(f"{n} <image> tokens but {features.numel() // embeds.shape[-1]} feature vectors")
    return embeds.masked_scatter(mask.unsqueeze(-1), features.to(device=embeds.device, dtype=embeds.dtype))


def _mixed_dtypes(base) -> bool:
    vision, connector, text = smolvlm_parts(base)
    dtypes = {p.dtype for m in (vision, connector) for p in m.parameters() if p.is_floating_point()}
    return dtypes != {text.get_input_embeddings().weight.dtype}


def answer_loss(
    model, batch: dict, *, image_features: list[torch.Tensor] | None = None
) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy over labelled tokens and their count.

    The LM head runs only on positions with a label (no full-vocabulary logits for image tokens).
    With `image_features` (one `[frames, seq, hidden]` tensor per sample, e.g. from the feature
    cache), the vision tower is skipped and the features are merged into `inputs_embeds`.
    """
    base = unwrap(model)
    labels = batch["labels"]
    if image_features is None and batch.get("pixel_values") is not None and _mixed_dtypes(base):
        # QLoRA / upcast leftovers: frozen tower in one dtype, text model in another (transformers
        # #41453). Merge the features ourselves, cast to the text embeddings' dtype (P3 fix 2).
        image_features = encode_frames(base, batch["pixel_values"], batch.get("pixel_attention_mask"))
    if image_features is not None:
        feats = torch.cat([f.reshape(-1, f.shape[-1]) for f in image_features], 0)
        embeds = merge_image_features(base, batch["input_ids"], feats)
        out = base.model(inputs_embeds=embeds, attention_mask=batch["attention_mask"], use_cache=False)
    else:
        out = base.model(**model_inputs(batch), use_cache=False)
    hidden = out.last_hidden_state[:, :-1]
    target = labels[:, 1:].to(hidden.device)
    sel = target != -100
    n = int(sel.sum())
    if n == 0:
        return hidden.sum() * 0.0, 0
    logits = base.lm_head(hidden[sel]).float()
    return F.cross_entropy(logits, target[sel], reduction="sum"), n


@torch.no_grad()
def summed_answer_loss(model, batches: Iterable[tuple[dict, list[torch.Tensor] | None]]) -> tuple[float, int]:
    """(summed answer-token loss, labelled tokens) over `(batch, image_features or None)` pairs, with the
    model in eval mode meanwhile and no autograd: the one scoring loop of training's validation and of
    evaluation. `batches` may be a generator; it runs under the same no-grad, eval-mode context."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch, feats in batches:
            loss_sum, n = answer_loss(model, batch, image_features=feats)
            total += float(loss_sum)
            count += n
    finally:
        model.train(was_training)
    return total, count
