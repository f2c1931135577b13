"""Devices and torch.distributed helpers.

:func:`resolve_device` turns ``TrainConfig.device`` (``cpu``, ``cuda``, ``auto``) into the ``torch.device`` a
process trains on. A run started by ``torchrun`` (WORLD_SIZE > 1) trains with DDP over NCCL when that device is a
GPU of this process (``cuda:LOCAL_RANK``) and over gloo otherwise (:func:`choose_backend`); without torchrun the
process-group helpers are no-ops.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from pulmo.engine.config import DEVICES
from pulmo.errors import ConfigError


def is_distributed() -> bool:
    """True when this process was started as one of several (``WORLD_SIZE`` > 1, set by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def local_rank() -> int:
    """This process's index on its node (``LOCAL_RANK`` set by torchrun; 0 without it)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def _gpus_needed() -> int:
    """GPUs this node needs for one per process: ``LOCAL_WORLD_SIZE`` under torchrun, else 1."""
    if not is_distributed():
        return 1
    return max(int(os.environ.get("LOCAL_WORLD_SIZE", "0")), local_rank() + 1)


def resolve_device(name: str) -> torch.device:
    """The device a training process uses for ``name`` (``TrainConfig.device``).

    ``cpu`` is the CPU. ``cuda`` is this process's GPU: ``cuda:LOCAL_RANK`` under DDP (torchrun), else ``cuda:0``.
    ``auto`` is ``cuda`` when ``torch.cuda.is_available()`` (and, under torchrun, the node has a GPU for each of
    its processes), else ``cpu``; a CUDA build of torch on a machine without a GPU therefore trains on the CPU.

    Args:
        name: ``"auto"``, ``"cpu"`` or ``"cuda"``.

    Returns:
        The resolved ``torch.device`` (``cuda`` always with an index).

    Raises:
        ConfigError: ``name`` is not one of the three; or ``cuda`` was asked for and no GPU is visible, or (under
            torchrun) this process's LOCAL_RANK has no GPU of its own.
    """
    if name not in DEVICES:
        raise ConfigError(f"device {name!r} is not one of {', '.join(DEVICES)} "
                          "(auto = cuda when a GPU is available, else cpu)")
    if name == "cpu":
        return torch.device("cpu")
    available = torch.cuda.is_available()
    count = torch.cuda.device_count() if available else 0
    if name == "auto":
        return torch.device("cuda", local_rank()) if available and count >= _gpus_needed() else torch.device("cpu")
    if not available:
        raise ConfigError(f"device 'cuda': no CUDA GPU is available to torch {torch.__version__} (built with CUDA "
                          f"{torch.version.cuda or 'none'}); use device cpu or auto (--device cpu / --device auto)")
    rank = local_rank()
    if rank >= count:
        raise ConfigError(f"device 'cuda': LOCAL_RANK {rank} has no GPU of its own ({count} visible); start at most "
                          f"{count} processes per node or use device cpu")
    return torch.device("cuda", rank)


def choose_backend(device: torch.device | str) -> str:
    """The process-group backend for a process training on ``device``: ``"nccl"`` when it is a CUDA device, CUDA
    is available, this process's LOCAL_RANK has a GPU (``torch.cuda.device_count() > LOCAL_RANK``) and torch has
    NCCL; ``"gloo"`` otherwise (CPU training, or no GPU for this rank). Starts nothing."""
    device = torch.device(device)
    if (device.type == "cuda" and torch.cuda.is_available() and torch.cuda.device_count() > local_rank()
            and dist.is_nccl_available()):
        return "nccl"
    return "gloo"


def setup(device: torch.device | str = "cpu") -> tuple[int, int]:
    """Initialise the process group when launched by torchrun, with :func:`choose_backend` of ``device`` (for
    NCCL, this process's GPU becomes the current CUDA device). Returns ``(rank, world_size)``."""
    if not is_distributed():
        return 0, 1
    if not dist.is_initialized():
        backend = choose_backend(device)
        if backend == "nccl":
            torch.cuda.set_device(torch.device(device))
        dist.init_process_group(backend=backend)
    return dist.get_rank(), dist.get_world_size()


def cleanup() -> None:
    """Destroy the process group if one was initialised (a no-op otherwise)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(value: float) -> float:
    """Mean of a float over all processes (the value itself when not distributed)."""
    if not (dist.is_available() and dist.is_initialized()):
        return value
    # NCCL only reduces CUDA tensors; gloo takes CPU ones
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return float(t.item()) / dist.get_world_size()
