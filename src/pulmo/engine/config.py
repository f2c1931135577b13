"""Typed configuration dataclasses, loadable from YAML, overridable from the command line."""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from pulmo.errors import ConfigError

T = TypeVar("T")

#: accepted values of :attr:`TrainConfig.device`
DEVICES = ("auto", "cpu", "cuda")


@dataclasses.dataclass
class TrainConfig:
    """Settings of the generic training loop (:func:`pulmo.engine.trainer.fit`).

    Attributes:
        out_dir: run folder: checkpoints, ``config.yaml``, ``history.jsonl``, best weights.
        epochs: maximum number of epochs.
        batch_size: per-process batch size.
        lr: peak learning rate (after a linear warm-up epoch for the ``cosine`` schedule).
        weight_decay: weight decay (decoupled for AdamW, L2 for Adam and SGD).
        optimizer: ``adamw`` (default), ``adam`` (torch.optim.Adam, as several of the reproduced reports use) or
            ``sgd`` (momentum 0.9).
        schedule: ``cosine`` (one warm-up epoch, then cosine decay to 2 % of ``lr``; default) or ``constant``
            (``lr`` throughout, as a report that names only a learning rate).
        patience: early stopping after this many epochs without improvement of the monitored metric.
        bf16: run forward/backward under bfloat16 autocast on the training device.
        channels_last: use the channels-last memory format.
        num_workers: DataLoader worker processes.
        threads: torch intra-op threads (0 = leave as is).
        seed: random seed (data order, augmentation, initialisation).
        resume: continue from ``out_dir/last.pt`` when it exists.
        max_steps_per_epoch: cap on optimiser steps per epoch (0 = full epoch; for smoke tests).
        progress: show tqdm progress bars.
        device: where the model and batches live: ``cpu``, ``cuda`` or ``auto`` (default: ``cuda`` when
            ``torch.cuda.is_available()``, else ``cpu``). Under DDP with CUDA each process takes ``cuda:LOCAL_RANK``.
            Resolved by :func:`pulmo.engine.distributed.resolve_device` when training starts.

    Raises:
        ConfigError: ``device`` is not one of ``auto``, ``cpu``, ``cuda``.
    """

    out_dir: str = "runs/run"
    epochs: int = 50
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    optimizer: str = dataclasses.field(default="adamw", metadata={"choices": ("adamw", "adam", "sgd")})
    schedule: str = dataclasses.field(default="cosine", metadata={"choices": ("cosine", "constant")})
    patience: int = 10
    bf16: bool = False
    channels_last: bool = False
    num_workers: int = 0
    threads: int = 0
    seed: int = 0
    resume: bool = False
    max_steps_per_epoch: int = 0
    progress: bool = dataclasses.field(default=True, metadata={"flag": False})  # the CLI's global --no-progress
    device: str = dataclasses.field(default="auto", metadata={"choices": DEVICES})

    def __post_init__(self) -> None:
        if self.device not in DEVICES:
            raise ConfigError(f"device {self.device!r} is not one of {', '.join(DEVICES)} "
                              "(auto = cuda when a GPU is available, else cpu)")


def _coerce(value: Any, tp: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        tp = args[0]
        origin = typing.get_origin(tp)
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if origin in (list, tuple):
            items = value.split(",") if isinstance(value, str) else list(value)
            (inner,) = typing.get_args(tp)[:1] or (str,)
            return [_coerce(v, inner, name) for v in items]
        if tp in (int, float, str):
            return tp(value)
    except (TypeError, ValueError):
        raise ConfigError(f"config value {name}={value!r} is not a valid {getattr(tp, '__name__', tp)}") from None
    return value


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build dataclass ``cls`` from a dict, converting types; unknown keys raise :class:`ConfigError`.

    Args:
        cls: a dataclass type (e.g. a :class:`TrainConfig` subclass).
        data: field name -> value; strings are converted to the field's annotated type (``bool`` from
            1/0, true/false, yes/no, on/off; lists from comma-separated strings; ``"none"`` / ``"null"`` to
            None for optional fields). Missing fields keep their defaults.

    Returns:
        An instance of ``cls``.

    Raises:
        ConfigError: a key is not a field of ``cls``, a value cannot be converted to its field's type, or
            ``cls.__post_init__`` rejects a value (e.g. :attr:`TrainConfig.device`).
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(f"unknown config keys {sorted(unknown)} for {cls.__name__}; known: {sorted(names)}")
    return cls(**{k: _coerce(v, hints[k], k) for k, v in data.items()})


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict[str, Any] | None = None,
                base: dict[str, Any] | None = None) -> T:
    """Build ``cls`` from ``base`` (e.g. a preset's config), then a YAML file (optional), then ``overrides``
    (e.g. CLI flags; None skipped): each later source wins.

    Raises:
        ConfigError: unreadable YAML, unknown keys or values of the wrong type.
    """
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the YAML config ({exc})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys, got {type(loaded).__name__}")
        data.update(loaded)
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return from_dict(cls, data)


def save_config(config: Any, path: str | Path) -> Path:
    """Write a dataclass config as YAML (the resolved config of a run)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dataclasses.asdict(config), sort_keys=False))
    return path
