"""Grad-CAM and Grad-CAM++ in closed form for a classifier whose head is global average pooling + one linear
layer (ResNet-18 here), from the exported graph's ``activation`` output: no autograd, no torch import.

For such a head the class logit is ``y_c = b_c + sum_k W[c, k] * mean_ij A[k, i, j]``, so the gradient of
``y_c`` with respect to the activation is ``W[c, k] / (H * W)`` at every position. Put into MONAI's formulas
(``monai.visualize.GradCAM`` / ``GradCAMpp``, which follow Selvaraju et al. 2017 and Chattopadhay et al. 2018),
with the map upsampled bilinearly to the network input as MONAI's ``default_upsampler`` does. The export checks
on a random input that this equals MONAI's map for the exported weights before it records ``closed_form_cam``.
"""

from __future__ import annotations

import numpy as np


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(h, w)`` -> float32 ``(H, W)`` bilinear, ``align_corners=False``, no antialiasing: PyTorch's
    ``F.interpolate(mode="bilinear")`` (source coordinate ``(i + 0.5) * h / H - 0.5``, clamped at 0), in NumPy.
    Enlarging along both axes goes through Pillow's float bilinear resize, the same filter there (measured:
    within 2e-7 of PyTorch's) and several times faster; shrinking uses the NumPy form (Pillow would antialias)."""
    if size[0] >= x.shape[0] and size[1] >= x.shape[1]:
        from PIL import Image

        img = Image.fromarray(np.ascontiguousarray(x, dtype=np.float32))
        return np.array(img.resize((size[1], size[0]), Image.BILINEAR), dtype=np.float32)

    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * n_in / n_out - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, (src - i0).astype(np.float32)

    y0, y1, wy = axis(x.shape[0], size[0])
    x0, x1, wx = axis(x.shape[1], size[1])
    rows = x[y0] * (1 - wy)[:, None] + x[y1] * wy[:, None]
    return (rows[:, x0] * (1 - wx) + rows[:, x1] * wx).astype(np.float32)


def class_activation_map(activation: np.ndarray, head_weight: np.ndarray, logit: float, class_index: int,
                         size: tuple[int, int], method: str = "gradcam") -> np.ndarray:
    """The map ``(H, W)`` >= 0 of ``class_index`` at the input ``size``, unnormalised, as
    :func:`pulmo.explain.class_activation_map` gives it for a pooled-linear head.

    Args:
        activation: ``(K, h, w)`` float32, the Grad-CAM layer's output for one image.
        head_weight: ``(classes, K)`` the linear layer's weight.
        logit: the class's logit (Grad-CAM++ weights the gradient by ``exp(logit)``, as MONAI does).
        class_index: the class.
        size: the network input ``(H, W)``.
        method: ``gradcam`` or ``gradcam++``.

    Raises:
        ValueError: unknown ``method``.
    """
    a = activation.astype(np.float32)
    k, h, w = a.shape
    grad = (head_weight[class_index].astype(np.float32) / np.float32(h * w))[:, None, None]  # (K, 1, 1)
    if method == "gradcam":
        weights = grad[:, 0, 0]
    elif method == "gradcam++":
        nr = grad ** 2
        dr = 2 * nr + (a * grad ** 3).reshape(k, -1).sum(-1)[:, None, None]
        dr = np.where(dr != 0.0, dr, np.ones_like(dr))
        alpha = nr / (dr + np.float32(1e-7))
        relu_grad = np.maximum(np.exp(np.float32(logit)) * grad, 0)
        weights = (np.broadcast_to(alpha * relu_grad, a.shape)).reshape(k, -1).sum(-1)
    else:
        raise ValueError(f"unknown CAM method {method!r}; expected gradcam or gradcam++")
    cam = np.maximum((weights[:, None, None] * a).sum(0), 0)
    return resize_bilinear(cam, size)
