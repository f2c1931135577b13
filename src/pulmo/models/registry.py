"""Model registry: architectures register by name; :func:`create_model` builds them, optionally with
bundled weights (see :mod:`pulmo.weights`). Modelled on timm's ``_registry``."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from pulmo.errors import ConfigError

_REGISTRY: dict[str, dict[str, Any]] = {}
#: deprecated name -> registered name. :func:`create_model` still builds the old name (with a
#: ``DeprecationWarning``), and weight cards saved under either name load under both.
_ALIASES: dict[str, str] = {}


def register_model(name: str, task: str, description: str) -> Callable:
    """Decorator registering a model constructor ``fn(**kwargs) -> nn.Module`` under ``name``.

    Args:
        name: the architecture name of the CLI and of weight cards (e.g. ``"unet-rsna-pneumonia"``).
        task: the kind of model: ``"segmentation"``, ``"classification"``, ``"detection"`` or ``"nodule"``.
        description: one line for ``pulmo models``.

    Returns:
        The decorator; it returns ``fn`` unchanged.

    Raises:
        ValueError: (when decorating) ``name`` is already a registered name or alias.
    """

    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY or name in _ALIASES:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = {"fn": fn, "task": task, "description": description}
        return fn

    return wrap


def register_alias(old: str, new: str) -> None:
    """Keep the retired name ``old`` of the registered model ``new`` working, deprecated: :func:`create_model`
    builds ``new`` for it with a ``DeprecationWarning``, and cards whose ``architecture`` is either name load
    under both.

    Raises:
        ValueError: ``new`` is not registered, or ``old`` is already a registered name or alias.
    """
    if new not in _REGISTRY:
        raise ValueError(f"alias {old!r}: model {new!r} is not registered")
    if old in _REGISTRY or old in _ALIASES:
        raise ValueError(f"model {old!r} is registered twice")
    _ALIASES[old] = new


def canonical_name(name: str) -> str:
    """The registered name ``name`` stands for: itself, or the new name of a deprecated alias (no warning)."""
    return _ALIASES.get(name, name)


def list_models(task: str | None = None, include_aliases: bool = False) -> list[dict[str, str]]:
    """Registered architectures as ``[{"name", "task", "description"}]``, sorted by name.

    Deprecated aliases are left out unless ``include_aliases``; then each is listed too, with
    ``"alias_of"`` (its new name) and a description that says it is deprecated.
    """
    rows = [{"name": n, "task": e["task"], "description": e["description"]} for n, e in _REGISTRY.items()]
    if include_aliases:
        rows += [{"name": old, "task": _REGISTRY[new]["task"], "alias_of": new,
                  "description": f"deprecated alias of {new}"} for old, new in _ALIASES.items()]
    return sorted((r for r in rows if task is None or r["task"] == task), key=lambda r: r["name"])


def model_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (where its inputs must go); the CPU for a model without any."""
    param = next(iter(model.parameters()), None)
    return param.device if param is not None else torch.device("cpu")


def create_model(name: str, weights: str | None = None, **kwargs: Any) -> nn.Module:
    """Build a registered architecture.

    Args:
        name: a registered architecture name (see :func:`list_models`); a deprecated alias builds its new
            name's model, with a ``DeprecationWarning``.
        weights: the name of a bundled weight set (``pulmo models`` lists them) or a path to a
            ``.safetensors`` file with a ``.json`` card beside it. The card's ``model_kwargs`` are used
            and ``kwargs`` must not contradict them.
        **kwargs: constructor arguments (channels, number of classes, ...).

    Returns:
        The model in eval mode when weights were loaded, else freshly initialised in train mode.

    Raises:
        ConfigError: unknown architecture, bad constructor arguments, or ``weights`` whose card names another
            architecture.
        WeightsError: weights missing, sha256 mismatch, or not matching the architecture.
    """
    if name in _ALIASES:
        warnings.warn(f"model name {name!r} is deprecated; use {_ALIASES[name]!r} (the same model)",
                      DeprecationWarning, stacklevel=2)
        name = _ALIASES[name]
    if name not in _REGISTRY:
        raise ConfigError(f"unknown model {name!r}; registered: {', '.join(sorted(_REGISTRY))}")
    if weights is not None:
        from pulmo.weights import load_into, resolve_card

        card = resolve_card(weights)
        if canonical_name(card["architecture"]) != name:
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
