"""Batching video samples for SFT and for generation. Pure: no I/O, no device moves, no globals.

A sample is a dict::

    {"images": [PIL.Image, ...], "timestamps": [float, ...], "duration_s": float,
     "prompt": str, "answer": str, "frame_ids": [str, ...]  # optional, see data.frame_id}

With `frame_ids` on every sample, the batch carries `frame_ids` (per sample, the kept frames' ids). Given
a `feature_cache` (`FeatureCache`), samples whose frames' features are all cached get no pixels (only
padding; if the whole batch is cached, no `pixel_values` / `pixel_attention_mask` at all): a cached
epoch does no image work (the dataset decodes JPEGs lazily, so not even decoding).

Labels (`mask_policy="assistant_only"`) are -100 everywhere except the answer's tokens and the
`<end_of_utterance>` that closes it. They are found from the rendered text and the tokenizer's offsets
(never from the library's assistant mask, training-pitfalls.md P2), and image / fake-image / global-img /
row-col tokens are never labelled.

Length policy (P1): nothing is ever truncated silently. With `max_length` set, a sample that does not
fit loses frames, spread uniformly over the clip (first and last kept), until prompt + answer fit; the
answer is never cut. If even one frame does not fit, `SampleTooLongError` is raised.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from anime_pipeline.training import prompt as P

MASK_POLICIES = ("assistant_only", "all_text")


class SampleTooLongError(ValueError):
    """A sample does not fit `max_length` even with a single frame."""


@dataclass(frozen=True)
class EncodedSample:
    input_ids: list[int]
    labels: list[int] | None
    frame_indices: list[int]  # indices into the sample's frames that were kept
    total_frames: int


def fit_frames(
    n_frames: int, length_of: Callable[[int], int], max_length: int | None, *, what: str = "sample"
) -> tuple[list[int], int]:
    """Largest uniform frame subset whose token length fits `max_length`; returns (indices, length)."""
    if n_frames < 1:
        raise ValueError(f"{what} has no frames")
    full = length_of(n_frames)
    if max_length is None or full <= max_length:
        return list(range(n_frames)), full
    one = length_of(1)
    if one > max_length:
        raise SampleTooLongError(
            f"{what} needs {one} tokens with a single frame ({full} with all {n_frames}), more than "
            f"max_length={max_length}; raise max_length (the answer is never truncated)"
        )
    lo, hi = 1, n_frames - 1  # invariant: lo fits, hi+1 doesn't
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if length_of(mid) <= max_length:
            lo = mid
        else:
            hi = mid - 1
    return P.uniform_indices(n_frames, lo), length_of(lo)


def _check_sample(sample: dict, *, need_answer: bool) -> None:
    for key in ("images", "timestamps", "prompt") + (("answer",) if need_answer else ()):
        if key not in sample:
            raise KeyError(f"sample is missing {key!r}")
    if len(sample["images"]) != len(sample["timestamps"]):
        raise ValueError(f"{len(sample['images'])} images but {len(sample['timestamps'])} timestamps")
    if not sample["images"]:
        raise ValueError("sample has no frames")


class _Base:
    def __init__(
        self,
        processor,
        *,
        max_length: int | None = None,
        padding_side: str = "right",
        return_stats: bool = False,
        feature_cache=None,
        uint8_pixels: bool = False,
    ):
        if max_length is not None and max_length < 1:
            raise ValueError("max_length must be positive or None")
        if padding_side not in ("left", "right"):
            raise ValueError("padding_side must be 'left' or 'right'")
        self.processor = processor
        self.max_length = max_length
        self.padding_side = padding_side
        self.return_stats = return_stats
        self.feature_cache = feature_cache
        self.uint8_pixels = bool(uint8_pixels)

    def _text(self, sample: dict, idx: Sequence[int], *, answer: str | None, generation: bool) -> str:
        ts = [float(sample["timestamps"][i]) for i in idx]
        msgs = P.video_messages(ts, sample.get("duration_s"), sample["prompt"], answer)
        return self.processor.expand(self.processor.render(msgs, add_generation_prompt=generation))

    def _length(self, text: str) -> int:
        return len(self.processor.encode(text)["input_ids"])

    def check_fits(self, sample: dict) -> None:
        """Raise `SampleTooLongError` when `sample` does not fit `max_length` even with a single frame.

        Reads only the text fields and `timestamps` (images may be placeholders), so a whole dataset can be
        screened before training without decoding a frame."""
        if self.max_length is None:
            return
        n = len(sample["timestamps"])
        answer = P.sanitize_text(sample["answer"]) if isinstance(self, VideoSFTCollator) else None
        budget = self.max_length - int(getattr(self, "max_new_tokens", 0))
        fit_frames(
            n,
            lambda k: self._length(
                self._text(sample, P.uniform_indices(n, k), answer=answer, generation=answer is None)
            ),
            budget,
            what=f"sample {sample.get('mal_id', '')}".strip(),
        )

    def _batch(
        self, samples: Sequence[dict], encoded: list[EncodedSample], with_labels: bool
    ) -> dict[str, Any]:
        out = self.processor.pad(
            [e.input_ids for e in encoded],
            padding_side=self.padding_side,
            labels=[e.labels for e in encoded] if with_labels else None,
        )
        frames = [[s["images"][i] for i in e.frame_indices] for s, e in zip(samples, encoded)]
        if all("frame_ids" in s for s in samples):
            ids = [[s["frame_ids"][i] for i in e.frame_indices] for s, e in zip(samples, encoded)]
            out["frame_ids"] = ids
            if self.feature_cache is not None:
                frames = [[] if self.feature_cache.cached(x) else f for f, x in zip(frames, ids)]
        if any(frames):
            out.update(
                self.processor.images(frames, uint8=True)
                if self.uint8_pixels
                else self.processor.images(frames)
            )
        if self.return_stats:
            out["frames_kept"] = torch.tensor([len(e.frame_indices) for e in encoded], dtype=torch.long)
            out["frames_total"] = torch.tensor([e.total_frames for e in encoded], dtype=torch.long)
        return out


class VideoSFTCollator(_Base):
    """Samples → `input_ids, attention_mask, labels, pixel_values, pixel_attention_mask` (padding on
    `padding_side`, right by default). `return_stats=True` adds `frames_kept` / `frames_total` (B,)
    tensors, which are not model inputs (pop them before calling the model); `frame_ids` (a list) is
    added when the samples have ids, and pixels are skipped for cached samples (see the module doc).
    `uint8_pixels=True` ships uint8 `pixel_values`: normalise them with `processor.normalize_pixels`
    after moving the batch to the device (the training loop does).

    `mask_policy`: "assistant_only" (default) labels only the answer + its `<end_of_utterance>`;
    "all_text" labels every token except padding and image-related tokens (the authors' notebook).
    """

    def __init__(
        self,
        processor,
        *,
        max_length: int | None = None,
        mask_policy: str = "assistant_only",
        padding_side: str = "right",
        return_stats: bool = False,
        feature_cache=None,
        uint8_pixels: bool = False,
    ):
        super().__init__(
            processor,
            max_length=max_length,
            padding_side=padding_side,
            return_stats=return_stats,
            feature_cache=feature_cache,
            uint8_pixels=uint8_pixels,
        )
        if mask_policy not in MASK_POLICIES:
            raise ValueError(f"mask_policy must be one of {MASK_POLICIES}, not {mask_policy!r}")
        self.mask_policy = mask_policy

    def encode(self, sample: dict) -> EncodedSample:
        _check_sample(sample, need_answer=True)
        answer = P.sanitize_text(sample["answer"])
        if not answer.strip():
            raise ValueError("sample has an empty answer")
        n = len(sample["images"])
        idx, _ = fit_frames(
            n,
            lambda k: self._length(
                self._text(sample, P.uniform_indices(n, k), answer=answer, generation=False)
            ),
            self.max_length,
            what=f"sample {sample.get('mal_id', '')}".strip(),
        )
        text = self._text(sample, idx, answer=answer, generation=False)
        prefix = self._text(sample, idx, answer=None, generation=True)  # ... "Assistant:"
        tail = " " + answer + P.END_OF_UTTERANCE
        if not text.startswith(prefix) or not text[len(prefix) :].startswith(tail):
            raise RuntimeError(
                "chat template does not render the assistant turn as 'Assistant: {answer}"
                "<end_of_utterance>' after the generation prompt"
            )
        start, end = len(prefix), len(prefix) + len(tail)  # the answer span incl. its leading space + EOU
        enc = self.processor.encode(text, offsets=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        labels = [-100] * len(ids)
        proc = self.processor
        if self.mask_policy == "assistant_only":
            for i, (a, b) in enumerate(offsets):
                if a < start < b or a < end < b:
                    raise RuntimeError(
                        f"a token spans the answer boundary ({text[a:b]!r}); cannot mask exactly"
                    )
                if a >= start and b <= end and b > a:
                    labels[i] = ids[i]
            labelled = [i for i, lab in enumerate(labels) if lab != -100]
            if not labelled or ids[labelled[-1]] != proc.end_of_utterance_id:
                raise RuntimeError("the answer's closing <end_of_utterance> was not found among the labels")
        else:
            labels = [t if t not in proc.image_related_ids and t != proc.pad_token_id else -100 for t in ids]
        if any(labels[i] in proc.image_related_ids for i in range(len(ids))):
            raise RuntimeError("an image-related token was labelled")
        return EncodedSample(ids, labels, idx, n)

    def __call__(self, samples: Sequence[dict]) -> dict[str, Any]:
        if not samples:
            raise ValueError("empty batch")
        return self._batch(samples, [self.encode(s) for s in samples], with_labels=True)


class VideoPromptCollator(_Base):
    """Samples → generation inputs ending in `Assistant:` (left padding by default, no labels).

    With `max_length`, frames are dropped so that prompt + `max_new_tokens` fit.
    """

    def __init__(
        self,
        processor,
        *,
        max_length: int | None = None,
        max_new_tokens: int = 0,
        padding_side: str = "left",
        return_stats: bool = False,
    ):
        super().__init__(
            processor, max_length=max_length, padding_side=padding_side, return_stats=return_stats
        )
        self.max_new_tokens = int(max_new_tokens)

    def encode(self, sample: dict) -> EncodedSample:
        _check_sample(sample, need_answer=False)
        n = len(sample["images"])
        budget = None if self.max_length is None else self.max_length - self.max_new_tokens
        if budget is not None and budget < 1:
            raise SampleTooLongError(f"max_length={self.max_length} leaves no room for the prompt")
        idx, _ = fit_frames(
            n,
            lambda k: self._length(self._text(sample, P.uniform_indices(n, k), answer=None, generation=True)),
            budget,
            what=f"prompt {sample.get('mal_id', '')}".strip(),
        )
        ids = self.processor.encode(self._text(sample, idx, answer=None, generation=True))["input_ids"]
        return EncodedSample(ids, None, idx, n)

    def __call__(self, samples: Sequence[dict]) -> dict[str, Any]:
        if not samples:
            raise ValueError("empty batch")
        return self._batch(samples, [self.encode(s) for s in samples], with_labels=False)
