"""Decoding worker: `python -m anime_pipeline.media._worker` (started and reused by `sampling.DecoderWorker`).

A long-lived process that serves one decoding job after another, so an episode pays no interpreter start
or import of PyAV/PIL (the parent keeps it and kills it on a time limit; see `sampling`). Messages on
stdin/stdout are framed: an 8-byte big-endian length, then that many bytes of pickle. Each request is a
job dict for `sampling.decode_targets` (plus `jpeg_quality`); each reply is `("ok", frames)` with the frames
packed by `sampling.pack_frames` (JPEG or RGB bytes), or `("error", message)`. Native libraries may print to fd 1, so fd 1 is pointed at stderr and the replies
go to a private copy of the original stdout.

The worker exits when stdin closes (its parent is gone or done with it), after `IDLE_EXIT_S` seconds
without a job (an idle pool must not hold memory forever), or after a malformed request. On Linux it
also asks the kernel for SIGKILL when its parent dies (`PR_SET_PDEATHSIG`): a run that is SIGKILLed (OOM
killer, `kill -9`) can no longer enforce the per-episode time limit, so its decoder must not go on as an
orphan.
"""

from __future__ import annotations

import os
import pickle
import select
import struct
import sys

PARENT_ENV = "ANIME_PIPELINE_WORKER_PARENT"  # pid of the process that started the worker (set by the parent)
IDLE_EXIT_S = 600.0
HEADER = struct.Struct(">Q")
MAX_MESSAGE = 1 << 31  # bytes; a longer announced message is garbage


def die_with_parent() -> None:
    """SIGKILL this process when its parent dies (Linux; elsewhere a no-op). Exits at once if the parent
    is already gone (it died between spawning us and this call)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except Exception:  # no libc / prctl: best effort
        return
    expected = os.environ.get(PARENT_ENV)
    if expected and expected != str(os.getppid()):
        os._exit(1)


def read_exact(fd: int, n: int) -> bytes | None:
    """Exactly n bytes from fd, or None at end of file."""
    chunks, got = [], 0
    while got < n:
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def write_message(fd: int, payload: bytes) -> None:
    view = memoryview(HEADER.pack(len(payload)) + payload)
    while view:
        view = view[os.write(fd, view) :]


def main() -> int:
    die_with_parent()
    result_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    stdin = sys.stdin.buffer.fileno()
    from anime_pipeline.media import sampling  # imports PyAV and PIL once, before the first job

    while True:
        ready, _, _ = select.select([stdin], [], [], IDLE_EXIT_S)
        if not ready:
            return 0  # idle too long; the parent starts a new worker when it needs one
        header = read_exact(stdin, HEADER.size)
        if header is None:
            return 0  # parent closed the pipe
        (n,) = HEADER.unpack(header)
        raw = read_exact(stdin, n) if n <= MAX_MESSAGE else None
        if raw is None:
            return 1
        try:
            job = pickle.loads(raw)
            quality = job.pop("jpeg_quality", None)
            payload: tuple[str, object] = (
                "ok",
                sampling.pack_frames(sampling.decode_targets(**job), quality),
            )
        except Exception as e:  # reported to the parent as MediaError
            payload = ("error", str(e) if type(e).__name__ == "MediaError" else f"{type(e).__name__}: {e}")
        write_message(result_fd, pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))


if __name__ == "__main__":
    sys.exit(main())
