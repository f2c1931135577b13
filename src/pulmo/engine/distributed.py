"""torch.distributed helpers: a run started by ``torchrun`` (WORLD_SIZE > 1) trains with DDP over gloo
(CPU) or NCCL (CUDA); otherwise everything is a no-op."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup() -> tuple[int, int]:
    """Initialise the process group when launched by torchrun. Returns ``(rank, world_size)``."""
    if not is_distributed():
        return 0, 1
    if not dist.is_initialized():
        # gloo, also on a CUDA machine: the trainer keeps model and batches on the CPU (and autocasts on the CPU),
        # and NCCL only reduces CUDA tensors, so picking it whenever CUDA is present made torchrun fail there.
        dist.init_process_group(backend="gloo")
    return dist.get_rank(), dist.get_world_size()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: float) -> float:
    """Mean of a float over all processes (the value itself when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()
