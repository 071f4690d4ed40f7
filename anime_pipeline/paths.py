"""Safe paths inside the data dir: nothing derived from outside input may escape it."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import unicodedata
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
MAX_COMPONENT = 100


class UnsafePathError(ValueError):
    """A path derived from input would leave its root directory."""


def safe_component(text: str, *, fallback: str = "item") -> str:
    """Turn arbitrary text (a title, an id) into one safe file-name component.

    NUL, slashes, `..`, control characters and very long Unicode all end up as a short ASCII name.
    """
    text = str(text)
    norm = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    norm = _UNSAFE.sub("_", norm).strip("._-")
    if norm and norm == text and len(norm) <= MAX_COMPONENT:
        return norm
    # Lossy: a short hash of the original keeps two different titles (進撃の巨人 / 鬼滅の刃) apart.
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:10]
    norm = norm[: MAX_COMPONENT - len(digest) - 1].strip("._-")
    return f"{norm or fallback}-{digest}"


def within(root: Path, *parts: str) -> Path:
    """Join parts under root and prove the result stays inside root (resolving symlinks and `..`)."""
    root = Path(root).resolve()
    candidate = root.joinpath(*parts).resolve()
    if candidate != root and root not in candidate.parents:
        raise UnsafePathError(f"path {candidate} is outside {root}")
    return candidate


def sweep_stale_temps(final: Path, *, older_than_s: float = 3600.0) -> list[Path]:
    """Remove temp files that `atomic_path` left beside `final` when a writer was killed (SIGKILL runs no
    cleanup). Only temps older than `older_than_s` go, so a concurrent writer's live temp is never touched."""
    import time

    final = Path(final)
    if not final.parent.is_dir():
        return []
    cutoff = time.time() - older_than_s
    removed = []
    for p in final.parent.glob(f".{final.name}.*"):
        try:
            if p.is_file() and p.stat().st_mtime < cutoff:
                p.unlink()
                removed.append(p)
        except FileNotFoundError:  # another sweeper got it first
            continue
    return removed


@contextmanager
def atomic_path(final: Path, *, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path beside `final`; on success rename it over `final`, on error remove it.

    Readers never see a partial file: either the old file or the complete new one.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=suffix or ".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def file_sha256(path: Path, *, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes, read in chunks (episodes can be gigabytes)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()
