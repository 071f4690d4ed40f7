"""Inference helpers for evaluation: load base (+ adapter), greedy captions, answer-token loss.

Samples are the collator's dicts (`images`, `timestamps`, `duration_s`, `prompt`, and `answer` for the
loss). Generation uses left padding (SmolVLM does not support right padding for batched generation).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from anime_pipeline.training.collator import VideoPromptCollator, VideoSFTCollator
from anime_pipeline.training.model import (
    load_base_model,
    model_inputs,
    quiet_peft,
    summed_answer_loss,
    to_device,
)


def _device(model) -> torch.device:
    return next(model.parameters()).device


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def safetensors_adapter_dir(adapter_dir: str | Path) -> Path:
    """The local adapter directory, refusing pickled weights: peft loads `adapter_model.bin` with
    `torch.load` when no safetensors file is there, and ignores `use_safetensors`. A hub id is fetched
    with only the config and the safetensors weights."""
    path = Path(adapter_dir)
    if not path.is_dir():
        from huggingface_hub import snapshot_download

        path = Path(snapshot_download(str(adapter_dir), allow_patterns=list(ADAPTER_FILES)))
    if not (path / "adapter_model.safetensors").is_file():
        raise FileNotFoundError(
            f"{adapter_dir} has no adapter_model.safetensors (pickled adapters are not loaded)"
        )
    return path


def load_model(
    base: str | Path,
    adapter_dir: str | Path | None = None,
    *,
    device: str = "auto",
    dtype: str = "auto",
    attn_implementation: str = "auto",
    merge: bool = True,
    qlora: bool = False,
):
    """Frozen base model (+ peft adapter, merged into the weights unless `merge=False`) in eval mode.

    `qlora=True` loads the base in 4 bit as QLoRA training did (CUDA + bitsandbytes) and never merges (merging
    into 4-bit weights would re-quantize them): the adapter runs beside the quantized layers, as trained."""
    model = load_base_model(
        str(base), device=device, dtype=dtype, attn_implementation=attn_implementation, qlora=qlora
    )
    merge = merge and not qlora
    if adapter_dir is not None:
        from peft import PeftModel

        with quiet_peft():
            model = PeftModel.from_pretrained(
                model, str(safetensors_adapter_dir(adapter_dir)), is_trainable=False, use_safetensors=True
            )
        if merge:
            model = model.merge_and_unload()
    model.requires_grad_(False)
    model.eval()
    return model


def _chunks(items: Sequence, n: int):
    for i in range(0, len(items), n):
        yield items[i : i + n]


@torch.no_grad()
def generate_captions(
    model,
    processor,
    samples: Sequence[dict],
    *,
    max_new_tokens: int = 160,
    batch_size: int = 4,
    max_length: int | None = None,
) -> list[str]:
    """Greedy captions, one per sample (left-padded batches; stops at `<end_of_utterance>`).

    With `max_length`, frames are dropped uniformly so that prompt + `max_new_tokens` fit.
    """
    collator = VideoPromptCollator(
        processor, max_length=max_length, max_new_tokens=max_new_tokens, padding_side="left"
    )
    device = _device(model)
    was_training = model.training
    model.eval()
    out: list[str] = []
    try:
        for chunk in _chunks(list(samples), max(1, int(batch_size))):
            batch = to_device(model_inputs(collator(chunk)), device)
            gen = model.generate(
                **batch,
                max_new_tokens=int(max_new_tokens),
                do_sample=False,
                num_beams=1,
                eos_token_id=processor.end_of_utterance_id,
                pad_token_id=processor.pad_token_id,
                use_cache=True,
            )
            new = gen[:, batch["input_ids"].shape[1] :]
            out.extend(t.strip() for t in processor.batch_decode(new, skip_special_tokens=True))
    finally:
        model.train(was_training)
    return out


@torch.no_grad()
def compute_loss(
    model, processor, samples: Sequence[dict], *, batch_size: int = 4, max_length: int | None = None
) -> float:
    """Mean cross-entropy over the answer tokens (+ closing `<end_of_utterance>`) of all samples."""
    collator = VideoSFTCollator(processor, max_length=max_length)
    device = _device(model)
    chunks = _chunks(list(samples), max(1, int(batch_size)))
    total, count = summed_answer_loss(model, ((to_device(collator(c), device), None) for c in chunks))
    if count == 0:
        raise ValueError("no answer tokens to score")
    return total / count
