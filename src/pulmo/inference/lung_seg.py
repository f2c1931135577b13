"""The chest X-ray lung-segmentation predictor (:class:`LungSegmenter`), on the ONNX or the PyTorch backend
(:mod:`pulmo.runtime`; torch is imported only by the latter). Training and evaluation: :mod:`pulmo.tasks.lung_seg`."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

from pulmo.errors import InputError
from pulmo.io import Image2D
from pulmo.runtime import BackendModel
from pulmo.transforms import resize_bilinear
from pulmo.weights import InputSpec, resolve_card

#: The bundled weight set.
DEFAULT_WEIGHTS = "lung-seg-unet"


class LungSegmenter(BackendModel):
    """Lung segmentation of a chest X-ray with a bundled or trained weight set.

    Args:
        weights: bundled weight name or ``.safetensors`` path with its card (default: the bundled model).
        model, card: an already built PyTorch model and its card (used after training; runs with torch).
        backend: ``onnx``, ``torch`` or ``auto`` (None: the process default, :func:`pulmo.runtime.choose_backend`).

    Raises:
        WeightsError: missing or corrupted weights.
    """

    def __init__(self, weights: str | None = DEFAULT_WEIGHTS, model: Any = None,
                 card: dict[str, Any] | None = None, backend: str | None = None):
        if model is None:
            card = resolve_card(weights)
        self.card = card or {}
        self._init_backend(self.card, weights, backend, None if model is None else model.eval())
        # the card's input, also of a plain card dict from training: normalize_cxr, resize to size (256 x 256 if none)
        self.input = InputSpec.from_card(self.card, task="lung-seg", default_size=(256, 256))
        self.size = self.input.size
        self.channel = int(self.card.get("output_channel", 0))
        self.threshold = float(self.card.get("thresholds", {}).get("lung", 0.5))

    def probabilities(self, image: Image2D) -> np.ndarray:
        """Per-channel lung probability ``(K, H, W)`` in [0, 1] at the image's original size.

        Raises:
            InputError: the image is not a chest X-ray (a CT slice, say) or not greyscale ``(H, W)``.
        """
        if image.modality not in ("cxr", None):
            raise InputError(f"{image.source.get('path', 'image')}: modality {image.modality!r}; lung-seg expects a chest X-ray")
        x = self.input.prepare(image)  # resize_image(normalize_cxr(pixels), size), float32 (h, w)
        if self.onnx is not None:
            logits = self.onnx.run(x[None, None])["logits"][0].astype(np.float64)
            prob = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
            return np.stack([resize_bilinear(p, image.shape) for p in prob])
        # the PyTorch backend keeps its own upsampling: its probabilities stay bit-identical to the releases before
        # the ONNX backend (tests/weights/test_card.py), where the NumPy resize differs in the last float bit
        import torch

        from pulmo.models import model_device
        from pulmo.transforms import resize_probability

        with torch.no_grad():
            prob = torch.sigmoid(self.model(torch.from_numpy(x)[None, None].to(model_device(self.model))))
            return resize_probability(prob, image.shape)[0].cpu().numpy()

    def postprocess(self, probability: np.ndarray) -> np.ndarray:
        """Threshold ``(H, W)`` probabilities, keep the two largest components (each >= 10 % of the
        largest; smaller islands removed) and fill holes. Returns a bool mask ``(H, W)``."""
        mask = probability >= self.threshold
        labels, n = ndimage.label(mask)
        if n == 0:
            return mask
        areas = ndimage.sum_labels(mask, labels, index=np.arange(1, n + 1))
        order = np.argsort(areas)[::-1][:2]
        keep = [i + 1 for i in order if areas[i] >= 0.1 * areas[order[0]]]
        return ndimage.binary_fill_holes(np.isin(labels, keep))

    def predict(self, image: Image2D) -> np.ndarray:
        """Lung mask (bool ``(H, W)``, original size) in the visible-lung-field convention."""
        return self.postprocess(self.probabilities(image)[self.channel])


__all__ = ["DEFAULT_WEIGHTS", "LungSegmenter"]
