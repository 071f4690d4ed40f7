"""Contact sheet: a PNG grid of sampled frames, used as a Dagster metadata preview."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

_CAPTION_H = 14
_PAD = 2
_BACKGROUND = (24, 24, 24)


def _as_image(item: Image.Image | bytes | bytearray | memoryview, width: int | None = None) -> Image.Image:
    """RGB image; JPEG bytes are decoded at the smallest DCT scale (1/2, 1/4, 1/8) still at least `width`
    wide (libjpeg's draft mode: a thumbnail needs no full-size decode)."""
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    img = Image.open(io.BytesIO(bytes(item)))
    if width is not None and img.format == "JPEG" and img.width > 0:
        img.draft("RGB", (width, max(1, img.height * width // img.width)))
    img.load()
    return img.convert("RGB")


def contact_sheet(
    images: Sequence[Image.Image] | Sequence[bytes],
    columns: int = 8,
    thumb_width: int = 160,
    captions: Sequence[str] | None = None,
) -> bytes:
    """PNG bytes of the images in a grid (`columns` wide, thumbnails `thumb_width` px wide, aspect kept).

    `captions` (e.g. timestamps such as "12.5 s"), one per image, are drawn under each thumbnail.
    """
    if not images:
        raise ValueError("contact_sheet needs at least one image")
    if columns < 1 or thumb_width < 8:
        raise ValueError("columns must be >= 1 and thumb_width >= 8")
    if captions is not None and len(captions) != len(images):
        raise ValueError(f"{len(captions)} captions for {len(images)} images")
    thumbs = []
    for item in images:
        img = _as_image(item, thumb_width)
        h = max(1, round(img.height * thumb_width / img.width))
        thumbs.append(img.resize((thumb_width, h), Image.Resampling.BILINEAR))
    cell_h = max(t.height for t in thumbs) + (_CAPTION_H if captions is not None else 0)
    cols = min(columns, len(thumbs))
    rows = math.ceil(len(thumbs) / cols)
    sheet = Image.new("RGB", (cols * (thumb_width + _PAD) + _PAD, rows * (cell_h + _PAD) + _PAD), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for i, thumb in enumerate(thumbs):
        x = _PAD + (i % cols) * (thumb_width + _PAD)
        y = _PAD + (i // cols) * (cell_h + _PAD)
        sheet.paste(thumb, (x, y))
        if captions is not None:
            draw.text((x + 2, y + thumb.height + 1), str(captions[i])[:40], fill=(230, 230, 230), font=font)
    buf = io.BytesIO()
    sheet.save(buf, format="PNG", compress_level=6)  # optimize=True tried every strategy: ~3x the CPU
    return buf.getvalue()
