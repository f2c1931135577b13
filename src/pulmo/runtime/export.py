"""Export bundled weight sets to ONNX for :class:`pulmo.runtime.OnnxModel` (needs torch and onnx).

``python -m pulmo.runtime.export [NAME ...]`` (default: every exportable bundled weight set) writes
``<name>.onnx`` beside ``<name>.safetensors`` and the card's ``onnx`` block (see :mod:`pulmo.runtime.onnx`).

What each graph computes (input ``x`` float32 ``(N, C, H, W)``, the model's prepared input):

* segmentation and classification models: ``logits`` of the PyTorch module;
* a classifier whose card names a ``gradcam_layer``: also ``activation``, that layer's output, from which
  Grad-CAM / Grad-CAM++ follow in closed form (a global-average-pooled linear head: the gradient of a class
  logit with respect to the activation is that class's weight row divided by the number of positions);
* RetinaNet: the normalisation of torchvision's transform, the backbone, the FPN and the head, with outputs
  ``cls_logits`` ``(N, A, K)``, ``bbox_regression`` ``(N, A, 4)`` and the constant ``anchors`` ``(A, 4)`` of the
  exported (square) input size; decoding, top-k and NMS run in NumPy (:mod:`pulmo.runtime.retinanet`).

Storage: initialisers that float16 holds exactly (the shipped weights are float16) are stored as float16 with a
Cast to float32 (folded by ONNX Runtime when the session starts), the rest (e.g. batch norm folded into a
convolution) as float32. The export keeps batch norm as its own node (``TrainingMode.PRESERVE`` on a model in
eval mode, no constant folding), so every weight stays the float16 value shipped; ONNX Runtime fuses it into the
convolution in float32 when the session starts. Exported with torch's TorchScript-based exporter (opset 17), which
handles these static graphs without extra dependencies.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pulmo.errors import ConfigError
from pulmo.models import create_model
from pulmo.weights import resolve_card, sha256_of

logger = logging.getLogger(__name__)

OPSET = 17
#: The tasks whose weight sets are exported, and the input shape each takes (from the card's ``input.size``).
EXPORTABLE_TASKS = ("lung-seg", "cxr-classify", "input-gate", "cxr-detect", "lesion-seg")


class _WithActivation(nn.Module):
    """``(logits, activation of layer)`` of a classifier (the Grad-CAM layer)."""

    def __init__(self, model: nn.Module, layer: str):
        super().__init__()
        self.model = model
        self._activation: torch.Tensor | None = None
        dict(model.named_modules())[layer].register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self._activation = output

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        return logits, self._activation


class _RetinaNetRaw(nn.Module):
    """torchvision RetinaNet up to the head: normalised input -> (cls_logits, bbox_regression, anchors)."""

    def __init__(self, model: nn.Module, anchors: torch.Tensor):
        super().__init__()
        self.model = model
        t = model.transform
        self.register_buffer("mean", torch.tensor(t.image_mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(t.image_std).view(1, -1, 1, 1))
        self.register_buffer("anchors", anchors)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = list(self.model.backbone((x - self.mean) / self.std).values())
        out = self.model.head(features)
        return out["cls_logits"], out["bbox_regression"], self.anchors * 1.0


def _retinanet_graph(model: nn.Module, size: int) -> tuple[nn.Module, dict[str, Any]]:
    """The exportable RetinaNet and its post-processing parameters for a square ``size`` input."""
    from torchvision.models.detection.image_list import ImageList

    x = torch.zeros(1, 1, size, size)
    with torch.no_grad():
        images, _ = model.transform([x[0]])
        if tuple(images.tensors.shape[-2:]) != (size, size):
            raise ConfigError(f"the detector resizes a {size} px input to {tuple(images.tensors.shape[-2:])}: "
                              "export needs min_size = max_size = the card's input size")
        features = list(model.backbone(images.tensors).values())
        anchors = model.anchor_generator(ImageList(images.tensors, [(size, size)]), features)[0]
    per_location = model.head.classification_head.num_anchors
    metadata = {"num_anchors_per_level": [int(f.shape[-2] * f.shape[-1] * per_location) for f in features],
                "score_thresh": float(model.score_thresh), "nms_thresh": float(model.nms_thresh),
                "detections_per_img": int(model.detections_per_img),
                "topk_candidates": int(model.topk_candidates),
                "box_coder_weights": [float(w) for w in model.box_coder.weights],
                "bbox_xform_clip": float(model.box_coder.bbox_xform_clip), "image_size": [size, size]}
    return _RetinaNetRaw(model, anchors), metadata


def _closed_form_cam(model: nn.Module, layer: str, x: torch.Tensor) -> dict[str, Any]:
    """``{"closed_form_cam": True, "head_weight": "fc.weight"}`` when :func:`pulmo.runtime.cam.class_activation_map`
    reproduces MONAI's Grad-CAM and Grad-CAM++ of every class of ``model`` on ``x`` (a pooled-linear head), else
    ``{"closed_form_cam": False}`` (the ONNX backend then has no heatmaps for this model)."""
    from pulmo.explain import class_activation_map as monai_cam
    from pulmo.runtime.cam import class_activation_map

    head = getattr(model, "fc", None)
    if not isinstance(head, nn.Linear):
        return {"closed_form_cam": False}
    kept: dict[str, torch.Tensor] = {}
    hook = dict(model.named_modules())[layer].register_forward_hook(lambda m, i, o: kept.setdefault("a", o))
    with torch.no_grad():
        logits = model(x)[0].numpy()
    hook.remove()
    activation, weight = kept["a"][0].numpy(), head.weight.detach().numpy()
    for c in range(len(logits)):
        for method in ("gradcam", "gradcam++"):
            ref = monai_cam(model, layer, x, c, method)
            ours = class_activation_map(activation, weight, float(logits[c]), c, tuple(x.shape[-2:]), method)
            if not np.allclose(ours, ref, rtol=1e-3, atol=1e-5 * max(float(ref.max()), 1e-12)):
                logger.warning("closed-form %s differs from MONAI's for class %d: no ONNX heatmaps", method, c)
                return {"closed_form_cam": False}
    return {"closed_form_cam": True, "head_weight": "fc.weight"}


def _float16_storage(proto: Any) -> Any:
    """Store every float32 initialiser that float16 represents exactly as float16 + a Cast node (in place)."""
    import onnx
    from onnx import helper, numpy_helper

    graph = proto.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != onnx.TensorProto.FLOAT:
            continue
        arr = numpy_helper.to_array(init)
        half = arr.astype(np.float16)
        if arr.size < 16 or not np.array_equal(half.astype(np.float32), arr):
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(half, name=f"{name}__fp16"))
        casts.append(helper.make_node("Cast", [f"{name}__fp16"], [name], to=onnx.TensorProto.FLOAT,
                                      name=f"{name}__cast"))
    nodes = list(graph.node)
    del graph.node[:]
    graph.node.extend(casts + nodes)
    return proto


def export_weights(name: str, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Export one weight set to ``<out_dir>/<name>.onnx`` and write the ``onnx`` block into its card.

    Args:
        name: a bundled weight name, or a ``.safetensors`` path with its card.
        out_dir: where the graph goes (default: beside the card; the card is updated only then).

    Returns:
        The ``onnx`` block (see :mod:`pulmo.runtime.onnx`).

    Raises:
        ConfigError: the weight set's task is not exportable (:data:`EXPORTABLE_TASKS`).
        WeightsError: as :func:`pulmo.weights.resolve_card`.
    """
    import onnx

    card = resolve_card(name)
    task = card.get("task")
    if task not in EXPORTABLE_TASKS:
        raise ConfigError(f"weights {name!r} are a {task!r} model; ONNX export covers {', '.join(EXPORTABLE_TASKS)}")
    model = create_model(card["architecture"], weights=name).eval().float()
    size = [int(s) for s in card["input"]["size"]]
    channels = int(card.get("model_kwargs", {}).get("in_channels", 1))
    x = torch.rand(1, channels, *size, generator=torch.Generator().manual_seed(0))
    metadata: dict[str, Any] = {}
    dynamic = {"x": {0: "batch"}}
    if task == "cxr-detect":
        graph, metadata = _retinanet_graph(model, size[0])
        outputs = ["cls_logits", "bbox_regression", "anchors"]
        dynamic.update(cls_logits={0: "batch"}, bbox_regression={0: "batch"})
    elif card.get("gradcam_layer"):
        graph, outputs = _WithActivation(model, card["gradcam_layer"]), ["logits", "activation"]
        metadata.update(gradcam_layer=card["gradcam_layer"], **_closed_form_cam(model, card["gradcam_layer"], x))
        dynamic.update(logits={0: "batch"}, activation={0: "batch"})
    else:
        graph, outputs = model, ["logits"]
        dynamic.update(logits={0: "batch"})
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(graph, (x,), buffer, input_names=["x"], output_names=outputs, opset_version=OPSET,
                          dynamic_axes=dynamic, dynamo=False, training=torch.onnx.TrainingMode.PRESERVE,
                          do_constant_folding=False)
    proto = _float16_storage(onnx.load_from_string(buffer.getvalue()))
    onnx.checker.check_model(proto)
    card_path = Path(card["_card"])
    target = Path(out_dir) if out_dir is not None else card_path.parent
    target.mkdir(parents=True, exist_ok=True)
    path = target / f"{card_path.stem}.onnx"
    onnx.save(proto, str(path))
    block = {"file": path.name, "sha256": sha256_of(path), "opset": OPSET, "inputs": ["x"], "outputs": outputs,
             "input_shape": [1, channels, *size], "exported_from": card["sha256"],
             "exported_with": f"torch {torch.__version__}, onnx {onnx.__version__}", "metadata": metadata}
    if out_dir is None:
        data = json.loads(card_path.read_text())
        data["onnx"] = block
        card_path.write_text(json.dumps(data, indent=2) + "\n")
    logger.info("exported %s -> %s (%.1f MB)", name, path, path.stat().st_size / 2**20)
    return block


def bundled_exportable() -> list[str]:
    """Names of the bundled weight sets whose task is exportable."""
    from pulmo.weights import list_weights

    return [c["name"] for c in list_weights() if c.get("task") in EXPORTABLE_TASKS]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m pulmo.runtime.export [NAME ...] [--out-dir DIR]``."""
    parser = argparse.ArgumentParser(prog="python -m pulmo.runtime.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="weight names (default: every exportable bundled one)")
    parser.add_argument("--out-dir", default=None, help="write the graphs here and leave the cards unchanged")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for name in args.names or bundled_exportable():
        block: Mapping[str, Any] = export_weights(name, args.out_dir)
        print(f"{name}: {block['file']} sha256 {block['sha256'][:12]}... outputs {', '.join(block['outputs'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
