"""A SmolVLM processor for frames-as-images that needs no torchvision (training-pitfalls.md P8).

`AutoProcessor.from_pretrained` fails without torchvision (the video processor is mandatory), and
`SmolVLMProcessor` cannot be built with `video_processor=None`. The frames-as-images route only needs
the tokenizer and the PIL image processor, so this is a small tokenizer + image-processor pair that does
exactly what `SmolVLMProcessor.__call__` does for images with splitting off (P9): expand every
`<image>` into `<fake_token_around_image><global-img>` + `image_seq_len` × `<image>` +
`<fake_token_around_image>`, tokenize without adding special tokens (the template writes
`<|im_start|>`), and turn each frame into one `image_size`² tile (long side → `max_side`, then squashed).

Frames are not sent through the HF image processor one by one (that was 97 % of collate time): each
frame gets the processor's two PIL resizes (long side → `max_side` with its size rounding, then squash to
`image_size`², with its `resample` filter, LANCZOS for SmolVLM) and the batch is rescaled + normalised
with numpy using the processor's config (`rescale_factor`, `image_mean`, `image_std`), bit-identical to
the processor's output (tested against it; `fast=False` keeps the HF path for that comparison).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anime_pipeline.training import prompt as P


class ProcessorError(ValueError):
    """The model's files do not describe a usable SmolVLM processor."""


@dataclass
class FramesProcessor:
    """Tokenizer + image processor pair with SmolVLM's prompt expansion (image splitting always off)."""

    tokenizer: Any
    image_processor: Any
    image_seq_len: int
    image_size: int  # vision tower input edge (= max_image_size.longest_edge)
    max_side: int  # first resize stage: long side → max_side (aspect kept), then squashed to image_size²
    chat_template: str = field(default_factory=P.chat_template)

    def __post_init__(self) -> None:
        tok = self.tokenizer
        self.image_token = P.IMAGE_TOKEN
        self.fake_image_token = P.FAKE_IMAGE_TOKEN
        self.global_image_token = P.GLOBAL_IMAGE_TOKEN
        self.end_of_utterance_token = P.END_OF_UTTERANCE
        ids = {}
        for t in (
            P.IMAGE_TOKEN,
            P.FAKE_IMAGE_TOKEN,
            P.GLOBAL_IMAGE_TOKEN,
            P.END_OF_UTTERANCE,
            *P.ROW_COL_TOKENS,
        ):
            i = tok.convert_tokens_to_ids(t)
            if i is None or i == tok.unk_token_id:
                raise ProcessorError(f"tokenizer has no special token {t}")
            ids[t] = int(i)
        self.image_token_id = ids[P.IMAGE_TOKEN]
        self.fake_image_token_id = ids[P.FAKE_IMAGE_TOKEN]
        self.global_image_token_id = ids[P.GLOBAL_IMAGE_TOKEN]
        self.end_of_utterance_id = ids[P.END_OF_UTTERANCE]
        self.row_col_token_ids = frozenset(ids[t] for t in P.ROW_COL_TOKENS)
        pad = tok.pad_token_id
        self.pad_token_id = int(pad) if pad is not None else int(tok.convert_tokens_to_ids(P.PAD_TOKEN))
        # Ids that must never carry a label.
        self.image_related_ids = frozenset(
            {
                self.image_token_id,
                self.fake_image_token_id,
                self.global_image_token_id,
                *self.row_col_token_ids,
            }
        )
        ip = self.image_processor
        self._mean = np.asarray(getattr(ip, "image_mean", [0.5] * 3), np.float32).reshape(3, 1, 1)
        self._std = np.asarray(getattr(ip, "image_std", [0.5] * 3), np.float32).reshape(3, 1, 1)
        self._scale = float(getattr(ip, "rescale_factor", 1 / 255))
        self._do_rescale = bool(getattr(ip, "do_rescale", True))
        self._do_normalize = bool(getattr(ip, "do_normalize", True))
        self._do_resize = bool(getattr(ip, "do_resize", True))
        resample = getattr(ip, "resample", None)
        # the PIL backend's default is BILINEAR; SmolVLM configs say 1 (LANCZOS)
        self._resample = int(resample) if resample is not None else 2
        # uint8 value → normalised float32, per channel, with the image processor's exact arithmetic
        # (rescale in float64 then cast to float32; (x - mean) / std in float32), so a table lookup
        # reproduces its output bit for bit.
        v = np.arange(256, dtype=np.float64)
        lut = np.broadcast_to((v * self._scale if self._do_rescale else v).astype(np.float32), (3, 256))
        if self._do_normalize:
            lut = (lut - self._mean.reshape(3, 1)) / self._std.reshape(3, 1)
        self._lut = np.ascontiguousarray(lut, dtype=np.float32)
        # Faster equivalent when it is exact for all 256 values (it is for rescale 1/255): divide by
        # 1/rescale in float32, then (x - mean) / std, written straight into the CHW output.
        self._divisor = (
            np.float32(round(1 / self._scale)) if self._do_rescale and self._scale > 0 else np.float32(1)
        )
        arith = np.empty((3, 256), np.float32)
        self._arith_into(
            arith.reshape(3, 256, 1),
            np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None, None], (256, 1, 3)),
        )
        self._exact_arith = bool(np.array_equal(arith, self._lut))

    # Text --------------------------------------------------------------------------------------
    def render(self, messages: list[dict], *, add_generation_prompt: bool = False) -> str:
        """Chat template text with one `<image>` per frame (not expanded), rendered by the tokenizer's own
        `apply_chat_template` with the model's template (the hub template when the tokenizer has none)."""
        return self.tokenizer.apply_chat_template(
            messages,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            chat_template=self.chat_template,
        )

    def expand(self, text: str) -> str:
        return P.expand_images(text, self.image_seq_len)

    def encode(self, expanded_text: str, *, offsets: bool = False) -> dict:
        """Tokenize already-expanded text: no BOS/EOS added, no truncation."""
        return self.tokenizer(
            expanded_text,
            add_special_tokens=False,
            truncation=False,
            return_offsets_mapping=offsets,
            return_attention_mask=False,
        )

    def decode(self, ids, **kw) -> str:
        return self.tokenizer.decode(ids, **kw)

    def batch_decode(self, ids, **kw) -> list[str]:
        return self.tokenizer.batch_decode(ids, **kw)

    # Images ------------------------------------------------------------------------------------
    def preprocessing_id(self) -> str:
        """Everything that determines a frame's pixels given the stored image (for feature-cache keys)."""
        return json.dumps(
            {
                "max_side": self.max_side,
                "image_size": self.image_size,
                "resample": self._resample,
                "rescale": self._scale if self._do_rescale else None,
                "mean": self._mean.ravel().tolist() if self._do_normalize else None,
                "std": self._std.ravel().tolist() if self._do_normalize else None,
            },
            sort_keys=True,
        )

    def first_stage_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) after the image processor's first resize: long side → `max_side`, aspect kept
        (`int()` truncation, short side rounded up to even), capped at 4096 — `get_resize_output_image_size`
        of `SmolVLMImageProcessorPil`."""
        m = self.max_side
        aspect = width / height
        if width >= height:
            w, h = m, int(m / aspect)
            h += h % 2
        else:
            h, w = m, int(m * aspect)
            w += w % 2
        h, w = max(h, 1), max(w, 1)
        cap = 4096
        aspect = w / h
        if w >= h and w > cap:
            w, h = cap, int(cap / aspect)
        elif h > w and h > cap:
            h, w = cap, int(cap * aspect)
        return max(w, 1), max(h, 1)

    def frame_uint8(self, image) -> np.ndarray:
        """One frame → uint8 HWC `image_size`², resized exactly like the image processor: long side →
        `max_side`, then squashed to `image_size`², both with the configured PIL filter (LANCZOS)."""
        from PIL import Image

        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image))
        if image.mode != "RGB":
            image = image.convert("RGB")
        s = self.image_size
        # Both stages, as the image processor runs them (a stage whose size is unchanged is an identity
        # in PIL, so it is skipped): a square s² frame is only untouched when max_side == s too.
        first = self.first_stage_size(*image.size) if self._do_resize else image.size
        if first != image.size:
            image = image.resize(first, resample=self._resample)
        if image.size != (s, s):
            image = image.resize((s, s), resample=self._resample)
        return np.asarray(image)

    def _arith_into(self, out: np.ndarray, hwc: np.ndarray) -> None:
        np.divide(hwc.transpose(2, 0, 1), self._divisor, out=out, dtype=np.float32)
        if self._do_normalize:
            np.subtract(out, self._mean, out=out)
            np.divide(out, self._std, out=out)

    def normalize_into(self, out: np.ndarray, hwc: np.ndarray) -> None:
        """uint8 HWC → normalised float32 CHW written into `out`, bit-identical to the image processor's
        rescale + normalize (float32 arithmetic where that was verified exact at init, else a table)."""
        if self._exact_arith:
            self._arith_into(out, hwc)
            return
        for c in range(3):
            out[c] = self._lut[c][hwc[..., c]]

    def frame_array(self, image, *, fast: bool = True) -> np.ndarray:
        """One frame → float32 CHW `image_size`², normalised exactly like the image processor.
        `fast=False` runs the HF image processor itself (the reference the fast path is tested against)."""
        if not fast:
            return self._frame_array_hf(image)
        s = self.image_size
        out = np.empty((3, s, s), np.float32)
        self.normalize_into(out, self.frame_uint8(image))
        return out

    def _frame_array_hf(self, image) -> np.ndarray:
        from PIL import Image

        if not isinstance(image, Image.Image):
            image = Image.fromarray(np.asarray(image))
        if image.mode != "RGB":
            image = image.convert("RGB")
        s = self.image_size
        out = self.image_processor(
            images=[[image]],
            do_image_splitting=False,
            size={"longest_edge": self.max_side},
            max_image_size={"longest_edge": s},
            do_pad=False,
            return_tensors="np",
        )
        return np.asarray(out["pixel_values"][0][0], dtype=np.float32)

    def images(
        self, batch: Sequence[Sequence[Any]], *, fast: bool = True, uint8: bool = False
    ) -> dict[str, torch.Tensor]:
        """Frames of each sample → `pixel_values (B, F, 3, S, S)` float32 (zero-padded frames) and a bool
        `pixel_attention_mask (B, F, S, S)`; F is the largest frame count in the batch. A sample with no
        frames gets only padding (used for samples whose vision features are cached).

        `uint8=True`: `pixel_values` holds the resized uint8 pixels (4× smaller); `normalize_pixels`
        turns them into the float32 values (on any device) before the model sees them."""
        b = len(batch)
        f = max((len(x) for x in batch), default=0)
        s = self.image_size
        if uint8 and not fast:
            raise ValueError("uint8=True needs the fast path")
        pv = torch.zeros((b, max(f, 1), 3, s, s), dtype=torch.uint8 if uint8 else torch.float32)
        mask = torch.zeros((b, max(f, 1), s, s), dtype=torch.bool)
        pv_np = pv.numpy()
        for i, frames in enumerate(batch):
            for j, img in enumerate(frames):
                if uint8:
                    pv_np[i, j] = self.frame_uint8(img).transpose(2, 0, 1)
                elif fast:
                    self.normalize_into(pv_np[i, j], self.frame_uint8(img))
                else:
                    pv_np[i, j] = self._frame_array_hf(img)
            mask[i, : len(frames)] = True
        return {"pixel_values": pv, "pixel_attention_mask": mask}

    def normalize_pixels(
        self, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor | None
    ) -> torch.Tensor:
        """uint8 `pixel_values (B, F, 3, S, S)` from `images(uint8=True)` → float32 as `images()` gives
        them (same arithmetic, on the tensor's device), padding frames (no mask pixel set) zeroed. A float
        tensor is returned unchanged."""
        if pixel_values.dtype != torch.uint8:
            return pixel_values
        dev = pixel_values.device
        x = pixel_values.to(torch.float32)
        if self._exact_arith:
            x.div_(float(self._divisor))
            if self._do_normalize:
                x.sub_(torch.from_numpy(self._mean).to(dev)).div_(torch.from_numpy(self._std).to(dev))
        else:
            lut = torch.from_numpy(self._lut).to(dev)
            idx = pixel_values.long()
            x = torch.stack([lut[c][idx[:, :, c]] for c in range(3)], 2)
        if pixel_attention_mask is not None:
            real = pixel_attention_mask.flatten(2).any(-1).to(dev)  # (B, F)
            x.mul_(real[:, :, None, None, None])
        return x

    # Both --------------------------------------------------------------------------------------
    def __call__(
        self,
        text: Sequence[str],
        images: Sequence[Sequence[Any]] | None = None,
        *,
        padding_side: str = "right",
    ) -> dict[str, torch.Tensor]:
        """Like `SmolVLMProcessor(text=..., images=...)`: `text` holds one `<image>` per frame."""
        text = list(text)
        if images is not None:
            if len(images) != len(text):
                raise ValueError(f"{len(text)} texts but {len(images)} image lists")
            for t, ims in zip(text, images):
                if t.count(self.image_token) != len(ims):
                    raise ValueError(
                        f"text has {t.count(self.image_token)} {self.image_token} but {len(ims)} images"
                    )
        ids = [self.encode(self.expand(t))["input_ids"] for t in text]
        out = self.pad(ids, padding_side=padding_side)
        if images is not None and any(len(x) for x in images):
            out.update(self.images(images))
        return out

    def pad(
        self,
        seqs: Sequence[Sequence[int]],
        *,
        padding_side: str = "right",
        labels: Sequence[Sequence[int]] | None = None,
    ) -> dict[str, torch.Tensor]:
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', not {padding_side!r}")
        n = max(len(s) for s in seqs)
        input_ids = torch.full((len(seqs), n), self.pad_token_id, dtype=torch.long)
        attn = torch.zeros((len(seqs), n), dtype=torch.long)
        if labels is not None and len(labels) != len(seqs):
            raise ValueError(f"labels: {len(labels)} sequences for {len(seqs)} input sequences")
        lab = torch.full((len(seqs), n), -100, dtype=torch.long) if labels is not None else None
        for i, s in enumerate(seqs):
            sl = slice(n - len(s), n) if padding_side == "left" else slice(0, len(s))
            input_ids[i, sl] = torch.as_tensor(list(s), dtype=torch.long)
            attn[i, sl] = 1
            if lab is not None and labels is not None:
                lab[i, sl] = torch.as_tensor(list(labels[i]), dtype=torch.long)
        out = {"input_ids": input_ids, "attention_mask": attn}
        if lab is not None:
            out["labels"] = lab
        return out

    def save_pretrained(self, dest: Path) -> None:
        dest = Path(dest)
        dest.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(dest)
        self.image_processor.save_pretrained(dest)
        (dest / "processor_config.json").write_text(
            json.dumps({"image_seq_len": self.image_seq_len, "processor_class": "SmolVLMProcessor"}, indent=2)
        )
        (dest / "chat_template.jinja").write_text(self.chat_template, encoding="utf-8")


def _optional_json(model: str, name: str) -> dict | None:
    p = Path(model)
    if p.is_dir():
        f = p / name
        return json.loads(f.read_text()) if f.is_file() else None
    try:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(model, name)).read_text())
    except Exception:
        return None


def load_processor(model_dir_or_id: str | Path, *, max_side: int | None = None) -> FramesProcessor:
    """Build the frames processor for a SmolVLM checkpoint (local dir or hub id in the local cache).

    `max_side`: first resize stage (long side); default the vision tower's `image_size` (512 for
    SmolVLM2-500M, 64 for the tiny model), as the authors' trainer does for video (`video_target_size`).
    `image_seq_len` is computed from the model config and cross-checked with `processor_config.json`.
    """
    from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer

    model = str(model_dir_or_id)
    config = AutoConfig.from_pretrained(model)
    vc = config.vision_config
    image_size, patch, scale = int(vc.image_size), int(vc.patch_size), int(config.scale_factor)
    if (image_size // patch) % scale:
        raise ProcessorError(
            f"(image_size/patch_size)={image_size // patch} is not divisible by scale_factor={scale}"
        )
    image_seq_len = (image_size // patch) ** 2 // scale**2
    pc = _optional_json(model, "processor_config.json")
    if pc and "image_seq_len" in pc and int(pc["image_seq_len"]) != image_seq_len:
        raise ProcessorError(
            f"processor_config image_seq_len={pc['image_seq_len']} but the model config implies "
            f"{image_seq_len}"
        )
    tokenizer = AutoTokenizer.from_pretrained(model)
    image_processor = AutoImageProcessor.from_pretrained(model)
    template = getattr(tokenizer, "chat_template", None)
    if not isinstance(template, str) or not template:
        template = P.chat_template()
    proc = FramesProcessor(
        tokenizer=tokenizer,
        image_processor=image_processor,
        image_seq_len=image_seq_len,
        image_size=image_size,
        max_side=int(max_side or image_size),
        chat_template=template,
    )
    if proc.image_token_id != int(config.image_token_id):
        raise ProcessorError(
            f"tokenizer <image> id {proc.image_token_id} != config.image_token_id {config.image_token_id}"
        )
    return proc
