"""Architectures, registered by name (``create_model``, ``list_models``). No I/O, no training code."""

from pulmo.models import classifiers, detection, lesion_unet, nodulenet, unet  # noqa: F401  (registers the families)
from pulmo.models.registry import create_model, list_models, model_device, register_model

__all__ = ["create_model", "list_models", "model_device", "register_model"]
