"""Errors raised by the media stage."""

from __future__ import annotations

from pathlib import Path


class MediaError(ValueError):
    """A video (or a request for one) the media stage cannot use.

    The message always names the file (or the source / URL) and says what is wrong with it, so it can
    be shown as-is in a Dagster failure or a `rejected` row.
    """

    def __init__(self, message: str, *, path: Path | str | None = None) -> None:
        super().__init__(message)
        self.path = Path(path) if path is not None else None
