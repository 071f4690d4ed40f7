"""Cache of post-connector vision features, one safetensors file per frame (training-pitfalls.md P7).

Valid only while the vision tower and connector are frozen and preprocessing is deterministic (no
augmentation), which is the case here. A frame's key is the SHA-256 of its preprocessed pixels (exactly
what the vision tower sees); the directory is namespaced by a model identity hashed from the vision
tower + connector weights (and their dtype), so features of another model are never reused. Cached
features are merged into `inputs_embeds` with `masked_scatter` (`model.merge_image_features`), which
gives the same loss as the `pixel_values` path.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch

from anime_pipeline.training.model import encode_frames, smolvlm_parts, unwrap


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def model_identity(model) -> str:
    """SHA-256 over the vision tower + connector weights (names, dtypes, shapes, values) and image_seq_len."""
    vision, connector, _ = smolvlm_parts(model)
    h = hashlib.sha256()
    h.update(f"image_seq_len={unwrap(model).model.image_seq_len}".encode())
    for prefix, module in (("vision", vision), ("connector", connector)):
        for name, t in sorted(module.state_dict().items()):
            h.update(f"{prefix}.{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(_tensor_bytes(t))
    return h.hexdigest()


def frame_key(frame: torch.Tensor) -> str:
    """Key of one preprocessed frame `[3, S, S]` (hashed as float32)."""
    f = frame.detach().to("cpu", torch.float32).contiguous()
    h = hashlib.sha256(f"{tuple(f.shape)}".encode())
    h.update(f.numpy().tobytes())
    return h.hexdigest()


class FeatureCache:
    """`get(model, pixel_values, pixel_attention_mask)` → one `[n_frames, image_seq_len, hidden]` tensor
    per sample, computing (under no_grad) and storing only the frames not cached yet."""

    def __init__(self, root: Path, model, *, chunk_frames: int = 64):
        self.identity = model_identity(model)
        self.root = Path(root) / self.identity[:24]
        self.root.mkdir(parents=True, exist_ok=True)
        self.chunk_frames = int(chunk_frames)
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def _load(self, key: str) -> torch.Tensor | None:
        from safetensors.torch import load_file

        p = self.path(key)
        if not p.is_file():
            return None
        try:
            return load_file(str(p))["features"]
        except Exception:  # noqa: BLE001 - a damaged entry is recomputed
            return None

    def _store(self, key: str, feats: torch.Tensor) -> None:
        from safetensors.torch import save_file

        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=p.parent)
        os.close(fd)
        try:
            save_file({"features": feats.detach().to("cpu").contiguous()}, tmp)
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def get(self, model, pixel_values: torch.Tensor, pixel_attention_mask: torch.Tensor | None = None
            ) -> list[torch.Tensor]:
        device = pixel_values.device
        real = (pixel_values != 0).flatten(2).any(-1)  # (B, F)
        per_sample: list[list[torch.Tensor | None]] = []
        missing: dict[str, list[tuple[int, int]]] = {}  # key -> (sample, j-th real frame); deduplicated
        for b in range(pixel_values.shape[0]):
            row: list[torch.Tensor | None] = []
            for f in range(pixel_values.shape[1]):
                if not real[b, f]:
                    continue
                key = frame_key(pixel_values[b, f])
                feats = None if key in missing else self._load(key)
                if feats is None:
                    if key not in missing:
                        self.misses += 1
                    missing.setdefault(key, []).append((b, len(row)))
                else:
                    self.hits += 1
                row.append(feats)
            per_sample.append(row)
        keys = list(missing)
        for start in range(0, len(keys), self.chunk_frames):
            chunk = keys[start:start + self.chunk_frames]
            where = [(missing[k][0][0], self._frame_pos(real[missing[k][0][0]], missing[k][0][1])) for k in chunk]
            frames = torch.stack([pixel_values[b, f] for b, f in where]).unsqueeze(1)
            mask = None
            if pixel_attention_mask is not None:
                mask = torch.stack([pixel_attention_mask[b, f] for b, f in where]).unsqueeze(1)
            feats = encode_frames(model, frames, mask)  # list of [1, seq, hidden]
            for key, f in zip(chunk, feats):
                f = f[0]
                self._store(key, f)
                for b, j in missing[key]:
                    per_sample[b][j] = f
        return [torch.stack([t.to(device) for t in row]) for row in per_sample]

    @staticmethod
    def _frame_pos(real_row: torch.Tensor, j: int) -> int:
        """Index in the padded frame axis of the j-th real frame."""
        return int(real_row.nonzero()[j])
