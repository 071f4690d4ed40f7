"""Loopback (127.0.0.1) servers that misbehave the way real APIs and CDNs do.

`FaultServer` is the catalog fixture server (`fixtures/catalog_server.CatalogServer`) plus:
  * transport faults as canned answers: `Reset` (RST before any byte), `PartialBody` (headers and part of
    the body, then RST or a clean close: a truncated transfer), `Trickle` (the body a few bytes at a time);
  * `always(path, canned)`: every request to `path` gets `canned` (storms that never end);
  * `anilist_always[idMal]`: AniList `Media(idMal:)` answers per title (AniList has one path for all);
  * `shikimori_endless` / `anilist_endless`: catalogs that never run out of pages (new ids forever,
    `hasNextPage: true` forever);
  * `hook(rec) -> Canned | None`: a test's own routing, asked first (per-page bursts and the like).

`SlowFileServer` serves one file with a Content-Length, `chunk` bytes every `delay` seconds (settable
while running), and counts the body bytes it sent.

Every server binds 127.0.0.1 on a free port and is a context manager; handler threads are daemons.
"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from anime_pipeline_tests.fixtures.catalog_server import (
    Canned,
    CatalogServer,
    Recorded,
    _Handler,
    anilist_media,
    shikimori_anime,
)
from anime_pipeline_tests.fixtures.http import LoopbackServer, QuietServer


@dataclass
class Reset(Canned):
    """Read the request, then reset the connection (RST) without sending a byte."""


@dataclass
class PartialBody(Canned):
    """Send the status line, headers (full Content-Length) and `keep` body bytes, then drop the connection:
    with `rst` a reset, else a clean close (the client sees fewer bytes than announced)."""

    keep: int = 8
    rst: bool = True


@dataclass
class Trickle(Canned):
    """Send the body `step` bytes every `interval` seconds (each read well inside the read timeout)."""

    step: int = 1
    interval: float = 0.1


def _rst(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass


class _FaultHandler(_Handler):
    def setup(self) -> None:
        super().setup()
        # headers and body go out in two writes: without this, Nagle + delayed ACK add 40 ms per request
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _serve(self) -> None:
        canned = self._answer()
        if isinstance(canned, Reset):
            self.close_connection = True
            _rst(self.connection)
            return
        try:
            payload = self._send_head(
                canned, **({"Connection": "close"} if isinstance(canned, (PartialBody, Trickle)) else {})
            )
            if isinstance(canned, PartialBody):
                self.wfile.write(payload[: canned.keep])
                self.wfile.flush()
                self.close_connection = True
                if canned.rst:
                    _rst(self.connection)
                else:
                    self.connection.shutdown(socket.SHUT_RDWR)
                return
            if isinstance(canned, Trickle):
                for i in range(0, len(payload), canned.step):
                    self.wfile.write(payload[i : i + canned.step])
                    self.wfile.flush()
                    time.sleep(canned.interval)
                self.close_connection = True
                return
            self.wfile.write(payload)
        except OSError:  # the client gave up
            self.close_connection = True

    do_GET = _serve
    do_POST = _serve


class FaultServer(CatalogServer):
    """`CatalogServer` with transport faults, endless storms and endless catalogs (see the module doc)."""

    handler_class = _FaultHandler

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        self._always: dict[str, Canned] = {}
        self.anilist_always: dict[int, Canned] = {}
        self.shikimori_endless = False
        self.anilist_endless = False
        self.hook: Callable[[Recorded], Canned | None] | None = None  # first say on every request

    def always(self, path: str, canned: Canned | None) -> None:
        """Every later request to `path` gets `canned` (None: back to normal)."""
        with self._lock:
            if canned is None:
                self._always.pop(path, None)
            else:
                self._always[path] = canned

    def answer(self, rec: Recorded) -> Canned:
        if self.hook is not None:
            canned = self.hook(rec)
            if canned is not None:
                with self._lock:
                    self.requests.append(rec)
                return canned
        with self._lock:
            fixed = self._always.get(rec.path)
            queued = self._scripts.get(rec.path)
            if fixed is not None and not queued:
                self.requests.append(rec)
                return fixed
        if rec.path.rstrip("/") == self.ANILIST_PATH.rstrip("/") and self.anilist_always:
            parsed = self._graphql(rec)
            if parsed and "Media(" in parsed[0]:
                canned = self.anilist_always.get(parsed[1].get("idMal"))
                if canned is not None:
                    with self._lock:
                        self.requests.append(rec)
                    return canned
        return super().answer(rec)

    def _shikimori(self, rec: Recorded) -> Canned:
        parsed = self._graphql(rec)
        if self.shikimori_endless and parsed is not None:
            variables = parsed[1]
            page, limit = int(variables.get("page") or 1), min(50, int(variables.get("limit") or 2))
            items = [shikimori_anime(100_000 + (page - 1) * limit + i) for i in range(limit)]
            return Canned(200, {"data": {"animes": items}})
        return super()._shikimori(rec)

    def _anilist(self, rec: Recorded) -> Canned:
        parsed = self._graphql(rec)
        if self.anilist_endless and parsed is not None and "Page(" in parsed[0]:
            variables = parsed[1]
            page, per_page = int(variables.get("page") or 1), min(50, int(variables.get("perPage") or 50))
            items = [anilist_media(200_000 + (page - 1) * per_page + i) for i in range(per_page)]
            info = {
                "total": 10**9,
                "perPage": per_page,
                "currentPage": page,
                "lastPage": 10**7,
                "hasNextPage": True,
            }
            return Canned(200, {"data": {"Page": {"pageInfo": info, "media": items}}})
        return super()._anilist(rec)


# ------------------------------------------------------------------------------------ slow file server
class _SlowHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: QuietServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _head(self) -> bytes | None:
        owner = self.server.owner
        with owner.lock:
            owner.hits.append((self.command, self.path))
        if urlsplit(self.path).path != "/" + owner.name:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        data = owner.data
        self.send_response(200)
        self.send_header("Content-Type", "video/mp4")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Accept-Ranges", "none")
        self.end_headers()
        return data

    def do_HEAD(self) -> None:
        self._head()

    def do_GET(self) -> None:
        data = self._head()
        if data is None:
            return
        owner = self.server.owner
        try:
            for i in range(0, len(data), owner.chunk):
                self.wfile.write(data[i : i + owner.chunk])
                self.wfile.flush()
                with owner.lock:
                    owner.sent += min(owner.chunk, len(data) - i)
                if owner.delay:
                    time.sleep(owner.delay)
        except OSError:
            self.close_connection = True


class SlowFileServer(LoopbackServer):
    """Serve `path` as `/<name>` at `chunk` bytes per `delay` seconds (change `delay` at any time)."""

    handler_class = _SlowHandler

    def __init__(self, path: Path, *, name: str = "clip.mp4", chunk: int = 2048, delay: float = 0.1):
        super().__init__()
        self.data = Path(path).read_bytes()
        self.name = name
        self.chunk = chunk
        self.delay = delay
        self.sent = 0
        self.hits: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"{self.base_url}/{self.name}"
