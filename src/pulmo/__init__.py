"""pulmo: chest-imaging computer-aided detection and diagnosis (chest X-ray and CT).

Public API: :func:`read_image`, :func:`analyze`, :func:`create_model`, :func:`list_models`.
"""

from pulmo.errors import ConfigError, InputError, NotAvailableError, PulmoError, WeightsError
from pulmo.io import Image2D, Volume, read_image
from pulmo.models import create_model, list_models

__version__ = "0.1.0"


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
    "PulmoError",
    "Volume",
    "WeightsError",
    "__version__",
    "analyze",
    "create_model",
    "list_models",
    "read_image",
]
