"""Predictors of the bundled models, separate from their training code (:mod:`pulmo.tasks`).

Each predictor runs its network on the ONNX backend (ONNX Runtime, the default where the weights have an exported
graph) or the PyTorch one (:mod:`pulmo.runtime`), and its pre- and post-processing in NumPy / SciPy / Pillow, so
that this package and the chest X-ray pipeline import no torch unless the PyTorch backend is used. The task
modules re-export these classes under their former names (``pulmo.tasks.lung_seg.LungSegmenter``, ...).
"""
