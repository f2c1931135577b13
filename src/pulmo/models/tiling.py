"""Whole-image and overlap-tile inference of fully convolutional segmentation networks.

Overlap-tile (Ronneberger et al. 2015, "U-Net", section 2 and Fig. 2): the output is assembled from
non-overlapping *valid* regions (``tile - 2 * margin`` px square); each is predicted from an input tile of
``tile`` px that adds ``margin`` px of context on every side. Context missing beyond the image is filled by
mirroring the image at its borders (``numpy.pad(mode="reflect")``). Only the valid (central) region of each tile's
output is kept and the valid regions are stitched edge to edge, without blending. With Ronneberger's unpadded
convolutions the discarded margin is exactly what the network cannot compute; with zero-padded ("same")
convolutions, as pulmo's U-Nets use, it is the part of each tile's output that sees the tile's zero padding.

For a network whose receptive field reaches at most ``margin`` px from a pixel (and which is translation
equivariant, i.e. no pooling-phase effects), the stitched result equals the network applied once to the whole
mirror-padded image; otherwise it differs only through context beyond the margin.
"""

from __future__ import annotations

import numpy as np
import torch

from pulmo.models.registry import model_device


def _as_chw(image: np.ndarray | torch.Tensor) -> np.ndarray:
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise ValueError(f"expected an (H, W) or (C, H, W) image, got shape {a.shape}")
    return np.ascontiguousarray(a, dtype=np.float32)


@torch.no_grad()
def whole_image_inference(model: torch.nn.Module, image: np.ndarray | torch.Tensor, multiple: int = 32) -> np.ndarray:
    """Logits ``(K, H, W)`` of one ``(H, W)`` or ``(C, H, W)`` image in one forward pass; the image is
    mirror-padded at the bottom/right to a multiple of ``multiple`` px (what a U-Net's pooling needs) and
    the output cropped back. ``model`` maps ``(1, C, H', W')`` to ``(1, K, H', W')`` (same-size output).

    Returns:
        float32 ``(K, H, W)`` logits.

    Raises:
        ValueError: ``image`` is neither ``(H, W)`` nor ``(C, H, W)``.
    """
    x = _as_chw(image)
    h, w = x.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, ph), (0, pw)), mode="reflect")
    out = model(torch.from_numpy(x)[None].to(model_device(model)))
    return out[0, :, :h, :w].float().cpu().numpy()


@torch.no_grad()
def overlap_tile_inference(model: torch.nn.Module, image: np.ndarray | torch.Tensor, tile: int,
                           margin: int | None = None, batch_size: int = 4) -> np.ndarray:
    """Logits ``(K, H, W)`` of one ``(H, W)`` or ``(C, H, W)`` image by overlap-tile inference (module docstring).

    Args:
        model: maps ``(B, C, tile, tile)`` to ``(B, K, tile, tile)`` (same-size output), e.g. a U-Net in eval mode.
        image: the image, any size (it need not be a multiple of anything).
        tile: input tile size in px (what the network sees; must suit the network, e.g. a multiple of 16 for a
            five-scale U-Net).
        margin: context discarded on each side of a tile's output; default ``tile // 4`` (valid region
            ``tile // 2``). Must leave a valid region: ``tile - 2 * margin >= 1``.
        batch_size: tiles per forward pass.

    Returns:
        float32 logits with the image's height and width; every pixel comes from exactly one tile's valid region.

    Raises:
        ValueError: ``tile < 1``, ``margin < 0`` or ``tile - 2 * margin < 1``; or ``image`` is neither
            ``(H, W)`` nor ``(C, H, W)``.
    """
    margin = tile // 4 if margin is None else int(margin)
    core = tile - 2 * margin
    if tile < 1 or margin < 0 or core < 1:
        raise ValueError(f"tile {tile} with margin {margin} leaves no valid region")
    x = _as_chw(image)
    h, w = x.shape[-2:]
    ny, nx = -(-h // core), -(-w // core)
    # mirror the image: margin px of context on every side, plus the bottom/right run-out of the last valid region
    padded = np.pad(x, ((0, 0), (margin, margin + ny * core - h), (margin, margin + nx * core - w)), mode="reflect")
    origins = [(i * core, j * core) for i in range(ny) for j in range(nx)]
    device = model_device(model)
    out: np.ndarray | None = None
    for start in range(0, len(origins), batch_size):
        chunk = origins[start:start + batch_size]
        batch = torch.from_numpy(np.stack([padded[:, y:y + tile, x0:x0 + tile] for y, x0 in chunk])).to(device)
        logits = model(batch).float().cpu().numpy()
        if out is None:
            out = np.zeros((logits.shape[1], ny * core, nx * core), np.float32)
        for (y, x0), t in zip(chunk, logits):
            out[:, y:y + core, x0:x0 + core] = t[:, margin:margin + core, margin:margin + core]
    assert out is not None
    return out[:, :h, :w]


__all__ = ["overlap_tile_inference", "whole_image_inference"]
