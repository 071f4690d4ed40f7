"""Cache of post-connector vision features, one safetensors file per frame (training-pitfalls.md P7).

Valid only while the vision tower and connector are frozen and preprocessing is deterministic (no
augmentation), which is the case here. The directory is namespaced by a model identity hashed from the
vision tower + connector weights (and their dtype), so features of another model are never reused.

A frame's key is, preferably, its identity: the `frame_ids` the dataset passes through the batch
(`source_sha256` of the episode + `frame_index` + timestamp + stored size, see `data.frame_id`) hashed
together with the processor's preprocessing config (`FramesProcessor.preprocessing_id()`: max_side,
image_size, resample filter, rescale, mean/std) and the model identity. Keys are then known before any
pixel is built, so the collator (given the cache) skips `pixel_values` for samples whose frames are all
cached and a cached epoch does no image work. Without `frame_ids` (e.g. `benchmarks/gpu.py`), the key
falls back to the SHA-256 of the preprocessed pixels.

Cached features are merged into `inputs_embeds` with `masked_scatter` (`model.merge_image_features`),
which gives the same loss as the `pixel_values` path.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from anime_pipeline.paths import atomic_path
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
    """Fallback key of one preprocessed frame `[3, S, S]` (hashed as float32; copies it to the CPU)."""
    f = frame.detach().to("cpu", torch.float32).contiguous()
    h = hashlib.sha256(f"{tuple(f.shape)}".encode())
    h.update(f.numpy().tobytes())
    return h.hexdigest()


class FeatureCache:
    """`get(model, pixel_values, pixel_attention_mask, frame_ids=...)` → one `[n_frames, image_seq_len,
    hidden]` tensor per sample, computing (under no_grad) and storing only the frames not cached yet.

    `preprocessing` (`FramesProcessor.preprocessing_id()`) is required to key frames by identity. The
    object is small and picklable (no model reference), so DataLoader workers can ask `cached(...)`."""

    def __init__(self, root: Path, model, *, chunk_frames: int = 64, preprocessing: str | None = None):
        self.identity = model_identity(model)
        self.root = Path(root) / self.identity[:24]
        self.root.mkdir(parents=True, exist_ok=True)
        self.chunk_frames = int(chunk_frames)
        self.preprocessing = preprocessing
        self.hits = 0
        self.misses = 0

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.safetensors"

    def id_key(self, frame_id: str) -> str:
        """Key of a frame known by identity (dataset `frame_id`) under this model + preprocessing."""
        if self.preprocessing is None:
            raise ValueError(
                "FeatureCache needs preprocessing=processor.preprocessing_id() to key frames by id"
            )
        return hashlib.sha256(f"{self.identity}\n{self.preprocessing}\n{frame_id}".encode()).hexdigest()

    def cached(self, frame_ids: list[str]) -> bool:
        """Whether features for all these frames are stored (no pixels needed)."""
        return self.preprocessing is not None and all(self.path(self.id_key(f)).is_file() for f in frame_ids)

    def _load(self, key: str) -> torch.Tensor | None:
        from safetensors.torch import load_file

        p = self.path(key)
        if not p.is_file():
            return None
        try:
            return load_file(str(p))["features"]
        except Exception:
            return None

    def _store(self, key: str, feats: torch.Tensor) -> None:
        from safetensors.torch import save_file

        p = self.path(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(p, suffix=".safetensors") as tmp:
            save_file({"features": feats.detach().to("cpu").contiguous()}, str(tmp))

    def get(
        self,
        model,
        pixel_values: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        *,
        frame_ids: list[list[str]] | None = None,
    ) -> list[torch.Tensor]:
        """With `frame_ids` (per sample, the ids of its frames in order; frame j of sample b is
        `pixel_values[b, j]`), frames are keyed by id and `pixel_values` is only needed for frames not
        cached yet (it may be None, or hold only padding for fully cached samples). Without, frames are
        the non-zero ones of `pixel_values`, keyed by their pixels."""
        if frame_ids is None and pixel_values is None:
            raise ValueError("need pixel_values or frame_ids")
        device = pixel_values.device if pixel_values is not None else unwrap(model).device
        # (b, f) positions in the padded frame axis, and their keys
        if frame_ids is not None:
            rows = [[(f, self.id_key(fid)) for f, fid in enumerate(ids)] for ids in frame_ids]
        elif pixel_values is not None:
            real = torch.ne(pixel_values, 0).flatten(2).any(-1)  # (B, F)
            rows = [
                [(int(f), frame_key(pixel_values[b, f])) for f in real[b].nonzero().flatten().tolist()]
                for b in range(pixel_values.shape[0])
            ]
        else:  # unreachable (checked above); narrows pixel_values for the type checker
            raise ValueError("need pixel_values or frame_ids")
        per_sample: list[list[torch.Tensor | None]] = []
        missing: dict[str, list[tuple[int, int]]] = {}  # key -> [(sample, j-th frame)]; deduplicated
        first: dict[str, tuple[int, int]] = {}  # key -> (sample, padded frame position) to encode from
        for b, row_keys in enumerate(rows):
            row: list[torch.Tensor | None] = []
            for f, key in row_keys:
                feats = None if key in missing else self._load(key)
                if feats is None:
                    if key not in missing:
                        self.misses += 1
                        first[key] = (b, f)
                    missing.setdefault(key, []).append((b, len(row)))
                else:
                    self.hits += 1
                row.append(feats)
            per_sample.append(row)
        keys = list(missing)
        if keys and pixel_values is None:
            raise RuntimeError(
                f"features of {len(keys)} frames are not cached and the batch has no pixel_values"
            )
        for start in range(0, len(keys), self.chunk_frames):
            chunk = keys[start : start + self.chunk_frames]
            where = [first[k] for k in chunk]
            if pixel_values is None:  # unreachable: keys were checked above; narrows the type
                raise RuntimeError("features of uncached frames are needed and the batch has no pixel_values")
            frames = torch.stack([pixel_values[b, f] for b, f in where]).unsqueeze(1)
            mask = None
            if pixel_attention_mask is not None:
                mask = torch.stack([pixel_attention_mask[b, f] for b, f in where]).unsqueeze(1)
            encoded = encode_frames(model, frames, mask)  # list of [1, seq, hidden]
            for key, enc in zip(chunk, encoded):
                f_feats = enc[0]
                self._store(key, f_feats)
                for b, j in missing[key]:
                    per_sample[b][j] = f_feats
        return [torch.stack([self._filled(t).to(device) for t in row]) for row in per_sample]

    @staticmethod
    def _filled(t: torch.Tensor | None) -> torch.Tensor:
        if t is None:  # every missing key was encoded above and written back into its slots
            raise RuntimeError("frame features missing after encoding (internal error in FeatureCache.get)")
        return t
