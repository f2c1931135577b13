"""Initialising part of a model from a torchvision ResNet state dict (pulmo's own classifier, or ImageNet weights a
user has as a local file: nothing is downloaded here)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import nn


def copy_resnet_weights(target: nn.Module, state: Mapping[str, torch.Tensor],
                        rename: Callable[[str], str | None] = lambda key: key, what: str = "the model") -> int:
    """Copy the tensors of ``state`` that fit ``target`` (same name after ``rename``, same shape) into it.

    A 3-channel first conv (``conv1.weight``, RGB) is summed over its input channels where ``target``'s is
    1-channel: the usual grey-scale adaptation of RGB filters. ``rename`` maps a torchvision key to the
    target's key (None = skip it); ``what`` names the target in the error.

    Returns:
        The number of tensors copied.

    Raises:
        ValueError: no tensor of ``state`` fits ``target`` (another architecture).
    """
    own = target.state_dict()
    take = {}
    for key, value in state.items():
        name = rename(key)
        if name is None or name not in own:
            continue
        if key == "conv1.weight" and value.ndim == 4 and own[name].shape[1] == 1 and value.shape[1] != 1:
            value = value.sum(dim=1, keepdim=True)
        if own[name].shape == value.shape:
            take[name] = value
    if not take:
        raise ValueError(f"no classifier tensor fits {what}; expected a torchvision ResNet state dict")
    target.load_state_dict(take, strict=False)
    return len(take)
