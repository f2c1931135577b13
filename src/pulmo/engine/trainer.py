"""Generic training loop: AdamW (or Adam / SGD) + warm-up/cosine (or constant) schedule, checkpoint/resume, early stopping, bf16
autocast, channels-last, tqdm progress and DDP when launched by ``torchrun``, on the CPU or a CUDA GPU
(``TrainConfig.device``).

The task supplies the model, datasets, a loss ``loss_fn(model, batch) -> scalar tensor`` and an
evaluation ``evaluate_fn(model) -> {metric: float}`` run on the validation split after each epoch.
Device contract: :func:`fit` moves the model and every tensor of each training batch (:func:`to_device`) to the
training device before ``loss_fn`` sees them, so a loss builds any tensor of its own on its inputs' device;
``evaluate_fn`` gets the model on that device and moves its inputs to ``next(model.parameters()).device``.
Outputs in ``config.out_dir``: ``config.yaml`` (written by :func:`pulmo.engine.run.fit_best` or the task),
``history.jsonl`` (one line per epoch), ``last.pt`` (model, optimiser, scheduler, epoch, best; loaded with
``weights_only=True``) and ``best.safetensors`` (fp32 weights of the best epoch, CPU tensors). ``last.pt`` is
loaded onto the CPU first, so a checkpoint written on a GPU resumes on the CPU (and the other way round).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler
from tqdm.auto import tqdm

from pulmo.engine import distributed
from pulmo.engine.config import TrainConfig
from pulmo.errors import ConfigError, TrainingDivergedError

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, numpy's global generator (``seed % 2**32``) and torch (CPU and every CUDA
    device, ``torch.manual_seed``). DataLoader workers are re-seeded from torch's seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _worker_init(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def to_device(obj: Any, device: torch.device | str, non_blocking: bool = False) -> Any:
    """``obj`` with every tensor moved to ``device``: tensors, and dicts / lists / tuples of them, nested
    (e.g. a detection batch ``{"image": (B, C, H, W), "targets": [{"boxes", "labels"}, ...]}``). Containers are
    rebuilt (dicts as ``dict``, named tuples keep their type); anything else is returned as is. A tensor already on
    ``device`` is returned unchanged (no copy).

    Args:
        obj: a tensor or a nested container of tensors and other values.
        device: the target device.
        non_blocking: asynchronous host-to-GPU copies (pinned memory).

    Returns:
        The same structure with its tensors on ``device``.
    """
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=non_blocking)
    if isinstance(obj, Mapping):
        return {k: to_device(v, device, non_blocking) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a named tuple
        return type(obj)(*(to_device(v, device, non_blocking) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_device(v, device, non_blocking) for v in obj)
    return obj


OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "constant")


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser ``config.optimizer`` names over the model's parameters (see :class:`TrainConfig`).

    Raises:
        ConfigError: an unknown optimiser or schedule name.
    """
    if config.optimizer not in OPTIMIZERS:
        raise ConfigError(f"optimizer {config.optimizer!r} is not one of {', '.join(OPTIMIZERS)}")
    if config.schedule not in SCHEDULES:
        raise ConfigError(f"schedule {config.schedule!r} is not one of {', '.join(SCHEDULES)}")
    params = model.parameters()
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def fit(
    model: nn.Module,
    train_dataset: Dataset,
    loss_fn: Callable[[nn.Module, dict[str, Any]], torch.Tensor],
    evaluate_fn: Callable[[nn.Module], dict[str, float]],
    config: TrainConfig,
    monitor: str,
    mode: str = "max",
    collate_fn: Callable[[list[Any]], Any] | None = None,
    find_unused_parameters: bool = False,
) -> dict[str, Any]:
    """Train ``model`` and keep the best epoch by ``monitor`` (``mode`` "max" or "min").

    The model and each batch go to ``config.device`` (:func:`pulmo.engine.distributed.resolve_device`: the CPU,
    or ``cuda:LOCAL_RANK``); with ``config.bf16`` the loss runs under bfloat16 autocast of that device type.
    ``loss_fn(model, batch)`` receives the batch with every tensor on the device (:func:`to_device`);
    ``evaluate_fn(model)`` receives the model (not the DDP wrapper) on the device in eval mode under
    ``torch.no_grad()`` and must move its inputs to ``next(model.parameters()).device``.

    ``collate_fn`` batches dataset items (default: PyTorch's ``default_collate``; detection tasks pass one
    that keeps per-image box lists).

    ``find_unused_parameters`` is passed to ``DistributedDataParallel`` (a multi-process run only): a model whose
    loss leaves some parameters without a gradient in some steps (a head used only when the batch holds a
    positive) needs it; the loss must then come from the model's own ``forward`` (DDP tracks that call).

    Returns:
        ``{"best_metric", "best_epoch", "epochs_run", "stopped_early", "seconds", "world_size", "rank"}``.
        The best weights are in ``out_dir/best.safetensors``; ``model`` is left with the last epoch, on the
        training device.

    Raises:
        ConfigError: an unknown device, optimiser or schedule, or ``device`` ``cuda`` without a GPU.
        ValueError: ``mode`` is neither "max" nor "min".
        TrainingDivergedError: a non-finite training loss (the message names epoch, step and learning rate).
    """
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
    device = distributed.resolve_device(config.device)
    rank, world = distributed.setup(device)
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed + rank)
    out = Path(config.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
    model = model.to(device=device, memory_format=memory_format)
    pin = device.type == "cuda"

    if world > 1:
        sampler = DistributedSampler(train_dataset, num_replicas=world, rank=rank, shuffle=True, seed=config.seed)
    else:
        sampler = RandomSampler(train_dataset, generator=torch.Generator().manual_seed(config.seed))
    loader = DataLoader(train_dataset, batch_size=config.batch_size, sampler=sampler, drop_last=len(
        train_dataset) > config.batch_size * world, num_workers=config.num_workers, worker_init_fn=_worker_init,
        persistent_workers=config.num_workers > 0, collate_fn=collate_fn, pin_memory=pin)
    steps_per_epoch = len(loader) if not config.max_steps_per_epoch else min(len(loader), config.max_steps_per_epoch)
    total_steps = max(1, steps_per_epoch * config.epochs)
    warmup = max(1, steps_per_epoch)

    def lr_lambda(step: int) -> float:
        if config.schedule == "constant":
            return 1.0
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    if world > 1:
        train_model: nn.Module = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters)
    else:
        train_model = model
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)

    start_epoch, best, best_epoch, bad_epochs = 0, None, -1, 0
    last_path = out / "last.pt"
    if config.resume and last_path.is_file():
        # onto the CPU first: a checkpoint of a GPU run resumes on a CPU-only machine; load_state_dict copies
        # the weights onto the model's device and the optimiser moves its state to its parameters' device
        ckpt = torch.load(last_path, map_location="cpu", weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, best, best_epoch, bad_epochs = ckpt["epoch"] + 1, ckpt["best"], ckpt["best_epoch"], ckpt["bad_epochs"]
        if rank == 0:
            logger.info("resumed from %s at epoch %d (best %s=%s)", last_path, start_epoch, monitor, best)

    t0 = time.perf_counter()
    stopped_early = False
    epoch = start_epoch - 1
    for epoch in range(start_epoch, config.epochs):
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        train_model.train()
        losses = []
        bar = tqdm(loader, total=steps_per_epoch, desc=f"epoch {epoch + 1}/{config.epochs}",
                   disable=not config.progress or rank != 0, leave=False)
        for step, batch in enumerate(bar):
            if step >= steps_per_epoch:
                break
            batch = to_device(batch, device, non_blocking=pin)
            if config.channels_last and "image" in batch and batch["image"].dim() == 4:
                batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
            autocast = torch.autocast(device.type, dtype=torch.bfloat16) if config.bf16 else contextlib.nullcontext()
            with autocast:
                loss = loss_fn(train_model, batch)
            if not torch.isfinite(loss):
                raise TrainingDivergedError(
                    f"training diverged: loss {loss.item()} at epoch {epoch + 1} step {step} (learning rate "
                    f"{optimizer.param_groups[0]['lr']:.3g}); lower lr, or check the data; the best epoch so far is "
                    f"in {config.out_dir}/best.safetensors")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
        bar.close()
        train_loss = distributed.all_reduce_mean(float(np.mean(losses)) if losses else float("nan"))
        model.eval()
        with torch.no_grad():
            metrics = evaluate_fn(model)
        value = float(metrics[monitor])
        improved = best is None or (value > best if mode == "max" else value < best)
        if improved:
            best, best_epoch, bad_epochs = value, epoch, 0
            if rank == 0:
                save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()},
                          str(out / "best.safetensors"))
        else:
            bad_epochs += 1
        record = {"epoch": epoch + 1, "train_loss": train_loss, **metrics, "lr": scheduler.get_last_lr()[0],
                  "seconds": round(time.perf_counter() - t0, 1), "best": improved}
        if rank == 0:
            with open(out / "history.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "epoch": epoch, "best": best,
                        "best_epoch": best_epoch, "bad_epochs": bad_epochs}, last_path)
            logger.info("epoch %d: train_loss %.4f %s %.4f%s", epoch + 1, train_loss, monitor, value,
                        " (best)" if improved else "")
        if bad_epochs >= config.patience:
            stopped_early = True
            if rank == 0:
                logger.info("early stop: no %s improvement for %d epochs", monitor, config.patience)
            break
    summary = {"best_metric": best, "best_epoch": best_epoch + 1, "epochs_run": epoch + 1,
               "stopped_early": stopped_early, "seconds": round(time.perf_counter() - t0, 1), "world_size": world,
               "rank": rank}
    return summary
