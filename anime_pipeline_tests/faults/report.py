"""Render the fault-injection results (JSON written by the suite's session fixture) as a Markdown table.

    python anime_pipeline_tests/faults/report.py RESULTS.json                 # print the table
    python anime_pipeline_tests/faults/report.py RESULTS.json --update docs/RELIABILITY.md
    python anime_pipeline_tests/faults/report.py --run [--update docs/RELIABILITY.md] [-- PYTEST ARGS]

`--run` runs the suite (`pytest anime_pipeline_tests/faults`) with ANIME_PIPELINE_FAULTS_RESULTS pointing at
a temp file, then renders that run. `--update` replaces what lies between the markers
`<!-- faults-table:begin -->` and `<!-- faults-table:end -->` in the given file.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BEGIN, END = "<!-- faults-table:begin -->", "<!-- faults-table:end -->"
AREAS = {
    "http": "HTTP",
    "synopses": "Catalog",
    "process": "Process",
    "media": "Media",
    "security": "Security",
}
ORDER = list(AREAS)


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").strip()


def _survived(outcome: str) -> str:
    return {
        "passed": "yes",
        "xfailed": "no (known gap)",
        "xpassed": "yes (gap closed?)",
        "skipped": "skipped",
    }.get(outcome, f"**NO** ({outcome})")


def render(doc: dict) -> str:
    records = sorted(
        doc["records"], key=lambda r: (ORDER.index(r["area"]) if r["area"] in ORDER else 99, r["test"])
    )
    lines = [
        "| # | area | fault injected | expected behaviour | survived | titles lost | measured / note | test |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(records, start=1):
        lost = "?" if r.get("titles_lost") is None else str(r["titles_lost"])
        lines.append(
            "| "
            + " | ".join(
                [
                    str(i),
                    AREAS.get(r["area"], r["area"]),
                    _cell(r["fault"]),
                    _cell(r["expected"]),
                    _survived(r["outcome"]),
                    lost,
                    _cell(r.get("note") or f"{r['seconds']} s"),
                    f"`{_cell(r['test'])}`",
                ]
            )
            + " |"
        )
    survived = sum(r["outcome"] == "passed" for r in records)
    gaps = sum(r["outcome"] == "xfailed" for r in records)
    failed = [r for r in records if r["outcome"] not in ("passed", "xfailed", "skipped")]
    lost = sum(r["titles_lost"] or 0 for r in records)
    unknown = sum(r["titles_lost"] is None for r in records if r["outcome"] == "passed")
    summary = (
        f"{len(records)} faults: {survived} survived, {gaps} known gap(s), {len(failed)} not survived; "
        f"titles lost: {lost}"
        + (f" ({unknown} passing rows without a count)" if unknown else "")
        + f". Run of {doc.get('generated', '?')}, Python {doc.get('python', '?')}."
    )
    return "\n".join(lines) + "\n\n" + summary + "\n"


def update(path: Path, table: str) -> None:
    text = path.read_text(encoding="utf-8")
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{path}: markers {BEGIN} / {END} not found")
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    path.write_text(f"{head}{BEGIN}\n{table}{END}{tail}", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, help="results JSON written by the suite")
    parser.add_argument(
        "--run", action="store_true", help="run the suite first (pytest anime_pipeline_tests/faults)"
    )
    parser.add_argument("--update", type=Path, help="Markdown file whose table (between markers) is replaced")
    args = parser.parse_args(argv)
    rc = 0
    if args.run:
        out = Path(tempfile.mkdtemp(prefix="faults-")) / "faults-results.json"
        env = dict(os.environ, ANIME_PIPELINE_FAULTS_RESULTS=str(out))
        rc = subprocess.call(
            [sys.executable, "-m", "pytest", "anime_pipeline_tests/faults", "-p", "no:cacheprovider", *extra],
            cwd=REPO,
            env=env,
        )
        args.results = out
    if args.results is None:
        parser.error("give a results file or --run")
    table = render(json.loads(args.results.read_text(encoding="utf-8")))
    if args.update:
        update(args.update, table)
        print(f"updated {args.update} from {args.results}")
    else:
        print(table)
    return rc


if __name__ == "__main__":
    sys.exit(main())
