"""Data parallelism for `train()` under `torchrun` / `accelerate launch` (one process per GPU).

The launchers set `WORLD_SIZE`, `RANK` and `LOCAL_RANK`; with `WORLD_SIZE` > 1 the training loop
initialises a process group (NCCL on CUDA, Gloo on CPU), puts each rank on `cuda:LOCAL_RANK`, wraps the
adapter model in `DistributedDataParallel` (through `LossModule`, since the loss bypasses the peft
wrapper's forward), gives each rank an interleaved, padded slice of the epoch order (`EpochSampler(rank=,
world_size=)`), and lets only rank 0 write files and report. Without those variables (or with
`WORLD_SIZE=1`) nothing here does anything and the loop is the single-process one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["LossModule", "World", "all_reduce_sum", "barrier", "env_world", "gather_to_main",
           "init_process_group", "rank_device", "wrap_ddp"]


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world(environ=None) -> World:
    """The world described by the launcher's environment (`WORLD_SIZE`, `RANK`, `LOCAL_RANK`)."""
    env = os.environ if environ is None else environ
    size = int(env.get("WORLD_SIZE") or 1)
    rank = int(env.get("RANK") or 0)
    local = int(env.get("LOCAL_RANK") or rank)
    if size < 1 or not 0 <= rank < size or local < 0:
        raise ValueError(f"inconsistent launcher environment: WORLD_SIZE={size} RANK={rank} LOCAL_RANK={local}")
    return World(rank=rank, local_rank=local, size=size)


def rank_device(device: str | None, world: World) -> torch.device:
    """`resolve_device(device)`; on several ranks, a CUDA device becomes `cuda:LOCAL_RANK` (made current)."""
    from anime_pipeline.training.model import resolve_device

    dev = resolve_device(device)
    if world.distributed and dev.type == "cuda":
        dev = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(dev)
    return dev


def init_process_group(world: World, device: torch.device) -> bool:
    """Join the launcher's process group (NCCL for CUDA, Gloo otherwise). True when this call created it
    (the caller then destroys it); False for one process or an already initialised group."""
    import torch.distributed as dist

    if not world.distributed or dist.is_initialized():
        return False
    if device.type == "cuda":
        dist.init_process_group(backend="nccl", rank=world.rank, world_size=world.size, device_id=device)
    else:
        dist.init_process_group(backend="gloo", rank=world.rank, world_size=world.size)
    return True


def barrier(world: World, device: torch.device) -> None:
    import torch.distributed as dist

    if world.distributed:
        if device.type == "cuda":
            dist.barrier(device_ids=[device.index])
        else:
            dist.barrier()


def all_reduce_sum(values: list[float], world: World, device: torch.device) -> list[float]:
    """Element-wise sum over ranks (float64: integer counts stay exact); identity on one process."""
    if not world.distributed:
        return list(values)
    import torch.distributed as dist

    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def gather_to_main(obj: Any, world: World) -> list[Any] | None:
    """Every rank's `obj` on rank 0 (in rank order), None elsewhere; `[obj]` on one process."""
    if not world.distributed:
        return [obj]
    import torch.distributed as dist

    out = [None] * world.size if world.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


class LossModule(torch.nn.Module):
    """`forward(batch, image_features)` → `answer_loss(model, ...)`: the unit DDP wraps, so that its
    forward/backward hooks see the loss computation (which calls the base model directly)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict, image_features=None):
        from anime_pipeline.training.model import answer_loss

        return answer_loss(self.model, batch, image_features=image_features)


def wrap_ddp(model: torch.nn.Module, device: torch.device):
    """`DistributedDataParallel(LossModule(model))` synchronising only the trainable (adapter) parameters.

    Frozen weights and buffers are loaded identically from disk on every rank, so DDP neither broadcasts
    them at start nor tracks them (`_ddp_params_and_buffers_to_ignore`; also keeps 4-bit QLoRA weights
    out of DDP). Every adapter parameter takes part in every forward (all text-model projections, also
    for a micro-batch without labelled tokens), so `find_unused_parameters=False`.
    """
    from torch.nn.parallel import DistributedDataParallel

    module = LossModule(model)
    ignore = [n for n, p in module.named_parameters() if not p.requires_grad]
    ignore += [n for n, _ in module.named_buffers()]
    DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, ignore)
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                   broadcast_buffers=False, find_unused_parameters=False)
