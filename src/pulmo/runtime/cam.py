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

from pulmo.transforms.geometry import resize_bilinear


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
