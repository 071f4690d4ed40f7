"""`python -m anime_pipeline.training --config train.json [--set key=value ...]`

Runs `train()`. Under Dagster Pipes (launched by a Pipes client), progress goes to `pipes.log.info`
and the final metrics to `pipes.report_asset_materialization(metadata=...)`; a `train_config` dict in
the Pipes extras is merged over the file's values (and an `asset_key` extra picks the asset to report
when the step targets several). Otherwise every event is printed as one JSON line on
stdout (the last one has `"event": "done"`).

Under `torchrun` / `accelerate launch` (one process per GPU, see `anime_pipeline.launch`) every rank runs
this module; only rank 0 opens the Pipes session (logs, materialization) or prints events. The other
ranks read the same Pipes context (for the `train_config` extras) without writing messages.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from anime_pipeline.training.config import TrainConfig


def _parse_value(text: str):
    try:
        return json.loads(text)
    except ValueError:
        return text


def build_config(config_path: str | None, overrides: list[str], extras: dict | None = None) -> TrainConfig:
    data: dict = {}
    if config_path:
        data.update(json.loads(Path(config_path).read_text()))
    if extras and isinstance(extras.get("train_config"), dict):
        data.update(extras["train_config"])
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects key=value, got {item!r}")
        data[key.strip()] = _parse_value(value)
    return TrainConfig.from_dict(data)


def _is_pipes() -> bool:
    try:
        from dagster_pipes import PipesEnvVarParamsLoader
    except ImportError:
        return False
    return PipesEnvVarParamsLoader().is_dagster_pipes_process()


def _rank() -> int:
    return int(os.environ.get("RANK") or 0)


def _pipes_extras() -> dict:
    """The Pipes context's extras, read without opening a message channel (non-zero ranks)."""
    from dagster_pipes import PipesDefaultContextLoader, PipesEnvVarParamsLoader

    params = PipesEnvVarParamsLoader().load_context_params()
    with PipesDefaultContextLoader().load_context(params) as data:
        return dict(data.get("extras") or {})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m anime_pipeline.training", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="TrainConfig as JSON (see TrainConfig's docstring for the fields)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one field (value parsed as JSON when possible); repeatable")
    args, _unknown = parser.parse_known_args(argv)  # Pipes may add its own CLI arguments

    if _is_pipes() and _rank() != 0:
        cfg = build_config(args.config, args.overrides, _pipes_extras())
        from anime_pipeline.training.train import train

        train(cfg)  # reports nothing on this rank
        return 0

    if _is_pipes():
        from dagster_pipes import open_dagster_pipes

        with open_dagster_pipes() as pipes:
            cfg = build_config(args.config, args.overrides, dict(pipes.extras or {}))
            pipes.log.info(f"training config: {cfg.to_json()}")

            from anime_pipeline.progress import format_event

            def reporter(event: dict) -> None:  # readable line + the rounded event as JSON
                pipes.log.info(format_event(event))

            from anime_pipeline.training.train import train

            result = train(cfg, reporter=reporter)
            asset_key = (pipes.extras or {}).get("asset_key")  # needed only when several assets are in scope
            pipes.report_asset_materialization(metadata=result.metadata(), asset_key=asset_key)
        return 0

    if not args.config and not args.overrides:
        parser.error("--config is required outside Dagster Pipes")
    cfg = build_config(args.config, args.overrides)

    def printer(event: dict) -> None:
        print(json.dumps(event, default=str), flush=True)

    from anime_pipeline.training.train import train

    train(cfg, reporter=printer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
