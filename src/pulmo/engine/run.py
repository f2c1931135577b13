"""One task's training run around :func:`pulmo.engine.trainer.fit`: the parts every task's ``train`` shares.

A task's ``train`` builds its data, model, loss and validation, then

1. :func:`fit_best` writes the resolved ``config.yaml`` (unless the task wrote it already, before writing
   other files of its own), trains, and on rank 0 loads the best epoch's weights back into the model in eval
   mode;
2. the task measures the model and writes its card, whose ``training`` entry holds :func:`provenance` (the
   command line, seed, epochs run, best epoch and seconds);
3. :func:`save_run` writes ``<out_dir>/<name>.safetensors`` (fp16) and the card beside it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import Dataset

from pulmo.engine.config import TrainConfig, save_config
from pulmo.engine.trainer import fit
from pulmo.weights import save_weights

#: the entries :func:`provenance` gives every card's ``training`` block, in this order
PROVENANCE_KEYS = ("command", "seed", "epochs_run", "best_epoch", "seconds")


def _holds(path: Path, config: TrainConfig) -> bool:
    """Whether ``path`` is a YAML file holding exactly ``config``'s settings."""
    try:
        return yaml.safe_load(path.read_text()) == dataclasses.asdict(config)
    except (OSError, yaml.YAMLError):
        return False


def fit_best(
    model: nn.Module,
    train_dataset: Dataset,
    loss_fn: Callable[[nn.Module, dict[str, Any]], torch.Tensor],
    evaluate_fn: Callable[[nn.Module], dict[str, float]],
    config: TrainConfig,
    monitor: str,
    mode: str = "max",
    collate_fn: Callable[[list[Any]], Any] | None = None,
    find_unused_parameters: bool = False,
) -> dict[str, Any] | None:
    """Train with :func:`pulmo.engine.trainer.fit` and leave ``model`` with its best epoch, ready to measure.

    Writes ``<out_dir>/config.yaml`` (:func:`pulmo.engine.config.save_config`) unless it already holds this
    config (a task that writes other files before training saves its config first), then trains. On rank 0 it
    loads ``<out_dir>/best.safetensors`` into ``model`` (strictly: every key, no extra ones; onto the model's
    device) and puts the model in eval mode.

    Args:
        model: the network to train.
        train_dataset: the training items.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
        evaluate_fn: ``evaluate_fn(model) -> {metric: float}`` on the validation split after each epoch.
        config: the run's settings (``out_dir`` is the run folder).
        monitor: the metric of ``evaluate_fn`` that selects the best epoch.
        mode: ``"max"`` or ``"min"``: whether a larger or a smaller ``monitor`` is better.
        collate_fn: batches dataset items (default: PyTorch's ``default_collate``).
        find_unused_parameters: DDP's option (:func:`pulmo.engine.trainer.fit`): some parameters may get no
            gradient in a step.

    Returns:
        :func:`pulmo.engine.trainer.fit`'s summary (``best_metric``, ``best_epoch``, ``epochs_run``,
        ``stopped_early``, ``seconds``, ``world_size``, ``rank``) on rank 0; None on the other ranks of a
        distributed run (they write nothing more).

    Raises:
        ConfigError: an unknown device, optimiser or schedule, or ``device`` ``cuda`` without a GPU.
        ValueError: ``mode`` is neither "max" nor "min".
        RuntimeError: the best weights do not fit ``model`` (missing or unexpected keys, other shapes).

    Any other error of :func:`pulmo.engine.trainer.fit` (e.g. the one for a non-finite training loss) passes
    through unchanged.
    """
    out = Path(config.out_dir)
    if not _holds(out / "config.yaml", config):
        save_config(config, out / "config.yaml")
    summary = fit(model, train_dataset, loss_fn, evaluate_fn, config, monitor=monitor, mode=mode,
                  collate_fn=collate_fn, find_unused_parameters=find_unused_parameters)
    if summary["rank"] != 0:
        return None
    model.load_state_dict(load_file(str(out / "best.safetensors")))
    model.eval()
    return summary


def provenance(config: TrainConfig, summary: dict[str, Any], command: str, **extra: Any) -> dict[str, Any]:
    """The entries every card's ``training`` block shares: how the run was started and how it went.

    Args:
        config: the run's settings (its ``seed``).
        summary: :func:`fit_best`'s (or :func:`pulmo.engine.trainer.fit`'s) summary.
        command: the command line that started the run ("" when called from Python).
        **extra: further entries, after the common ones in the given order (e.g.
            ``world_size=summary["world_size"]``).

    Returns:
        ``{"command", "seed", "epochs_run", "best_epoch", "seconds", **extra}``, in this order: spread it into
        the card's ``training`` dict where those entries belong (``{..., **provenance(...), ...}``).

    Raises:
        ValueError: an entry of ``extra`` would replace one of the common entries.
    """
    clash = set(extra) & set(PROVENANCE_KEYS)
    if clash:
        raise ValueError(f"provenance entries {sorted(clash)} are set from config and summary, not passed in")
    return {"command": command, "seed": config.seed, "epochs_run": summary["epochs_run"],
            "best_epoch": summary["best_epoch"], "seconds": summary["seconds"], **extra}


def save_run(model: nn.Module, config: TrainConfig, card: dict[str, Any]) -> dict[str, Any]:
    """Write the trained weights as ``<out_dir>/<name>.safetensors`` (fp16) and the card beside them.

    Args:
        model: the trained network (its best epoch).
        config: the run's settings: a task config with ``out_dir`` and ``name``.
        card: the model card (:func:`pulmo.weights.save_weights` adds ``file``, ``sha256`` and ``dtype``).

    Returns:
        The card as written.

    Raises:
        AttributeError: ``config`` has no ``name`` (a bare :class:`TrainConfig`).
        OSError: the folder or the files cannot be written.
    """
    return save_weights(model, Path(config.out_dir) / f"{config.name}.safetensors", card)
