"""`python -m anime_pipeline.training --config train.json [--<field> value ...] [--set key=value ...]`

Runs `train()`. Every `TrainConfig` field is also a flag (`--lr 1e-4 --max_frames 24 --qlora true`, parsed
by transformers' `HfArgumentParser` from the dataclass, so types and help come from it); precedence: the
`--config` file, then the Pipes `train_config` extras, then `--set`, then the flags.

Under Dagster Pipes (launched by a Pipes client), progress goes to `pipes.log.info`
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
import dataclasses
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


def make_parser() -> argparse.ArgumentParser:
    """`--config`, `--set` and one optional flag per `TrainConfig` field (HfArgumentParser); a flag that is
    not given is absent from the parsed namespace (the file / extras keep their value)."""
    from transformers import HfArgumentParser
    from transformers.hf_argparser import DataClassType

    # DataClassType is the stub's NewType over Any (identity at runtime) that HfArgumentParser expects
    parser = HfArgumentParser(
        DataClassType(TrainConfig),
        prog="python -m anime_pipeline.training",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for action in parser._actions:
        if action.dest in FIELDS:
            action.required = False
            action.default = argparse.SUPPRESS
    parser.add_argument("--config", help="TrainConfig as JSON (see TrainConfig's docstring for the fields)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one field (value parsed as JSON when possible); repeatable",
    )
    return parser


FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig))


def parse_cli(argv: list[str] | None, parser: argparse.ArgumentParser | None = None) -> argparse.Namespace:
    """`config` (path or None) and `overrides` (`--set` items, then the field flags as key=JSON)."""
    args, _unknown = (parser or make_parser()).parse_known_args(argv)  # Pipes may add its own CLI arguments
    flags = {k: v for k, v in vars(args).items() if k in FIELDS}
    return argparse.Namespace(
        config=args.config,
        overrides=list(args.overrides) + [f"{k}={json.dumps(v)}" for k, v in flags.items()],
    )


def main(argv: list[str] | None = None) -> int:
    parser = make_parser()
    args = parse_cli(argv, parser)

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
