"""(h) the tiny model can learn the demo task: captions whose colours come only from the frames.

Marked slow (each test ≈ 10–60 s on 2 CPU cores; budget 3 minutes each).
"""

from __future__ import annotations

import io
import re

import polars as pl
import pytest

from anime_pipeline import schemas
from anime_pipeline.training.train import TrainConfig, train

pytestmark = pytest.mark.slow


def _colours(text: str, palette) -> list[str]:
    return re.findall(r"\b(" + "|".join(palette) + r")\b", text)


def _swap_colours(answer: str, palette: list[str]) -> str:
    """Same text with every colour replaced by the next palette colour (a wrong caption)."""
    return re.sub(
        r"\b(" + "|".join(palette) + r")\b",
        lambda m: palette[(palette.index(m.group(1)) + 1) % len(palette)],
        answer,
    )


def _train_and_check(
    tiny_model_dir, train_path, val_path, home, out, palette, *, steps, min_pairs, min_wins, **kw
):
    from anime_pipeline.training.data import ShardVideoDataset
    from anime_pipeline.training.inference import compute_loss, generate_captions, load_model
    from anime_pipeline.training.processor import load_processor

    cfg = TrainConfig(
        base_model=str(tiny_model_dir),
        train_samples=str(train_path),
        val_samples=str(val_path),
        data_home=str(home),
        output_dir=str(out),
        lr=3e-3,
        max_steps=steps,
        batch_size=4,
        lora_r=16,
        lora_alpha=32,
        lora_dropout=0.0,
        warmup_steps=10,
        save_steps=0,
        torch_threads=1,
        eval_batch_size=8,
        log_every=50,
        seed=0,
        **kw,
    )
    res = train(cfg)
    assert res.val_loss_after < 0.35 * res.val_loss_before, (res.val_loss_before, res.val_loss_after)

    proc = load_processor(tiny_model_dir)
    base = load_model(tiny_model_dir)
    tuned = load_model(tiny_model_dir, res.adapter_path)
    val = [ShardVideoDataset(val_path, home)[i] for i in range(len(ShardVideoDataset(val_path, home)))]
    # The tuned model prefers the caption with the frames' colours over the same caption with other colours.
    wins = 0
    for s in val:
        wrong = dict(s, answer=_swap_colours(s["answer"], palette))
        wins += compute_loss(tuned, proc, [s]) < compute_loss(tuned, proc, [wrong])
    assert wins >= min_wins, (wins, len(val))
    tuned_loss = compute_loss(tuned, proc, val)
    assert tuned_loss < 0.35 * compute_loss(base, proc, val)
    # Control: the same captions with every sample's frames taken from the next validation sample. A model
    # that reads the colours from the frames gets clearly worse; one that learnt only the text does not.
    nxt = val[1:] + val[:1]
    shuffled = [
        dict(s, images=n["images"], timestamps=n["timestamps"], frame_ids=n["frame_ids"])
        for s, n in zip(val, nxt)
    ]
    assert all(_colours(a["answer"], palette) != _colours(b["answer"], palette) for a, b in zip(val, nxt))
    shuffled_loss = compute_loss(tuned, proc, shuffled)
    assert shuffled_loss > 1.25 * tuned_loss, (tuned_loss, shuffled_loss)
    caps = generate_captions(tuned, proc, val, max_new_tokens=64, batch_size=8)
    pairs = sum(_colours(c, palette)[:2] == _colours(s["answer"], palette)[:2] for s, c in zip(val, caps))
    assert pairs >= min_pairs, list(zip([s["answer"] for s in val], caps))
    return res, pairs


def test_learns_scene_colours_on_held_out_pairs(tiny_model_dir, colour_dataset, tmp_path):
    from .conftest import COLOURS

    res, _pairs = _train_and_check(
        tiny_model_dir,
        colour_dataset["train"],
        colour_dataset["val"],
        colour_dataset["home"],
        tmp_path / "out",
        list(COLOURS),
        steps=150,
        min_pairs=5,
        min_wins=6,
        gradient_checkpointing=True,
    )
    assert res.val_loss_after < 0.5


def _demo_dataset(root, frames_per_scene: int = 4):
    """The demo catalog's titles as frames: solid scene colour + a drifting white square."""
    from PIL import Image, ImageDraw

    from anime_pipeline.demo import PALETTE, demo_titles

    def write(titles, split):
        rows = []
        for t in titles:
            frames = []
            for scene in t.scenes:
                rgb = tuple(int(scene.ffmpeg_colour[i : i + 2], 16) for i in (2, 4, 6))
                for k in range(frames_per_scene):
                    img = Image.new("RGB", (320, 180), rgb)
                    x = 40 + 60 * k if scene.direction == "right" else 260 - 60 * k
                    ImageDraw.Draw(img).rectangle([x, 70, x + 40, 110], fill=(255, 255, 255))
                    buf = io.BytesIO()
                    img.save(buf, "JPEG", quality=90)
                    frames.append(buf.getvalue())
            n = len(frames)
            shard = pl.DataFrame(
                [
                    {
                        "mal_id": t.mal_id,
                        "episode": 1,
                        "frame_index": i * 300,
                        "timestamp_s": i * 1440.0 / n,
                        "width": 320,
                        "height": 180,
                        "image": b,
                        "source_sha256": "0" * 64,
                    }
                    for i, b in enumerate(frames)
                ]
            )
            (root / "frames").mkdir(parents=True, exist_ok=True)
            schemas.conform(shard, schemas.FRAMES).write_parquet(root / f"frames/{t.mal_id}.parquet")
            rows.append(
                {
                    "mal_id": t.mal_id,
                    "split": split,
                    "name": t.name,
                    "prompt": f"Title: {t.name}. Genres: {', '.join(t.genres)}. Main characters: "
                    f"{', '.join(t.main_characters)}. Summarize the first episode.",
                    "synopsis": t.synopsis,
                    "frames_path": f"frames/{t.mal_id}.parquet",
                    "num_frames": n,
                    "duration_s": 1440.0,
                }
            )
        path = root / f"{split}.parquet"
        schemas.conform(pl.DataFrame(rows), schemas.SAMPLES).write_parquet(path)
        return path

    titles = demo_titles()
    train_t = [t for i, t in enumerate(titles) if i % 4 != 3]
    val_t = [t for i, t in enumerate(titles) if i % 4 == 3]
    return write(train_t, "train"), write(val_t, "val"), list(PALETTE)


def test_learns_the_demo_catalog_colours(tiny_model_dir, tmp_path):
    train_path, val_path, palette = _demo_dataset(tmp_path)
    _train_and_check(
        tiny_model_dir,
        train_path,
        val_path,
        tmp_path,
        tmp_path / "out",
        palette,
        steps=300,
        min_pairs=4,
        min_wins=5,
        gradient_checkpointing=False,
    )
