"""Shared helpers for the benchmark scripts (no timing logic here).

Everything is written under a directory the caller passes (a temp dir, or the clip cache under the
system temp dir); nothing is written into the repository.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
REAL_CONFIG = DATA / "smolvlm2-500m-config.json"
REAL_PREPROCESSOR = DATA / "smolvlm2-500m-preprocessor_config.json"
FFMPEG = shutil.which("ffmpeg") or "/usr/bin/ffmpeg"

if str(REPO) not in sys.path:  # run as `python benchmarks/x.py` from anywhere
    sys.path.insert(0, str(REPO))


def default_cache_dir() -> Path:
    return Path(
        os.environ.get("ANIME_PIPELINE_BENCH_CACHE")
        or Path(tempfile.gettempdir()) / "anime_pipeline_bench_cache"
    )


def machine() -> dict:
    model = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 1024**2, 1)
    except OSError:
        pass
    return {"cpus": os.cpu_count(), "cpu_model": model, "mem_gib": mem, "python": platform.python_version()}


# ----------------------------------------------------------------------------------------- clips
def clip_name(seconds: float, size: str = "1280x720") -> str:
    return f"testsrc2_{size}_24fps_g250_crf35_{seconds:g}s.mp4"


def ensure_clip(cache_dir: Path, seconds: float, size: str = "1280x720") -> Path:
    """A cached H.264 clip (ffmpeg lavfi testsrc2, 24 fps, GOP 250, ultrafast, CRF 35), made once."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    dest = cache_dir / clip_name(seconds, size)
    if dest.is_file() and dest.stat().st_size > 0:
        return dest
    tmp = dest.with_name(f".tmp-{os.getpid()}-{dest.name}")
    cmd = [
        FFMPEG,
        "-nostdin",
        "-loglevel",
        "error",
        "-y",
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size={size}:rate=24",
        "-t",
        f"{seconds:g}",
        "-c:v",
        "libx264",
        "-preset",
        "ultrafast",
        "-crf",
        "35",
        "-g",
        "250",
        "-pix_fmt",
        "yuv420p",
        str(tmp),
    ]
    print(f"generating {dest.name} ...", file=sys.stderr, flush=True)
    try:
        subprocess.run(cmd, check=True)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


# ---------------------------------------------------------------------------------------- shards
ANSWER = (
    "In the first episode a young courier crosses a flooded city to deliver letters nobody expects. "
    "Along the way she meets a quiet boy who keeps a secret about the old lighthouse, and together "
    "they discover why the letters were never sent. "
)


def make_dataset(
    root: Path,
    *,
    clip: Path,
    titles: int,
    frames: int,
    max_side: int = 512,
    samples_per_title: int = 1,
    answer_repeat: int = 3,
) -> Path:
    """Sample `frames` frames of `clip` once (the project's sampler, max_side 512 like the asset), write
    one FRAMES shard per title under root/frames and a SAMPLES table; returns the samples parquet path."""
    import polars as pl

    from anime_pipeline import schemas
    from anime_pipeline.media.probe import probe_video
    from anime_pipeline.media.sampling import SamplingConfig, sample_frames
    from anime_pipeline.media.shards import shard_path, write_frame_shard

    probe = probe_video(clip, sha256=False)
    sampled = sample_frames(clip, SamplingConfig(num_frames=frames, max_side=max_side, timeout_s=None), probe)
    rows = []
    for k in range(titles):
        mal_id = 1000 + k
        dest = shard_path(root / "frames", mal_id)
        write_frame_shard(sampled, mal_id=mal_id, episode=1, source_sha256="bench", dest=dest)
        for _ in range(samples_per_title):
            rows.append(
                {
                    "mal_id": mal_id,
                    "split": "train",
                    "name": f"Title {mal_id}",
                    "prompt": "Summarize the first episode.",
                    "synopsis": (ANSWER * answer_repeat).strip(),
                    "frames_path": str(dest.relative_to(root)),
                    "num_frames": len(sampled),
                    "duration_s": float(probe.duration_s),
                }
            )
    out = root / "samples.parquet"
    schemas.conform(pl.DataFrame(rows), schemas.SAMPLES).write_parquet(out)
    return out


# ---------------------------------------------------------------------------------------- models
def tiny_model(cache_dir: Path) -> Path:
    from anime_pipeline.training.tiny import build_tiny_model

    return build_tiny_model(Path(cache_dir) / "tiny-model")


def real_processor_dir(dest: Path, tiny_dir: Path) -> Path:
    """A processor directory configured like SmolVLM2-500M: the real model config (512 px SigLIP,
    patch 16, scale factor 4 → 64 tokens per frame) and the real preprocessor config, with the tiny
    model's tokenizer (the real one is not available offline; its vocabulary does not change the
    number of image tokens). The config's token ids are remapped to that tokenizer."""
    from transformers import AutoTokenizer

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(str(tiny_dir))
    tok.save_pretrained(dest)
    cfg = json.loads(REAL_CONFIG.read_text())
    image_id = tok.convert_tokens_to_ids("<image>")
    pad_id = tok.pad_token_id
    cfg["image_token_id"] = int(image_id)
    cfg["pad_token_id"] = int(pad_id) if pad_id is not None else cfg.get("pad_token_id")
    tc = cfg.setdefault("text_config", {})
    tc["pad_token_id"] = cfg["pad_token_id"]
    for key in ("bos_token_id", "eos_token_id"):
        tid = getattr(tok, key, None)
        if tid is not None:
            tc[key] = int(tid)
    (dest / "config.json").write_text(json.dumps(cfg, indent=2))
    pre = json.loads(REAL_PREPROCESSOR.read_text())
    tiny_pre = json.loads((Path(tiny_dir) / "preprocessor_config.json").read_text())
    # The real file names the torchvision-backed class; the PIL one needs no torchvision (P8).
    pre["image_processor_type"] = tiny_pre.get("image_processor_type", pre["image_processor_type"])
    (dest / "preprocessor_config.json").write_text(json.dumps(pre, indent=2))
    (dest / "processor_config.json").write_text(
        json.dumps({"image_seq_len": 64, "processor_class": "SmolVLMProcessor"})
    )
    if (Path(tiny_dir) / "chat_template.jinja").is_file():
        shutil.copy(Path(tiny_dir) / "chat_template.jinja", dest / "chat_template.jinja")
    return dest


# ---------------------------------------------------------------------------------------- output
class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0


def best(xs):
    return min(xs) if xs else float("nan")


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def table(rows: list[dict], cols: list[str]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
        return "" if v is None else str(v)

    cells = [[fmt(r.get(c)) for c in cols] for r in rows]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def emit(result: dict, out: str | None) -> None:
    line = json.dumps(result, sort_keys=True, default=float)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(json.dumps(result, indent=2, sort_keys=True, default=float) + "\n")
    print(line, flush=True)


def r3(x: float) -> float:
    return round(float(x), 3)
