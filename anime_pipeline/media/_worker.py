"""Decoding worker: `python -m anime_pipeline.media._worker` (started by `sampling.run_worker`).

Reads one pickled job from stdin, writes one pickled `("ok", frames)` or `("error", message)` to stdout.
Native libraries may print to fd 1, so fd 1 is pointed at stderr and the result goes to a private copy
of the original stdout.
"""

from __future__ import annotations

import os
import pickle
import sys


def main() -> int:
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
