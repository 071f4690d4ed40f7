"""`python -m anime_pipeline.gpu_job`: the process that runs on the GPU machine (a subprocess, a Kubernetes
pod or an ECS task, launched through Dagster Pipes by the `gpu_launcher` resource).

It shares no disk with the run that launched it. The job arrives in the Pipes context's extras
(`gpu_job`): which store holds the data (non-secret: URI, endpoint, region; credentials come from this
process's own environment), which paths to fetch, what to run (`train` or `eval`) and which paths to
publish afterwards. Paths inside the job are written `{home}/<relative path>` and resolved against this
process's local dir (`ANIME_PIPELINE_CACHE_DIR`, which may start empty). Outputs are published before
the materialization is reported, so the asset never points at an object that is not there yet. A
training job also publishes each checkpoint as soon as it is written (`CheckpointPublisher`), so a killed
pod's retry resumes from its last checkpoint.

Under torchrun (several GPUs) every rank fetches and runs; only rank 0 reports and publishes.

The job builders (`train_job`, `eval_job`) are pure and used by the assets; nothing here imports dagster.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

HOME = "{home}"


# Paths relative to the data home -----------------------------------------------------------------
def to_ref(value: Any, home: Path) -> Any:
    """Replace the absolute local data dir in (nested) strings by `{home}` so another machine can resolve it."""
    root = str(Path(home).resolve())
    if isinstance(value, str):
        if value == root:
            return HOME
        if value.startswith(root + "/"):
            return HOME + value[len(root) :]
        return value
    if isinstance(value, dict):
        return {k: to_ref(v, home) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_ref(v, home) for v in value]
    return value


def from_ref(value: Any, home: Path) -> Any:
    """Inverse of `to_ref` for this machine's data dir."""
    root = str(Path(home).resolve())
    if isinstance(value, str):
        if value == HOME:
            return root
        if value.startswith(HOME + "/"):
            return root + value[len(HOME) :]
        return value
    if isinstance(value, dict):
        return {k: from_ref(v, home) for k, v in value.items()}
    if isinstance(value, list):
        return [from_ref(v, home) for v in value]
    return value


def relative_ref(value: str) -> str | None:
    """`{home}/a/b` → `a/b` (None for anything else: a hub model id)."""
    return value[len(HOME) + 1 :] if isinstance(value, str) and value.startswith(HOME + "/") else None


# Job builders (used by the assets) -----------------------------------------------------------------
def train_job(
    *, store: dict, train_config: dict, home: Path, inputs: list[str], run_dir: str, asset_key: str
) -> dict:
    """Fine-tune `train_config` (a TrainConfig dict with local paths); `run_dir` (relative) is published."""
    cfg = to_ref(train_config, home)
    base = relative_ref(cfg.get("base_model", ""))
    optional = [run_dir]  # a re-executed run resumes from the checkpoints published by the last attempt
    if base:
        inputs = [*inputs, base]
    return {
        "kind": "train",
        "store": store,
        "config": cfg,
        "inputs": inputs,
        "optional_inputs": optional,
        "outputs": [run_dir],
        "asset_key": asset_key,
    }


def eval_job(
    *,
    store: dict,
    eval_args: dict,
    home: Path,
    inputs: list[str],
    outputs: list[str],
    asset_key: str,
    examples: int = 3,
) -> dict:
    """Evaluate (base vs fine-tuned) with `evaluate_adapter(**eval_args)`; `outputs` (relative) are published."""
    args = to_ref(eval_args, home)
    base = relative_ref(args.get("base_model", ""))
    if base:
        inputs = [*inputs, base]
    return {
        "kind": "eval",
        "store": store,
        "args": args,
        "inputs": inputs,
        "optional_inputs": ["catalog"],
        "outputs": outputs,
        "asset_key": asset_key,
        "examples": examples,
    }


# The stable calls into training and evaluation ----------------------------------------------------
def run_training(
    config: dict, log: Callable[[str], None], on_event: Callable[[dict], None] | None = None
) -> dict:
    """Train with `config` (a TrainConfig dict); the result's flat metadata. `on_event` also sees every
    training event (rank 0)."""
    from anime_pipeline.progress import format_event
    from anime_pipeline.training.config import TrainConfig
    from anime_pipeline.training.train import train

    def report(event: dict) -> None:
        log(format_event(event))
        if on_event is not None:
            on_event(event)

    result = train(TrainConfig.from_dict(config), reporter=report)
    return dict(result.metadata())


class CheckpointPublisher:
    """Publishes each checkpoint to the data store as soon as the trainer has written it, so a pod that is
    killed mid-run (preempted, OOM) leaves its progress in the store and the retry resumes from there
    instead of from the previous attempt's last checkpoint.

    The checkpoint's files go up first and its `run_state.json` (the marker of a complete checkpoint, see
    `training.train`) last, so an upload cut short never leaves a checkpoint that looks complete. Folders the
    trainer has rotated away locally (`keep_checkpoints`) are deleted from the store too: a resume pulls only
    what it can use. Nothing to do for a local data dir (the trainer writes into the store itself)."""

    def __init__(self, store, log: Callable[[str], None]):
        self.store, self.log = store, log

    def __call__(self, event: dict) -> None:
        if event.get("event") != "checkpoint" or not getattr(self.store, "remote", False):
            return
        from anime_pipeline.training.train import RUN_STATE

        root = Path(self.store.root)
        ckpt = Path(event["path"])
        if not ckpt.resolve().is_relative_to(root.resolve()):
            self.log(f"gpu_job: {ckpt} is outside the data dir {root}; checkpoint not published")
            return
        ckpt = root / ckpt.resolve().relative_to(root.resolve())
        files = sorted(p for p in ckpt.rglob("*") if p.is_file() and not p.name.startswith("."))
        ordered = [p for p in files if p.name != RUN_STATE] + [p for p in files if p.name == RUN_STATE]
        for f in ordered:
            self.store.push(f.relative_to(root).as_posix())
        parent = ckpt.parent.relative_to(root).as_posix()
        present = {p.name for p in ckpt.parent.iterdir() if p.is_dir()}
        stale = sorted({rel[len(parent) + 1 :].split("/", 1)[0] for rel in self.store.list(parent)} - present)
        for name in stale:
            self.store.delete(f"{parent}/{name}")
        rel = ckpt.relative_to(root).as_posix()
        gone = f"; removed rotated {', '.join(stale)}" if stale else ""
        self.log(f"gpu_job: published {rel} ({len(files)} files) to {self.store.uri(rel)}{gone}")


def run_evaluation(args: dict, log: Callable[[str], None], examples: int) -> dict:
    """Evaluate with `evaluate_adapter(**args)`; metadata: metrics, counts, captions path, examples, preview."""
    import base64

    from anime_pipeline.evaluation.run import evaluate_adapter

    kw = dict(args)
    for key in ("adapter_dir", "val_samples", "train_samples", "data_home", "out_dir"):
        if kw.get(key) is not None:
            kw[key] = Path(kw[key])
    result = evaluate_adapter(**kw, log=log)
    md: dict[str, Any] = {k: float(v) for k, v in result.metrics.items()}
    md["num_val"] = result.num_samples
    md["captions_path"] = str(result.captions_path)
    md["examples"] = {"raw_value": result.examples_markdown(examples), "type": "md"}
    if result.preview_png:
        b64 = base64.b64encode(result.preview_png).decode()
        md["contact_sheet"] = {
            "raw_value": f"![validation frames](data:image/png;base64,{b64})",
            "type": "md",
        }
    for k, v in (getattr(result, "extras", None) or {}).items():
        md[f"eval_{k}" if not k.startswith("eval") else k] = (
            {"raw_value": v, "type": "json"} if not isinstance(v, (str, int, float, bool)) else v
        )
    return md


# The worker ------------------------------------------------------------------------------------
def open_store(store: dict):
    """The data store described by the job, with this process's local dir (ANIME_PIPELINE_CACHE_DIR)."""
    from anime_pipeline.settings import default_cache_dir
    from anime_pipeline.storage import DEFAULT_REGION, open_data_store

    if not store.get("data_uri"):
        return open_data_store(None, Path(store["root"]))
    cache = os.environ.get("ANIME_PIPELINE_CACHE_DIR", "").strip()
    root = Path(cache).expanduser() if cache else default_cache_dir(store["data_uri"])
    root.mkdir(parents=True, exist_ok=True)
    return open_data_store(
        store["data_uri"],
        root,
        endpoint_url=store.get("endpoint_url"),
        region=store.get("region") or DEFAULT_REGION,
    )


def execute(job: dict, log: Callable[[str], None], *, publish: bool = True) -> dict:
    """Fetch the job's inputs, run it, publish its outputs; the metadata to report (store locations)."""
    if job.get("kind") not in ("train", "eval"):
        raise ValueError(f"gpu_job: unknown job kind {job.get('kind')!r} (expected train or eval)")
    store = open_store(job["store"])
    root = store.root
    started_empty = not root.exists() or not any(root.iterdir())
    store.pull(*job.get("inputs", []))
    store.pull(*job.get("optional_inputs", []), missing_ok=True)
    log(f"gpu_job: {job['kind']} with data from {store.location} in {root} (started empty: {started_empty})")
    if job["kind"] == "train":
        md = run_training(
            from_ref(job["config"], root), log, CheckpointPublisher(store, log) if publish else None
        )
    else:
        md = run_evaluation(from_ref(job["args"], root), log, int(job.get("examples", 3)))
    if publish:
        store.push(*job.get("outputs", []))
    # Local paths of this machine mean nothing to the run: report where they are in the store.
    prefix = str(root) + "/"
    for k, v in list(md.items()):
        if isinstance(v, str) and v.startswith(prefix):
            md[k] = store.uri(v[len(prefix) :])
    md["worker_data_dir"] = str(root)
    md["worker_started_empty"] = started_empty
    return md


def main(argv: list[str] | None = None) -> int:
    from dagster_pipes import PipesDefaultContextLoader, PipesEnvVarParamsLoader, open_dagster_pipes

    if int(os.environ.get("RANK") or 0) != 0:  # other torchrun ranks: same work, no messages, no publish
        params = PipesEnvVarParamsLoader().load_context_params()
        with PipesDefaultContextLoader().load_context(params) as data:
            job = dict((data.get("extras") or {})["gpu_job"])
        execute(job, lambda _msg: None, publish=False)
        return 0
    with open_dagster_pipes() as pipes:
        spec = (pipes.extras or {}).get("gpu_job")
        if not isinstance(spec, dict):
            raise SystemExit(
                "gpu_job: the Pipes extras hold no `gpu_job` (launch it through the gpu_launcher resource)"
            )
        md = execute(spec, pipes.log.info)
        pipes.report_asset_materialization(metadata=md, asset_key=spec.get("asset_key"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
