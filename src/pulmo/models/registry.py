"""Model registry: architectures register by name; :func:`create_model` builds them, optionally with
bundled weights (see :mod:`pulmo.weights`). Modelled on timm's ``_registry``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from pulmo.errors import ConfigError

_REGISTRY: dict[str, dict[str, Any]] = {}


def register_model(name: str, task: str, description: str) -> Callable:
    """Decorator registering a model constructor ``fn(**kwargs) -> nn.Module`` under ``name``."""

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = {"fn": fn, "task": task, "description": description}
        return fn

    return wrap


def list_models(task: str | None = None) -> list[dict[str, str]]:
    """Registered architectures as ``[{"name", "task", "description"}]``, sorted by name."""
    return [
        {"name": n, "task": e["task"], "description": e["description"]}
        for n, e in sorted(_REGISTRY.items())
        if task is None or e["task"] == task
    ]


def create_model(name: str, weights: str | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered architecture.

    Args:
        name: a registered architecture name (see :func:`list_models`).
        weights: the name of a bundled weight set (``pulmo models`` lists them) or a path to a
            ``.safetensors`` file with a ``.json`` card beside it. The card's ``model_kwargs`` are used
            and ``kwargs`` must not contradict them.
        **kwargs: constructor arguments (channels, number of classes, ...).

    Returns:
        The model in eval mode when weights were loaded, else freshly initialised in train mode.

    Raises:
        ConfigError: unknown architecture or bad constructor arguments.
        WeightsError: weights missing, sha256 mismatch, or not matching the architecture.
    """
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    if weights is not None:
        from pulmo.weights import load_into, resolve_card

        card = resolve_card(weights)
        if card["architecture"] != name:
            raise ConfigError(f"weights {weights!r} are for {card['architecture']!r}, not {name!r}")
        kwargs = {**card.get("model_kwargs", {}), **kwargs}
    try:
        model = _REGISTRY[name]["fn"](**kwargs)
    except TypeError as exc:
        raise ConfigError(f"bad arguments for model {name!r}: {exc}") from None
    if weights is not None:
        load_into(model, card)
        model.eval()
    return model
