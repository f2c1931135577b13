"""The input gate's predictor (:class:`InputGateModel`): calibrated ``{cxr, ct_slice, other}`` probabilities of
a 2-D picture, on the ONNX or the PyTorch backend (:mod:`pulmo.runtime`; torch is imported only by the latter).
Training and evaluation: :mod:`pulmo.tasks.input_gate`."""

from __future__ import annotations

import numpy as np

from pulmo.metrics.calibration import softmax
from pulmo.runtime import BackendModel

#: The bundled weight set.
DEFAULT_WEIGHTS = "input-gate"


class InputGateModel(BackendModel):
    """The bundled gate model: calibrated ``{cxr, ct_slice, other}`` probabilities of a 2D picture.

    Args:
        weights: bundled weight name or ``.safetensors`` path with its card.
        backend: ``onnx``, ``torch`` or ``auto`` (None: the process default, :func:`pulmo.runtime.choose_backend`).

    Raises:
        WeightsError: missing or corrupted weights. NotAvailableError: ``backend="onnx"`` without an export.
    """

    def __init__(self, weights: str = DEFAULT_WEIGHTS, backend: str | None = None):
        self._load_weights(weights, backend)
        self.labels = list(self.card["labels"])
        self.temperature = float(self.card["calibration"]["temperature"])
        self.thresholds = {k: float(self.card["thresholds"][k]) for k in ("cxr", "ct_slice")}

    def predict(self, pixels: np.ndarray) -> dict[str, float]:
        """Calibrated probabilities ``{label: p}`` of a picture ``(H, W)`` of any real dtype.

        The model's input is ``card.input.prepare(pixels)`` (:func:`pulmo.transforms.gate_input` at the card's
        size: float32 ``(128, 128)`` in [0, 1] for the bundled model).

        Raises:
            InputError: ``pixels`` is not ``(H, W)``. WeightsError: the card gives no square 2-D size.
        """
        x = self.card.input.prepare(pixels)[None, None]
        logits = self._forward(x)["logits"]
        prob = softmax(logits, self.temperature)[0]
        return {lab: float(p) for lab, p in zip(self.labels, prob)}


__all__ = ["DEFAULT_WEIGHTS", "InputGateModel"]
