"""Run a bundled model's ONNX graph with ONNX Runtime (no torch import).

A card exported by :mod:`pulmo.runtime.export` carries an ``onnx`` block::

    "onnx": {"file": "<name>.onnx", "sha256": "<hex>", "opset": 17, "inputs": ["x"],
             "outputs": ["logits", ...], "input_shape": [1, 1, 256, 256], "exported_from": "<safetensors sha256>",
             "metadata": {...}}

``exported_from`` is the sha256 of the safetensors file the graph was exported from: a graph whose source
weights have since changed is refused (re-export with ``python -m pulmo.runtime.export``).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from pulmo.errors import NotAvailableError, WeightsError


def onnx_available(card: Mapping[str, Any] | None = None) -> bool:
    """True when ONNX Runtime is installed and (given a card) the card has an exported graph beside it."""
    if importlib.util.find_spec("onnxruntime") is None:
        return False
    if card is None:
        return True
    block = card.get("onnx")
    return bool(block) and card.get("_card") is not None and (Path(card["_card"]).parent / block["file"]).is_file()


def default_threads() -> int:
    """Intra-op threads: ``OMP_NUM_THREADS`` when set (as for torch), else the machine's cores."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else (os.cpu_count() or 1)


class OnnxModel:
    """One exported model: ``run(x)`` gives its named outputs as float32 NumPy arrays.

    Args:
        card: the weight set's card (:func:`pulmo.weights.resolve_card`) with an ``onnx`` block.
        threads: intra-op threads (default :func:`default_threads`).

    Raises:
        NotAvailableError: ONNX Runtime is not installed, or the card has no exported graph.
        WeightsError: the graph file is missing, its sha256 is not the card's, or it was exported from other
            weights than the card's safetensors (stale export).
    """

    def __init__(self, card: Mapping[str, Any], threads: int | None = None):
        from pulmo.weights import sha256_of

        name = card.get("name")
        if importlib.util.find_spec("onnxruntime") is None:
            raise NotAvailableError("the ONNX backend needs onnxruntime (pip install onnxruntime); "
                                    "or use backend='torch'")
        block = card.get("onnx")
        if not block:
            raise NotAvailableError(f"weights {name!r} have no ONNX export (card has no 'onnx' block); export "
                                    "them with `python -m pulmo.runtime.export` or use backend='torch'")
        path = Path(card["_card"]).parent / block["file"]
        if not path.is_file():
            raise WeightsError(f"{path}: ONNX graph missing for weights {name!r}")
        digest = sha256_of(path)
        if digest != block.get("sha256"):
            raise WeightsError(f"{path}: its sha256 does not match the card's onnx.sha256 ({digest[:12]}... vs "
                               f"{str(block.get('sha256'))[:12]}...)")
        if block.get("exported_from") != card.get("sha256"):
            raise WeightsError(f"{path}: exported from other weights than {name!r}'s safetensors (stale export); "
                               "re-export with `python -m pulmo.runtime.export`")
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or default_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.card = card
        self.path = path
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.metadata: dict[str, Any] = dict(block.get("metadata") or {})

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs ``{name: float32 array}`` of the graph for a batch ``x`` (float32, the exported input's layout,
        e.g. ``(N, 1, H, W)``; the batch size may differ from the export's)."""
        values = self.session.run(None, {self.inputs[0]: np.ascontiguousarray(x, dtype=np.float32)})
        return dict(zip(self.outputs, values, strict=True))
