"""The chest X-ray lesion detector's predictor (:class:`Detector`, RetinaNet), on the ONNX backend (the exported
backbone, FPN and head, then :func:`pulmo.runtime.retinanet.postprocess` in NumPy) or the PyTorch one (torch
imported only then). Training and evaluation: :mod:`pulmo.tasks.cxr_detect`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from pulmo.datasets.detection import TBX11K_CLINICAL_NAMES
from pulmo.errors import InputError, WeightsError
from pulmo.io import Image2D
from pulmo.metrics.detection import above
from pulmo.runtime import BackendModel
from pulmo.runtime.retinanet import postprocess
from pulmo.weights import InputSpec

#: The bundled weight set.
DEFAULT_WEIGHTS = "cxr-detect"


def prepare_image(image: Image2D, size: int | InputSpec) -> tuple[np.ndarray, tuple[float, float]]:
    """A chest X-ray as the detector's input: float32 ``(size, size)`` in [0, 1] and the (x, y) scale that maps
    working px back to original px.

    Args:
        image: the radiograph.
        size: the working size (square), or a card's input (``card.input``: its ``size``).

    Raises:
        InputError: a colour image (detection runs on greyscale radiographs).
    """
    spec = size if isinstance(size, InputSpec) else InputSpec.cxr(size)
    pixels = image.pixels
    if pixels.ndim != 2:
        raise InputError(f"{image.source.get('path', 'image')}: expected a greyscale radiograph (H, W), got "
                         f"shape {pixels.shape}")
    h, w = pixels.shape
    x = spec.prepare(image)  # resize_image(normalize_cxr(pixels), size), float32
    sh, sw = spec.size
    return x, (w / sw, h / sh)


def _to_numpy_predictions(outputs: list[dict[str, Any]], classes: Sequence[str],
                          scale: Sequence[tuple[float, float]] | None = None) -> list[dict[str, Any]]:
    def numpy(v: Any) -> np.ndarray:  # torchvision's tensors or the ONNX path's arrays
        return v.detach().float().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)

    preds = []
    for i, o in enumerate(outputs):
        boxes = numpy(o["boxes"]).astype(np.float64)
        if scale is not None:
            sx, sy = scale[i]
            boxes = boxes * np.array([sx, sy, sx, sy])
        preds.append({"boxes": boxes.reshape(-1, 4), "scores": numpy(o["scores"]).astype(np.float64),
                      "labels": [classes[int(k) - 1] for k in o["labels"]]})
    return preds


def display_name(label: str) -> str:
    """The clinical name of a detector class for reports and viewers: TBX11K's class names mapped to "active TB"
    / "latent TB" (:data:`pulmo.datasets.detection.TBX11K_CLINICAL_NAMES`), any other class (ChestX-Det10's
    "Effusion", ...) as it is."""
    return TBX11K_CLINICAL_NAMES.get(label, label)


def detection_rows(raw: dict[str, Any], threshold: float) -> list[dict[str, Any]]:
    """One image's scored boxes (``{"boxes": (N, 4) xyxy px, "scores": (N,), "labels": [str]}``) at or above
    ``threshold`` as findings rows, highest score first: ``[{"label", "name", "score", "box_xyxy"}]`` (see
    :meth:`Detector.predict`)."""
    p = above([raw], threshold)[0]
    order = np.argsort(-p["scores"], kind="mergesort")
    return [{"label": p["labels"][i], "name": display_name(p["labels"][i]), "score": round(float(p["scores"][i]), 4),
             "box_xyxy": [round(float(v), 1) for v in p["boxes"][i]]} for i in order]


class Detector(BackendModel):
    """Lesion boxes on chest X-rays with a bundled or trained ``cxr-detect`` weight set (RetinaNet).

    Args:
        weights: bundled weight name or ``.safetensors`` path with its card.
        backend: ``onnx`` (the exported backbone + head, then :func:`pulmo.runtime.retinanet.postprocess` in
            NumPy), ``torch`` or ``auto`` (None: the process default, :func:`pulmo.runtime.choose_backend`).

    Raises:
        WeightsError: missing or corrupted weights. NotAvailableError: ``backend="onnx"`` without an export.
    """

    def __init__(self, weights: str = DEFAULT_WEIGHTS, backend: str | None = None):
        self._load_weights(weights, backend)
        if self.card.get("task") != "cxr-detect":
            raise WeightsError(f"{weights}: a {self.card.get('task')!r} weight set, expected a 'cxr-detect' one "
                               "(a RetinaNet trained by `pulmo train cxr-detect`)")
        self.size = int(self.card["input"]["size"][0])
        self.labels = list(self.card["labels"])
        self.threshold = float(self.card["thresholds"]["score"])

    def predict_raw(self, images: Sequence[Image2D]) -> list[dict[str, Any]]:
        """Every candidate (score >= the model's 0.05 floor) per image, boxes in original px."""
        xs, scales = zip(*(prepare_image(im, self.card.input) for im in images))
        if self.onnx is not None:
            outputs = []
            for x in xs:
                raw = self.onnx.run(x[None, None])
                outputs.append(postprocess(raw["cls_logits"][0], raw["bbox_regression"][0], raw["anchors"],
                                           self.onnx.metadata))
        else:
            import torch

            with torch.no_grad():
                outputs = self.model([torch.from_numpy(x)[None] for x in xs])
        return _to_numpy_predictions(outputs, self.labels, scales)

    def predict(self, image: Image2D) -> list[dict[str, Any]]:
        """Detections above the card's score threshold, highest score first: ``[{"label": str (the dataset's
        class), "name": str (its clinical name for display: TBX11K's ``ObsoletePulmonaryTuberculosis`` is "latent
        TB"), "score": float in [0, 1], "box_xyxy": [x1, y1, x2, y2] original px}]``."""
        return detection_rows(self.predict_raw([image])[0], self.threshold)


__all__ = ["DEFAULT_WEIGHTS", "Detector", "detection_rows", "display_name", "prepare_image"]
