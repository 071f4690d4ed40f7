"""Decoding worker: `python -m anime_pipeline.media._worker` (started by `sampling.run_worker`).

Reads one pickled job from stdin, writes one pickled `("ok", frames)` or `("error", message)` to stdout.
Native libraries may print to fd 1, so fd 1 is pointed at stderr and the result goes to a private copy
of the original stdout.

On Linux the worker asks the kernel for SIGKILL when its parent dies (`PR_SET_PDEATHSIG`): a run that is
SIGKILLed (OOM killer, `kill -9`) can no longer enforce the per-episode time limit, so its decoder must
not go on as an orphan.
"""

from __future__ import annotations

import os
import pickle
import sys


PARENT_ENV = "ANIME_PIPELINE_WORKER_PARENT"  # pid of the process that started the worker (set by run_worker)


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


def main() -> int:
    die_with_parent()
    result_fd = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    with os.fdopen(result_fd, "wb") as result:
        try:
            job = pickle.loads(sys.stdin.buffer.read())
            from anime_pipeline.media.sampling import decode_targets

            frames = decode_targets(**job)
            payload = ("ok", [(ts, img.size, img.tobytes()) for ts, img in frames])
        except Exception as e:  # reported to the parent as MediaError
            payload = ("error", str(e) if type(e).__name__ == "MediaError" else f"{type(e).__name__}: {e}")
        result.write(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))
    return 0


if __name__ == "__main__":
    sys.exit(main())
