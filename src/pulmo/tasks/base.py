"""The task contract: what every ``pulmo.tasks`` module provides, and the evaluation report they all return.

Every task module registered in :mod:`pulmo.tasks.registry` has the same members (checked by
:func:`check_task_module` and by the registry's contract test):

* ``Config``: the training config dataclass (a :class:`pulmo.engine.TrainConfig` subclass);
* ``FORMATS``: the dataset layouts ``evaluate`` reads (the first is the default), ``SPLITS``: the splits it
  scores (the first is the default);
* ``train(config, command="") -> dict``: trains, writes the run folder and returns the model card (a dict with
  ``name``, ``task``, ``architecture``, ``sha256``, ``metrics``, ...);
* ``evaluate(data, *, format=None, annotations=None, split=None, weights=None, progress=True, **options)
  -> EvalReport``: scores a weight set on a labelled dataset; ``None`` means the task's default (its first
  format / split, its bundled weights); ``options`` are the task's own (e.g. ``negatives`` of ``cxr-detect``)
  and are declared, with help texts, by the registry entry's ``options`` dataclass;
* ``Predictor``: a class with ``Predictor.from_weights(name_or_path)`` and ``.predict(image_or_volume)``;
* ``summary(report) -> str``: the one-line result the command line prints.

The shape follows torchvision's detection models (the model owns its contract: losses in training,
detections in eval) and timm's registry (models listed and created by name, tests run over the registry).
This module imports nothing heavy (no torch), so the command line can be built from the registry cheaply.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from types import ModuleType
from typing import Any

from pulmo.errors import ConfigError

#: members every task module must define (see the module docstring)
CONTRACT_MEMBERS = ("Config", "FORMATS", "SPLITS", "train", "evaluate", "Predictor", "summary")

#: the header every evaluation report starts with, in this order
HEADER_FIELDS = ("task", "n", "weights", "weights_sha256", "seconds")


@dataclasses.dataclass(frozen=True)
class EvalReport(Mapping):
    """The result of a task's ``evaluate``: a fixed header and the task's metrics.

    It is a read-only mapping over :meth:`to_dict`, so ``report["dice_mean"]`` and ``json.dumps(dict(report))``
    work, and ``to_dict()`` is exactly what ``pulmo evaluate --out`` writes.

    Attributes:
        task: registered task name (``lung-seg``, ``cxr-detect``, ...).
        n: number of scored samples (images, slices, scans or nodules: the task's unit, named in ``metrics``).
        weights: name of the weight set scored (its card's ``name``).
        weights_sha256: sha256 of the weight file (from its card), or None for weights without a card hash.
        seconds: wall time of the scoring loop, s.
        metrics: the task's metrics (keys and meanings in each task's ``evaluate`` docstring).
    """

    task: str
    n: int
    weights: str | None
    weights_sha256: str | None
    seconds: float
    metrics: Mapping[str, Any]

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any], *, task: str, n_key: str = "n") -> EvalReport:
        """Build a report from a task's metric dict, taking the header fields out of it.

        Args:
            metrics: the task's metrics; may hold ``task``, ``weights``, ``weights_sha256``, ``seconds`` and the
                sample count under ``n_key`` (kept in the metrics too when it is not ``n``).
            task: the registered task name (wins over ``metrics["task"]``).
            n_key: the key of the sample count in ``metrics`` (``n``, ``n_images``, ``n_nodules``, ...).

        Raises:
            ConfigError: ``n_key`` is missing from ``metrics`` (a task bug, named clearly).
        """
        if n_key not in metrics:
            raise ConfigError(f"evaluate {task}: the metrics have no sample count {n_key!r} (keys: "
                              f"{', '.join(sorted(metrics))})")
        rest = {k: v for k, v in metrics.items() if k not in HEADER_FIELDS}
        if n_key != "n":
            rest[n_key] = metrics[n_key]
        return cls(task=task, n=int(metrics[n_key]), weights=metrics.get("weights"),
                   weights_sha256=metrics.get("weights_sha256"), seconds=float(metrics.get("seconds") or 0.0),
                   metrics=rest)

    def to_dict(self) -> dict[str, Any]:
        """The header fields first, then the metrics: the content of ``pulmo evaluate --out``."""
        return {"task": self.task, "n": self.n, "weights": self.weights, "weights_sha256": self.weights_sha256,
                "seconds": self.seconds, **self.metrics}

    def __getitem__(self, key: str) -> Any:
        if key in HEADER_FIELDS:
            return getattr(self, key)
        return self.metrics[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(HEADER_FIELDS) + sum(1 for k in self.metrics if k not in HEADER_FIELDS)


class FromWeights:
    """``from_weights`` of the task contract for a predictor class whose constructor takes the weights first.

    A task's ``Predictor`` subclasses its inference class and this mixin, and sets :attr:`default_weights`.
    """

    #: the bundled weight name used when ``from_weights`` gets None
    default_weights: str = ""

    @classmethod
    def from_weights(cls, name_or_path: str | None = None, **kwargs: Any):
        """The predictor of a bundled weight name or a ``.safetensors`` path with its card beside it (None: the
        task's bundled weights); ``kwargs`` go to the constructor.

        Raises:
            WeightsError: missing or corrupted weights, or a card of another task.
        """
        return cls(name_or_path or cls.default_weights, **kwargs)


def held_out_patients(card: Mapping[str, Any]) -> list[str]:
    """The patients a card lists as held out for testing (``training.split.test_patients``).

    Raises:
        ConfigError: the card lists none (the message says to score ``split='all'``).
    """
    patients = ((card.get("training") or {}).get("split") or {}).get("test_patients")
    if not patients:
        raise ConfigError(f"weights {card.get('name')!r}: the card lists no held-out test patients "
                          "(training.split.test_patients); use split='all'")
    return list(patients)


def choose(value: str | None, allowed: Sequence[str], *, task: str, parameter: str) -> str:
    """``value`` checked against ``allowed`` (``None`` = the first, the default).

    Raises:
        ConfigError: ``value`` is not one of ``allowed``; the message names the task, the parameter, the value
            and the choices.
    """
    if value is None:
        return allowed[0]
    if value not in allowed:
        raise ConfigError(f"evaluate {task}: {parameter}={value!r} is not one of {', '.join(allowed)}")
    return value


def check_task_module(module: ModuleType, name: str) -> ModuleType:
    """The module itself when it defines every member of the task contract.

    Raises:
        ConfigError: a member is missing or of the wrong kind (a bug of that task module, named).
    """
    missing = [m for m in CONTRACT_MEMBERS if not hasattr(module, m)]
    if missing:
        raise ConfigError(f"task {name!r} ({module.__name__}) lacks the contract members {', '.join(missing)}")
    if not (dataclasses.is_dataclass(module.Config) and isinstance(module.Config, type)):
        raise ConfigError(f"task {name!r}: Config must be a dataclass type")
    if not callable(getattr(module.Predictor, "from_weights", None)) or not callable(
            getattr(module.Predictor, "predict", None)):
        raise ConfigError(f"task {name!r}: Predictor needs from_weights() and predict()")
    if not module.FORMATS or not module.SPLITS:
        raise ConfigError(f"task {name!r}: FORMATS and SPLITS must not be empty")
    return module


__all__ = [
    "CONTRACT_MEMBERS",
    "HEADER_FIELDS",
    "EvalReport",
    "FromWeights",
    "check_task_module",
    "choose",
    "held_out_patients",
]
