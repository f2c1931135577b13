"""Batched prediction of a 2D network over cached 8-bit images, on the network's device."""

from __future__ import annotations

import numpy as np
import torch

from pulmo.models import model_device


@torch.no_grad()
def batched_logits(model: torch.nn.Module, images: np.ndarray, num_outputs: int, batch_size: int = 64) -> np.ndarray:
    """Logits of ``model`` (in its current mode) for uint8 images scaled to [0, 1].

    The images go to the model's device (that of its first parameter; the CPU for a model without any) and the
    logits come back to the CPU.

    Args:
        model: a network taking ``(B, 1, H, W)`` float32 and returning ``(B, num_outputs)``.
        images: uint8 ``(N, H, W)`` (0..255 maps to 0..1).
        num_outputs: the number of outputs, for the shape of an empty result.
        batch_size: images per forward pass.

    Returns:
        float32 ``(N, num_outputs)``.
    """
    device = model_device(model)
    out = []
    for i in range(0, len(images), batch_size):
        x = torch.from_numpy(images[i:i + batch_size].astype(np.float32) / 255.0)[:, None]
        out.append(model(x.to(device)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, num_outputs), np.float32)
