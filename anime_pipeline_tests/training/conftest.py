"""Shared fixtures for the training tests: the tiny model (built once per session), solid-colour
frames, and FRAMES shards + SAMPLES tables written with polars."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import polars as pl
import pytest

from anime_pipeline import schemas

COLOURS = {
    "red": (208, 32, 32),
    "green": (32, 176, 48),
    "blue": (32, 64, 224),
    "yellow": (240, 224, 32),
    "purple": (128, 32, 192),
    "cyan": (32, 208, 224),
}


def solid(colour: str | tuple, size: tuple[int, int] = (64, 64)):
    from PIL import Image

    rgb = COLOURS[colour] if isinstance(colour, str) else colour
    return Image.new("RGB", size, rgb)


def jpeg(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def make_sample(
    colours: list[str],
    *,
    answer: str = "The episode opens in a red world.",
    prompt: str = "Summarize the episode.",
    step_s: float = 1.0,
    duration_s: float | None = None,
    size: tuple[int, int] = (64, 64),
) -> dict:
    n = len(colours)
    return {
        "images": [solid(c, size) for c in colours],
        "timestamps": [i * step_s for i in range(n)],
        "duration_s": duration_s if duration_s is not None else n * step_s,
        "prompt": prompt,
        "answer": answer,
    }


def write_dataset(
    root: Path,
    titles: list[dict],
    *,
    split: str = "train",
    name: str | None = None,
    size: tuple[int, int] = (96, 54),
) -> Path:
    """Write one FRAMES shard per title under root/frames and a SAMPLES parquet; returns its path.

    Each title: {"mal_id", "colours": [per-frame colour], "synopsis", "prompt"?, "step_s"?}.
    """
    rows = []
    for t in titles:
        step = float(t.get("step_s", 20.0))
        frames = []
        for i, c in enumerate(t["colours"]):
            data = jpeg(solid(c, size))
            frames.append(
                {
                    "mal_id": t["mal_id"],
                    "episode": 1,
                    "frame_index": i * 24,
                    "timestamp_s": i * step,
                    "width": size[0],
                    "height": size[1],
                    "image": data,
                    "source_sha256": hashlib.sha256(b"%d" % t["mal_id"]).hexdigest(),
                }
            )
        rel = f"frames/{t['mal_id']}.parquet"
        (root / "frames").mkdir(parents=True, exist_ok=True)
        schemas.conform(pl.DataFrame(frames), schemas.FRAMES).write_parquet(root / rel)
        rows.append(
            {
                "mal_id": t["mal_id"],
                "split": split,
                "name": f"Title {t['mal_id']}",
                "prompt": t.get("prompt", "Summarize the first episode."),
                "synopsis": t["synopsis"],
                "frames_path": rel,
                "num_frames": len(frames),
                "duration_s": len(frames) * step,
            }
        )
    out = root / "splits" / f"{name or split}.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    schemas.conform(pl.DataFrame(rows), schemas.SAMPLES).write_parquet(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from anime_pipeline.training.tiny import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-model")


@pytest.fixture(scope="session")
def tiny_processor(tiny_model_dir):
    from anime_pipeline.training.processor import load_processor

    return load_processor(tiny_model_dir)


@pytest.fixture
def sample3():
    return make_sample(
        ["red", "blue", "green"],
        answer="The episode opens in a red world where a white "
        "square drifts left. Aoi Sato and Ren Ito watch it together.",
    )


def colour_titles() -> tuple[list[dict], list[dict]]:
    """All 30 ordered colour pairs as two-scene titles; 6 held out for val so that every colour still
    appears in both positions in train."""
    names = list(COLOURS)
    train: list[dict] = []
    val: list[dict] = []
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            if a == b:
                continue
            t = {
                "mal_id": 1000 + 10 * i + j,
                "colours": [a, a, b, b],
                "synopsis": f"The episode opens in a {a} world. Later everything turns {b}.",
            }
            (val if (j - i) % len(names) == 2 else train).append(t)
    return train, val


@pytest.fixture
def colour_dataset(tmp_path):
    """A small train/val set: two scenes, the answer names both colours."""
    train, val = colour_titles()
    return {
        "home": tmp_path,
        "train": write_dataset(tmp_path, train, split="train"),
        "val": write_dataset(tmp_path, val, split="val"),
        "n_train": len(train),
        "n_val": len(val),
    }


def tiny_train_config(tiny_model_dir: Path, ds: dict, out: Path, **overrides) -> dict:
    """A TrainConfig dict for the tiny model on a dataset fixture (`colour_dataset`): LoRA r=4 on CPU, one
    torch thread, a few steps with checkpoints. Each test overrides what it is about."""
    cfg = dict(
        base_model=str(tiny_model_dir),
        train_samples=str(ds["train"]),
        val_samples=str(ds["val"]),
        data_home=str(ds["home"]),
        output_dir=str(out),
        lora_r=4,
        lora_alpha=8,
        lr=2e-3,
        grad_accum=2,
        save_steps=1,
        keep_checkpoints=2,
        torch_threads=1,
        gradient_checkpointing=True,
        warmup_steps=1,
    )
    cfg.update(overrides)
    return cfg


def pipes_context(extras: dict) -> dict:
    """The Dagster Pipes context a launcher hands the training CLI (one asset, no partition), with `extras`."""
    return {
        "asset_keys": ["tiny_adapter"],
        "code_version_by_asset_key": None,
        "provenance_by_asset_key": None,
        "partition_key": None,
        "partition_key_range": None,
        "partition_time_window": None,
        "run_id": "r1",
        "job_name": "j",
        "retry_number": 0,
        "extras": extras,
    }
