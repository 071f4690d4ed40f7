"""Demo wall time on the local default: an older commit vs the working tree, side by side in one run.

The deployment switch (data store, GPU launcher, runs of the project's jobs) must cost the local demo
nothing measurable: with a local data home every pull/push is a no-op and the fine-tune and eval run as
Pipes subprocesses, as the fine-tune did before. This runs `python -m anime_pipeline demo` from a git
worktree of `--old` and from this checkout, alternately (`--repeats` pairs), each with a fresh data dir,
and prints the wall times and the ratio new / old (median over the pairs). Run it on an idle machine:
both demos train the tiny model for 60 epochs.

    python benchmarks/demo_wall.py                      # old = the commit before the deployment switch
    python benchmarks/demo_wall.py --old <rev> --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

SWITCH_COMMIT_SUBJECT = "One deployment switch"


def default_old() -> str:
    rev = subprocess.run(
        ["git", "log", "-1", "--format=%H", f"--grep=^{SWITCH_COMMIT_SUBJECT}"],
        cwd=C.REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    if not rev:
        raise SystemExit("cannot find the deployment-switch commit; pass --old <rev>")
    return f"{rev}^"


def run_demo(tree: Path, home: Path) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANIME_PIPELINE_", "DAGSTER_"))}
    env.update(
        ANIME_PIPELINE_HOME=str(home), PYTHONPATH=str(tree), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1"
    )
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "anime_pipeline", "demo"], cwd=tree, env=env, capture_output=True, text=True
    )
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(
            f"demo in {tree} failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
        )
    return wall


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--old", default=None, help="git revision to compare with (default: before the deployment switch)"
    )
    ap.add_argument("--repeats", type=int, default=1, help="old/new pairs, run alternately")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    old_rev = a.old or default_old()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-demo-") as td:
        old_tree = Path(td) / "old"
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(old_tree), old_rev],
            cwd=C.REPO,
            check=True,
            capture_output=True,
        )
        try:
            for i in range(a.repeats):
                for label, tree in (("old", old_tree), ("new", C.REPO)):
                    home = Path(td) / f"{label}-{i}"
                    wall = run_demo(tree, home)
                    rows.append({"which": label, "pair": i, "wall_s": round(wall, 1)})
                    print(f"{label} #{i}: {wall:.1f} s", flush=True)
                    shutil.rmtree(home, ignore_errors=True)
        finally:
            subprocess.run(
                ["git", "worktree", "remove", "--force", str(old_tree)], cwd=C.REPO, capture_output=True
            )
    old = statistics.median(r["wall_s"] for r in rows if r["which"] == "old")
    new = statistics.median(r["wall_s"] for r in rows if r["which"] == "new")
    result = {
        "benchmark": "demo_wall",
        "old_rev": old_rev,
        "old_s": old,
        "new_s": new,
        "ratio_new_over_old": round(new / old, 3),
        "runs": rows,
        "machine": C.machine(),
    }
    if a.out:
        Path(a.out).write_text(json.dumps(result, indent=2))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
