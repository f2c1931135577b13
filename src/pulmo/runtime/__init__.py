"""Inference runtimes: the bundled models as ONNX graphs run by ONNX Runtime, next to the PyTorch modules.

PyTorch stays the training framework and the reference; :mod:`pulmo.runtime.export` (needs torch) writes each
bundled weight set as ``<name>.onnx`` beside its ``.safetensors`` and records the file in the card (``onnx``
block). :class:`OnnxModel` (this package, no torch import) loads and runs such a graph with ONNX Runtime
(Microsoft, MIT licence; chosen over a runtime of our own: fused CPU kernels, graph optimisation, no Python
overhead per layer). :mod:`pulmo.runtime.retinanet` holds the RetinaNet post-processing (anchor decoding,
top-k, class-wise NMS) in NumPy, so that detection runs without torch too.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pulmo.errors import ConfigError, NotAvailableError
from pulmo.runtime.onnx import OnnxModel, onnx_available

#: The inference backends: ``auto`` = ``onnx`` when ONNX Runtime is installed and the weight set has an exported
#: graph, else ``torch``.
BACKENDS = ("auto", "onnx", "torch")
#: Environment variable read when no backend is set in the process (the CLI's ``--backend`` sets it too, so that
#: worker processes inherit it).
BACKEND_ENV = "PULMO_BACKEND"


def default_backend() -> str:
    """The process's backend: ``$PULMO_BACKEND`` when set, else ``auto``.

    Raises:
        ConfigError: ``$PULMO_BACKEND`` is not one of :data:`BACKENDS`.
    """
    value = os.environ.get(BACKEND_ENV, "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ConfigError(f"{BACKEND_ENV}={value!r}; expected one of {', '.join(BACKENDS)}")
    return value


def set_default_backend(backend: str) -> None:
    """Set the process's backend (and its children's, through :data:`BACKEND_ENV`).

    Raises:
        ConfigError: not one of :data:`BACKENDS`.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    os.environ[BACKEND_ENV] = backend


def choose_backend(card: Mapping[str, Any], backend: str | None = None) -> str:
    """``"onnx"`` or ``"torch"`` for a weight set: ``backend`` (None: :func:`default_backend`) with ``auto``
    resolved by :func:`onnx_available`.

    Raises:
        ConfigError: unknown backend. NotAvailableError: ``onnx`` asked for where it is not available.
    """
    backend = backend or default_backend()
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    if backend == "auto":
        return "onnx" if onnx_available(card) else "torch"
    if backend == "onnx" and not onnx_available(card):
        raise NotAvailableError(f"weights {card.get('name')!r}: no ONNX graph to run (onnxruntime missing, or the "
                                "weights were not exported: `python -m pulmo.runtime.export`); use backend torch")
    return backend


class BackendModel:
    """Mixin of the predictors: the weight set's network behind one backend.

    After :meth:`_init_backend`, ``self.backend`` is ``"onnx"`` or ``"torch"``; ``self.onnx`` the
    :class:`OnnxModel` (onnx) or None; ``self.model`` the PyTorch module, built on first use (so the ONNX backend
    imports no torch unless something asks for the module, e.g. training code or a fallback).
    """

    _model: Any = None
    _weights: str | None = None

    def _load_weights(self, weights: str, backend: str | None = None) -> None:
        """``self.card`` = the card of ``weights`` (a bundled name or a ``.safetensors`` path), then
        :meth:`_init_backend`.

        Raises:
            WeightsError: as :func:`pulmo.weights.resolve_card` and :class:`OnnxModel`. NotAvailableError,
                ConfigError: as :func:`choose_backend`.
        """
        from pulmo.weights import resolve_card

        self.card = resolve_card(weights)
        self._init_backend(self.card, weights, backend)

    def _init_backend(self, card: Mapping[str, Any], weights: str | None, backend: str | None = None,
                      model: Any = None) -> None:
        self._weights = weights
        self._model = model
        self.backend = "torch" if model is not None else choose_backend(card, backend)
        self.onnx = OnnxModel(card) if self.backend == "onnx" else None

    def _forward(self, x: Any) -> dict[str, Any]:
        """The network's outputs for a float32 batch ``x`` (``(N, C, H, W)``) as NumPy arrays: the ONNX graph's
        named outputs, or ``{"logits": ...}`` of the PyTorch module (no gradient, on the module's device)."""
        if self.onnx is not None:
            return self.onnx.run(x)
        import torch

        from pulmo.models import model_device

        with torch.no_grad():
            out = self.model(torch.from_numpy(x).to(model_device(self.model)))
        return {"logits": out.float().cpu().numpy()}

    @property
    def model(self) -> Any:
        """The PyTorch module in eval mode (built from the weights on first use)."""
        if self._model is None:
            from pulmo.models import create_model

            self._model = create_model(self.card["architecture"], weights=self._weights).eval()
        return self._model

    @model.setter
    def model(self, module: Any) -> None:
        self._model = module


__all__ = ["BACKENDS", "BACKEND_ENV", "BackendModel", "OnnxModel", "choose_backend", "default_backend", "onnx_available",
           "set_default_backend"]
