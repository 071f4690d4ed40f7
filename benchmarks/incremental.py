"""Incremental no-op: the catalog job (`titles` + `synopses`, `live` profile) run twice with no catalog change.

A loopback fixture server (`anime_pipeline_tests/fixtures/catalog_server.py`, speaking Shikimori GraphQL,
MAL v2, Jikan v4 and AniList) serves `--titles` synthetic released TV titles, each with a Jikan synopsis
(no MAL client id: MAL is skipped, as in a default live setup). Both runs use one temp data dir and one
ephemeral Dagster instance (`dg.instance_for_test`), materializing the assets of `catalog_job` with the
resources `build_resources()` wires for that environment.

Reported: HTTP requests the server received and wall time per run; ratios run 2 / run 1. A third run
after adding one title on the server shows whether a re-run sees a catalog change at all (the HTTP disk
cache keeps catalog pages for `HttpConfig.cache_expire_after`).

    python benchmarks/incremental.py            # 120 titles
    python benchmarks/incremental.py --quick    # 6 titles
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C

SYNOPSIS = (
    "A quiet courier crosses a flooded city to deliver letters nobody expects, and learns why they "
    "were never sent. Title number {i} follows her first week on the job."
)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--titles", type=int, default=120)
    ap.add_argument("--no-change-check", action="store_true", help="skip the third run (one new title)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 6 titles")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    if a.quick:
        a.titles = 6
    import dagster as dg

    from anime_pipeline.defs.catalog import synopses, titles
    from anime_pipeline.defs.partitions import MAL_ID_PARTITIONS_NAME
    from anime_pipeline.defs.resources import build_resources
    from anime_pipeline.defs.schedules import CATALOG_SCHEDULE_RUN_CONFIG
    from anime_pipeline.settings import Settings
    from anime_pipeline_tests.fixtures.catalog_server import CatalogServer, shikimori_anime

    def add_title(server, i: int) -> None:
        server.shikimori_titles.append(shikimori_anime(i, name=f"Bench Title {i}", related=()))
        server.jikan_synopses[i] = SYNOPSIS.format(i=i)

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-incremental-") as td, CatalogServer() as server:
        server.shikimori_titles = []
        for i in range(a.titles):
            add_title(server, 50_001 + i)
        env = {
            "ANIME_PIPELINE_HOME": str(Path(td) / "data"),
            "ANIME_PIPELINE_PROFILE": "live",
            "ANIME_PIPELINE_SHIKIMORI_URL": server.shikimori_url,
            "ANIME_PIPELINE_ANILIST_URL": server.anilist_url,
            "ANIME_PIPELINE_MAL_URL": server.mal_url,
            "ANIME_PIPELINE_JIKAN_URL": server.jikan_url,
            "ANIME_PIPELINE_USER_AGENT": "anime_pipeline-bench/0.1 (bench@example.invalid)",
        }
        resources = build_resources(env=env, settings=Settings.from_env(env))
        with dg.instance_for_test() as instance:

            def run(label: str) -> dict:
                before, before_304 = len(server.requests), server.not_modified
                # The schedule's own run config (listing fetched afresh), plus the title cap.
                run_config = {
                    "ops": {
                        "titles": {
                            "config": {
                                **CATALOG_SCHEDULE_RUN_CONFIG["ops"]["titles"]["config"],
                                "max_titles": a.titles + 10,
                            }
                        }
                    }
                }
                with C.Timer() as t:
                    res = dg.materialize(
                        [titles, synopses], resources=resources, instance=instance, run_config=run_config
                    )
                assert res.success, label
                meta = {
                    e.asset_key.to_user_string(): e.step_materialization_data.materialization.metadata
                    for e in res.get_asset_materialization_events()
                }
                row = {
                    "run": label,
                    "http_requests": len(server.requests) - before,
                    "not_modified_304": server.not_modified - before_304,
                    "wall_s": t.s,
                    "titles": meta["titles"]["num_titles"].value,
                    "synopses": meta["synopses"]["num_synopses"].value,
                    "new_partitions": meta["synopses"]["new_partitions"].value,
                    "partitions": len(instance.get_dynamic_partitions(MAL_ID_PARTITIONS_NAME)),
                }
                print(f"done {label}", file=sys.stderr, flush=True)
                return row

            rows.append(run("1 (cold)"))
            rows.append(run("2 (no change)"))
            if not a.no_change_check:
                add_title(server, 90_001)
                rows.append(run("3 (1 title added)"))
    r1, r2 = rows[0], rows[1]
    req_ratio = r2["http_requests"] / r1["http_requests"] if r1["http_requests"] else float("nan")
    time_ratio = r2["wall_s"] / r1["wall_s"]
    print(f"\ncatalog job (titles + synopses, live profile, loopback fixture server, {a.titles} titles)\n")
    print(
        C.table(
            rows,
            [
                "run",
                "http_requests",
                "not_modified_304",
                "wall_s",
                "titles",
                "synopses",
                "new_partitions",
                "partitions",
            ],
        )
    )
    print(f"\nrun 2 / run 1: requests {req_ratio:.3g}, wall time {time_ratio:.3g}")
    change = None
    if len(rows) > 2:
        change = rows[2]["new_partitions"] > 0
        print(
            "run 3 after adding one title: "
            + ("the new title was discovered" if change else "the new title was NOT discovered")
        )
    C.emit(
        {
            "benchmark": "incremental",
            "titles": a.titles,
            "requests": [r["http_requests"] for r in rows],
            "not_modified": [r["not_modified_304"] for r in rows],
            "request_ratio": C.r3(req_ratio) if r1["http_requests"] else None,
            "wall_ratio": C.r3(time_ratio),
            "change_detected": change,
            "machine": C.machine(),
        },
        a.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
