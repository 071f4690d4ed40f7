"""Video prompts in SmolVLM2's transformers format, with the frames given as images.

transformers' `SmolVLMProcessor` turns a `{"type": "video"}` item into (architecture.md §2.4)::

    You are provided the following series of {num2words(N)} frames from a {H:MM:SS} [H:MM:SS] video.\\n
    \\nFrame from MM:SS:<image block>      (once per frame)
    \\n\\n

followed by the user's text. The video processor needs torchvision, so here the same text is built from
plain content items (text + one image item per frame) and rendered with the model's own chat template
(`templates/chat_template.jinja`, byte-identical to the hub template). Each `<image>` the template writes
is later expanded by the processor into `<fake_token_around_image><global-img>` + `image_seq_len` ×
`<image>` + `<fake_token_around_image>` (image splitting off).

Pure string code: no torch, no tokenizer.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import timedelta
from importlib import resources
from typing import Any

VIDEO_INTRO = (
    "You are provided the following series of {frame_count} frames from a {video_duration} [H:MM:SS] video.\n"
)
FRAME_TIMESTAMP = "\nFrame from {timestamp}:"
MEDIA_OUTRO = "\n\n"

IMAGE_TOKEN = "<image>"
FAKE_IMAGE_TOKEN = "<fake_token_around_image>"
GLOBAL_IMAGE_TOKEN = "<global-img>"
END_OF_UTTERANCE = "<end_of_utterance>"
BOS_TOKEN = "<|im_start|>"
PAD_TOKEN = "<|im_end|>"
UNK_TOKEN = "<|endoftext|>"
ROW_COL_TOKENS = tuple(f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7))
# Every special token of the real model that matters for prompts (ids differ per tokenizer; names don't).
SPECIAL_TOKENS = (
    UNK_TOKEN,
    BOS_TOKEN,
    PAD_TOKEN,
    GLOBAL_IMAGE_TOKEN,
    *ROW_COL_TOKENS,
    FAKE_IMAGE_TOKEN,
    IMAGE_TOKEN,
    END_OF_UTTERANCE,
)
ASSISTANT_PREFIX = "Assistant:"  # what the template writes for the generation prompt


@functools.cache
def chat_template() -> str:
    """The model's chat template (403 characters), shipped as package data."""
    return (
        resources.files("anime_pipeline.training")
        .joinpath("templates/chat_template.jinja")
        .read_text("utf-8")
    )


def format_timestamp(seconds: float) -> str:
    """`MM:SS` as transformers writes frame timestamps (minutes are not wrapped into hours)."""
    seconds = max(0.0, float(seconds))
    return f"{int(seconds // 60):02d}:{int(seconds % 60):02d}"


def format_duration(seconds: float) -> str:
    """`H:MM:SS` as `str(timedelta(seconds=int(duration)))`."""
    return str(timedelta(seconds=int(max(0.0, float(seconds)))))


def number_words(n: int) -> str:
    from num2words import num2words

    return num2words(int(n))


def sanitize_text(text: str) -> str:
    """Keep free text from smuggling special tokens into the prompt (e.g. a synopsis containing `<image>`).

    Special-token strings are rewritten into plain words, as the authors' trainer does for `<image>`.
    """
    text = str(text)
    if "<" not in text:
        return text
    for tok in SPECIAL_TOKENS:
        if tok in text:
            text = text.replace(tok, tok.strip("<>|").replace("_", " ").replace("-", " "))
    return text


def video_user_content(
    timestamps: Sequence[float], duration_s: float | None, prompt: str
) -> list[dict[str, Any]]:
    """Content items of the user turn: intro, one `Frame from MM:SS:` text + image per frame, outro, prompt."""
    if not timestamps:
        raise ValueError("a video sample needs at least one frame")
    duration = float(duration_s) if duration_s is not None else float(timestamps[-1])
    items: list[dict[str, Any]] = [
        {
            "type": "text",
            "text": VIDEO_INTRO.format(
                frame_count=number_words(len(timestamps)), video_duration=format_duration(duration)
            ),
        }
    ]
    for ts in timestamps:
        items.append({"type": "text", "text": FRAME_TIMESTAMP.format(timestamp=format_timestamp(ts))})
        items.append({"type": "image"})
    items.append({"type": "text", "text": MEDIA_OUTRO})
    items.append({"type": "text", "text": sanitize_text(prompt)})
    return items


def video_messages(
    timestamps: Sequence[float], duration_s: float | None, prompt: str, answer: str | None = None
) -> list[dict[str, Any]]:
    """Chat messages for one sample; with `answer`, the assistant turn is included (training)."""
    messages = [{"role": "user", "content": video_user_content(timestamps, duration_s, prompt)}]
    if answer is not None:
        messages.append({"role": "assistant", "content": [{"type": "text", "text": sanitize_text(answer)}]})
    return messages


@functools.cache
def _compiled(template: str):
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    # Same environment flags transformers uses for chat templates.
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    return env.from_string(template)


def render(
    messages: list[dict[str, Any]], *, add_generation_prompt: bool = False, template: str | None = None
) -> str:
    """Render messages with the chat template (the hub template unless another is given)."""
    return _compiled(template or chat_template()).render(
        messages=messages, add_generation_prompt=add_generation_prompt
    )


def image_block(image_seq_len: int) -> str:
    """What one frame's `<image>` becomes when image splitting is off."""
    return f"{FAKE_IMAGE_TOKEN}{GLOBAL_IMAGE_TOKEN}{IMAGE_TOKEN * image_seq_len}{FAKE_IMAGE_TOKEN}"


def expand_images(text: str, image_seq_len: int) -> str:
    """Replace every `<image>` placeholder by the single-image block (as the processor does)."""
    return text.replace(IMAGE_TOKEN, image_block(image_seq_len))


def render_video_sample(
    timestamps: Sequence[float],
    duration_s: float | None,
    prompt: str,
    answer: str | None = None,
    *,
    image_seq_len: int | None = None,
    template: str | None = None,
) -> str:
    """The full text of one sample.

    With `answer`: the training text (`...Assistant: {answer}<end_of_utterance>\\n`). Without: the
    generation prompt ending in `Assistant:`. With `image_seq_len`, `<image>` placeholders are expanded.
    """
    msgs = video_messages(timestamps, duration_s, prompt, answer)
    text = render(msgs, add_generation_prompt=answer is None, template=template)
    return expand_images(text, image_seq_len) if image_seq_len else text


def uniform_indices(n: int, k: int) -> list[int]:
    """`k` of `range(n)` spread uniformly, always keeping the first and the last (k ≥ 2)."""
    if k >= n:
        return list(range(n))
    if k <= 0:
        return []
    if k == 1:
        return [0]
    # floor(x + 0.5): with spacing >= 1 this never collides (Python's banker's round() can).
    return [int(i * (n - 1) / (k - 1) + 0.5) for i in range(k)]
