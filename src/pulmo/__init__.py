"""pulmo: chest-imaging computer-aided detection and diagnosis (chest X-ray and CT).

Public API: :func:`read_image`, :func:`analyze`, :func:`create_model`, :func:`list_models`, and the tasks by name:
:func:`get_task` (a task module with the contract of :mod:`pulmo.tasks.base`: ``Config``, ``train``, ``evaluate``,
``Predictor``, ``summary``) and :func:`list_tasks`.
"""

from pulmo.errors import ConfigError, InputError, NotAvailableError, OutOfScopeError, PulmoError, WeightsError
from pulmo.io import Image2D, Volume, read_image
from pulmo.tasks.registry import get_task, list_tasks
from pulmo.version import __version__


def __getattr__(name: str):
    """``create_model``, ``list_models``, ``analyze_image`` and ``progress_listener`` import torch on first use,
    so ``import pulmo`` (and reading or refusing an input) stays cheap."""
    if name in ("create_model", "list_models"):
        from pulmo import models

        return getattr(models, name)
    if name == "analyze_image":  # one input, the pipeline's own entry (the web service's worker uses it)
        from pulmo.pipeline import analyze_image

        return analyze_image
    if name == "progress_listener":  # (stage, fraction) callbacks of a running analysis
        from pulmo.pipeline.progress import progress_listener

        return progress_listener
    raise AttributeError(f"module 'pulmo' has no attribute {name!r}")


def analyze(path, out_dir, modality=None, progress=True):
    """Analyse an image, a DICOM series or a folder and write findings and a report (see
    :func:`pulmo.pipeline.analyze_path`)."""
    from pulmo.pipeline import analyze_path

    return analyze_path(path, out_dir, modality=modality, progress=progress)


__all__ = [
    "ConfigError",
    "Image2D",
    "InputError",
    "NotAvailableError",
    "OutOfScopeError",
    "PulmoError",
    "Volume",
    "WeightsError",
    "__version__",
    "analyze",
    "analyze_image",
    "create_model",
    "get_task",
    "list_models",
    "list_tasks",
    "progress_listener",
    "read_image",
]
