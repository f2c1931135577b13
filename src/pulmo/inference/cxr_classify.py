"""The chest X-ray classifier's predictor (:class:`CxrClassifier`: calibrated probabilities, the in-scope
decision, Grad-CAM / Grad-CAM++) and its input preparation (:class:`Preprocessor`), on the ONNX or the PyTorch
backend (:mod:`pulmo.runtime`; torch is imported only by the latter). Training and evaluation:
:mod:`pulmo.tasks.cxr_classify`."""

from __future__ import annotations

from typing import Any

import numpy as np

from pulmo.datasets.cxr_labels import OTHER_FINDING
from pulmo.errors import ConfigError, WeightsError
from pulmo.io import Image2D
from pulmo.metrics.calibration import softmax
from pulmo.runtime import BackendModel
from pulmo.transforms import lung_field_box, resize_image
from pulmo.transforms.classifier import CROP_MODES, DEFAULT_CROP, DEFAULT_CROP_MARGIN, needs_lungs
from pulmo.weights import InputSpec

#: The bundled weight set.
DEFAULT_WEIGHTS = "cxr-classify"


class Preprocessor:
    """Image -> classifier input: an :class:`~pulmo.weights.InputSpec` of the classifier's recipe
    (:meth:`InputSpec.prepare <pulmo.weights.InputSpec.prepare>`, i.e. :func:`pulmo.transforms.classifier_input`:
    robust normalisation, lung-field crop, optional lung masking, histogram equalisation, resize) plus the lung
    mask when the recipe needs one and none is given (the bundled ``lung-seg`` model).

    ``__call__`` returns ``(x, lungs, box)``: float32 ``(S, S)`` in [0, 1], the lung mask ``(H, W)`` at the
    original size (None when neither masking nor cropping needs it and none was given) and the crop
    ``(y0, y1, x0, x1)`` in original px (the whole image without cropping).

    Args:
        size: working side in px (square). lung_mask, crop, equalize, margin: the recipe's settings
            (``crop`` default :data:`~pulmo.transforms.classifier.DEFAULT_CROP`, ``"lungs"``).
        spec: the input of a card (:meth:`from_spec`); built from the settings when None.

    Raises:
        ConfigError: ``crop`` is not ``none`` or ``lungs``.
    """

    def __init__(self, size: int, lung_mask: bool, crop: str = DEFAULT_CROP, equalize: bool = False,
                 margin: float = DEFAULT_CROP_MARGIN, spec: InputSpec | None = None):
        if crop not in CROP_MODES:
            raise ConfigError(f"crop must be 'none' or 'lungs', got {crop!r}")
        self.size, self.lung_mask, self.crop, self.equalize, self.margin = size, lung_mask, crop, equalize, margin
        self.spec = spec or InputSpec.classifier(size, crop=crop, lung_mask=lung_mask, equalize=equalize,
                                                 crop_margin=margin)
        self._segmenter = None

    @classmethod
    def from_spec(cls, spec: InputSpec) -> Preprocessor:
        """The preprocessor of a card's input (``card.input``), which it prepares images with.

        Raises:
            ConfigError: the card's ``crop`` is not ``none`` or ``lungs``. WeightsError: no square 2-D ``size``
                or a malformed setting.
        """
        if spec.size is None or len(spec.size) != 2 or spec.size[0] != spec.size[1]:
            raise WeightsError(f"model card {spec.where}: input.size = {spec.size} is not a square 2-D size")
        margin = spec.crop_margin
        return cls(spec.size[0], spec.lung_mask, spec.crop or DEFAULT_CROP, spec.equalize,
                   DEFAULT_CROP_MARGIN if margin is None else margin, spec=spec)

    def segmenter(self):
        """The bundled :class:`~pulmo.tasks.lung_seg.LungSegmenter`, built on first use and kept.

        Raises:
            WeightsError: the bundled lung-segmentation weights are missing or corrupted.
        """
        if self._segmenter is None:
            from pulmo.inference.lung_seg import LungSegmenter

            self._segmenter = LungSegmenter()
        return self._segmenter

    def crop_box(self, lungs: np.ndarray) -> tuple[int, int, int, int]:
        """Bounding box of ``lungs`` grown by ``margin`` of its size on each side, within the image; the whole
        image when the mask covers less than 2 % of it (no usable lung fields)."""
        return lung_field_box(lungs, self.margin)

    def __call__(self, image: Image2D, lungs: np.ndarray | None = None
                 ) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int, int, int]]:
        if needs_lungs(self.crop, self.lung_mask) and lungs is None:
            lungs = self.segmenter().predict(image)
        x = self.spec.prepare(image, lungs=lungs)
        h, w = image.pixels.shape
        return x, lungs, self.crop_box(lungs) if self.crop == "lungs" else (0, h, 0, w)

    def describe(self) -> str:
        """The pre-processing in words (for the card)."""
        steps = ["percentile 0.5-99.5 min-max to [0, 1]"]
        if self.lung_mask:
            steps.append("multiplied by the lung-seg-unet mask")
        if self.crop == "lungs":
            steps.append(f"cropped to the lung mask's bounding box + {self.margin:.0%} margins")
        if self.equalize:
            steps.append("histogram-equalised")
        return ", ".join(steps) + f", resized to {self.size} x {self.size}"


def out_of_scope_scores(prob: np.ndarray, labels: list[str]) -> np.ndarray:
    """The out-of-scope score of each row of calibrated ``prob`` ``(N, K)``: the probability of
    :data:`OTHER_FINDING` (zeros for a model without that class)."""
    if OTHER_FINDING not in labels:
        return np.zeros(len(prob))
    return np.asarray(prob)[:, labels.index(OTHER_FINDING)]


def in_scope(prob: np.ndarray, labels: list[str], threshold: float | None) -> np.ndarray:
    """Bool ``(N,)``: the top class is one of the four and the out-of-scope score is below ``threshold``
    (always True for a model without the fifth class)."""
    prob = np.asarray(prob)
    if OTHER_FINDING not in labels or threshold is None:
        return np.ones(len(prob), bool)
    return (out_of_scope_scores(prob, labels) < threshold) & (prob.argmax(1) != labels.index(OTHER_FINDING))


class CxrClassifier(BackendModel):
    """Calibrated prediction (four classes, or five with ``other_finding``) with an in-scope decision and
    Grad-CAM / Grad-CAM++ heatmaps.

    Args:
        weights: bundled weight name or ``.safetensors`` path with its card.
        backend: ``onnx``, ``torch`` or ``auto`` (None: the process default, :func:`pulmo.runtime.choose_backend`).
            With ``onnx`` the heatmaps are computed in closed form from the graph's activation output when the
            export verified that form (:mod:`pulmo.runtime.cam`), else with MONAI on the PyTorch module.

    Raises:
        WeightsError: missing or corrupted weights. NotAvailableError: ``backend="onnx"`` without an export.
    """

    def __init__(self, weights: str = DEFAULT_WEIGHTS, backend: str | None = None):
        self._load_weights(weights, backend)
        self._head_weight: np.ndarray | None = None
        self.labels = list(self.card["labels"])
        self.temperature = float(self.card["calibration"]["temperature"])
        self.pre = Preprocessor.from_spec(self.card.input)  # prepares with card.input.prepare
        thr = (self.card.get("thresholds") or {}).get("out_of_scope")
        self.scope_threshold = None if thr is None else float(thr)

    def predict(self, image: Image2D, lungs: np.ndarray | None = None) -> dict[str, Any]:
        """``{"probabilities": {label: p in [0, 1]} (calibrated, sum 1), "predicted": top label, "in_scope": bool
        (None for a four-class model, which cannot tell),
        "out_of_scope_score": p(other_finding) or None, "input": (S, S) array, "lungs": (H, W) mask or None,
        "crop_box": (y0, y1, x0, x1) original px}``.

        ``in_scope`` is False when the top class is ``other_finding`` or its probability reaches the card's
        ``out_of_scope`` threshold: the image has a finding outside normal / bacterial / viral / COVID-19."""
        x, lungs, box = self.pre(image, lungs)
        logits = self._forward(x[None, None])["logits"]
        prob = softmax(logits, self.temperature)
        has_other = OTHER_FINDING in self.labels
        return {"probabilities": {lab: float(p) for lab, p in zip(self.labels, prob[0])},
                "predicted": self.labels[int(prob[0].argmax())],
                "in_scope": bool(in_scope(prob, self.labels, self.scope_threshold)[0]) if has_other else None,
                "out_of_scope_score": float(out_of_scope_scores(prob, self.labels)[0]) if has_other else None,
                "input": x, "lungs": lungs, "crop_box": box}

    def heatmaps(self, x: np.ndarray, lungs: np.ndarray | None, class_index: int, shape: tuple[int, int],
                 crop_box: tuple[int, int, int, int] | None = None) -> dict[str, tuple[np.ndarray, float]]:
        """``{method: (heatmap (H, W) in [0, 1], fraction of its sum inside the lungs)}`` at the original image
        ``shape`` for ``gradcam`` and ``gradcam++``: normalised over the whole image (0 outside the crop),
        never rescaled inside the lungs alone, so a map whose weight lies outside the lungs shows it."""
        from pulmo.explain.heatmaps import energy_in_mask, normalise_heatmap

        y0, y1, x0, x1 = crop_box or (0, shape[0], 0, shape[1])
        cam = self._cam_function(x, class_index)
        out = {}
        for method in ("gradcam", "gradcam++"):
            heat = np.zeros(shape, np.float32)
            heat[y0:y1, x0:x1] = resize_image(cam(method), (y1 - y0, x1 - x0))
            mask = lungs if lungs is not None else np.ones(shape, bool)
            out[method] = (normalise_heatmap(heat), energy_in_mask(heat, mask))
        return out

    def _cam_function(self, x: np.ndarray, class_index: int) -> Any:
        """``method -> (S, S)`` map of ``class_index`` on the prepared input ``x``: closed form on the ONNX
        graph's activation when the export verified it, else MONAI's on the PyTorch module."""
        meta = self.onnx.metadata if self.onnx is not None else {}
        if meta.get("closed_form_cam"):
            from pulmo.runtime.cam import class_activation_map as closed_form

            out = self.onnx.run(x[None, None])
            if self._head_weight is None:
                from safetensors.numpy import load_file

                from pulmo.weights import verify_sha256

                self._head_weight = load_file(str(verify_sha256(self.card)))[meta["head_weight"]].astype(np.float32)
            logit = float(out["logits"][0, class_index])
            return lambda method: closed_form(out["activation"][0], self._head_weight, logit, class_index,
                                              x.shape, method)
        import torch

        from pulmo.explain import class_activation_map

        t = torch.from_numpy(x)[None, None]
        return lambda method: class_activation_map(self.model, self.card["gradcam_layer"], t, class_index, method)


__all__ = ["DEFAULT_WEIGHTS", "CxrClassifier", "Preprocessor", "in_scope", "out_of_scope_scores"]
