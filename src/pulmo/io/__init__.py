"""Image input and output with geometry.

``read_image(path)`` detects the format from the file's content (DICOM magic, PNG/JPEG signatures) or,
for NIfTI / MetaImage / NRRD, its name, and returns an :class:`Image2D` or a :class:`Volume` (HU).
``read_labels(path)`` reads a segmentation label volume (NIfTI / MetaImage / NRRD) as a :class:`LabelVolume`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from pulmo.errors import InputError
from pulmo.io.dicom import folder_is_dicom_series, is_dicom_file, read_dicom_file, read_dicom_series
from pulmo.io.image import Image2D, LabelVolume, Volume
from pulmo.io.itk import has_itk_suffix, read_itk, read_itk_labels, write_nifti
from pulmo.io.raster import read_raster
from pulmo.io.scope import DEFAULT_LIMITS, InputLimits

__all__ = [
    "DEFAULT_LIMITS",
    "Image2D",
    "InputLimits",
    "LabelVolume",
    "Volume",
    "folder_is_dicom_series",
    "is_supported_file",
    "read_image",
    "read_labels",
    "write_mask_png",
    "write_nifti",
]

_RASTER_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*", b"BM")


def _has_raster_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(8)
    except OSError:
        return False
    return any(head.startswith(m) for m in _RASTER_MAGIC)


def is_supported_file(path: str | Path) -> bool:
    """True when ``path`` looks like a file pulmo can read (by content, or name for ITK formats)."""
    path = Path(path)
    return path.is_file() and (is_dicom_file(path) or has_itk_suffix(path) or _has_raster_magic(path))


def read_image(path: str | Path, limits: InputLimits | None = None) -> Image2D | Volume:
    """Read a chest X-ray or CT from a file or a DICOM series folder.

    Supported: PNG / JPEG (8/16-bit greyscale, grey RGB), a DICOM file (2D), a folder holding a DICOM
    series, NIfTI (.nii, .nii.gz), MetaImage (.mhd + .raw, .mha), NRRD (.nrrd, .nhdr). The modality
    is read, not guessed: a 3D volume is CT, a 2D DICOM's Modality tag decides, a PNG/JPEG is a CXR.

    The header is checked before any pixel is decoded: DICOM tags (:func:`pulmo.io.scope.dicom_scope`) and
    the size limits (``limits``, default :data:`pulmo.io.scope.DEFAULT_LIMITS`: 50 Mpx, 1.5 G voxels).

    Args:
        path: a file or a folder.
        limits: size limits.

    Returns:
        :class:`Image2D` or :class:`Volume` (see :mod:`pulmo.io.image` for axes and units).

    Raises:
        OutOfScopeError: the tags or the size put the input outside pulmo's scope.
        InputError: the path does not exist, is not a regular file or folder (a device, a FIFO), is empty
            or unreadable, or is not a supported or readable image.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file or folder")
    if path.is_dir():
        if not os.access(path, os.R_OK | os.X_OK):
            raise InputError(f"{path}: permission denied; cannot read the folder")
        return read_dicom_series(path, limits=limits)
    _check_file(path, "an image file or folder")
    if is_dicom_file(path):
        return read_dicom_file(path, limits)
    if has_itk_suffix(path):
        return read_itk(path, limits)
    if _has_raster_magic(path):
        return read_raster(path, limits)
    raise InputError(
        f"{path}: unsupported or unrecognised format; expected PNG, JPEG, DICOM, NIfTI, mhd/raw or NRRD"
    )


def _check_file(path: Path, expected: str) -> None:
    """InputError unless ``path`` is a readable, non-empty regular file (``expected``: what was wanted)."""
    if not path.is_file():
        raise InputError(f"{path}: not a regular file (a device, FIFO or socket); expected {expected}")
    if not os.access(path, os.R_OK):
        raise InputError(f"{path}: permission denied; cannot read the file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty")


def read_labels(path: str | Path, limits: InputLimits | None = None) -> LabelVolume:
    """Read a segmentation label volume (a lesion or organ mask drawn on a CT) from a NIfTI (.nii, .nii.gz),
    MetaImage (.mhd + .raw, .mha) or NRRD (.nrrd, .nhdr) file.

    Unlike :func:`read_image`, the values are kept as integer labels and never taken as HU. The file may
    store them as any integer or float pixel type as long as every value is a whole number >= 0.

    Args:
        path: the file.
        limits: size limits checked on the header before the data is read (default
            :data:`pulmo.io.scope.DEFAULT_LIMITS`).

    Returns:
        :class:`LabelVolume`: ``labels`` integer array ``(Z, Y, X)`` (uint8 when every value is at most 255,
        else int32; 0 = background), ``spacing`` ``(z, y, x)`` mm, ``origin`` ``(x, y, z)`` mm LPS and
        ``direction`` ``(3, 3)`` with the conventions of :class:`Volume` (see :mod:`pulmo.io.image`).

    Raises:
        InputError: the file does not exist, is a folder or not a regular file, is empty or unreadable, is
            not NIfTI / MetaImage / NRRD, SimpleITK cannot read it, it is a 2D image, or a value is not a
            whole number >= 0 (a CT in HU given as labels, a probability map); the message names the file
            and the value found.
        OutOfScopeError: over the size limits, a decompression bomb, or a float NIfTI with NaN / Inf.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file; expected a label volume (NIfTI, NRRD or mhd/raw)")
    if path.is_dir():
        raise InputError(f"{path}: a folder; expected a label volume file (NIfTI, NRRD or mhd/raw)")
    _check_file(path, "a label volume file")
    if not has_itk_suffix(path):
        raise InputError(f"{path}: unsupported label volume format; expected NIfTI (.nii, .nii.gz), "
                         "NRRD (.nrrd, .nhdr) or MetaImage (.mhd, .mha)")
    return read_itk_labels(path, limits)


def write_mask_png(mask: np.ndarray, path: str | Path) -> Path:
    """Write a binary mask ``(H, W)`` as an 8-bit PNG with values 0 / 255 (the usual lung-mask layout)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.asarray(mask) > 0).astype(np.uint8) * 255).save(path)
    return path
