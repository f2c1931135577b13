"""NIfTI / MetaImage (mhd+raw) / NRRD through SimpleITK, which handles the formats' orientation
conventions (NIfTI RAS is converted to LPS) and keeps spacing, origin and direction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from pulmo.errors import InputError
from pulmo.io.image import Image2D, Volume

ITK_SUFFIXES = (".nii", ".nii.gz", ".mhd", ".mha", ".nrrd", ".nhdr")


def has_itk_suffix(path: str | Path) -> bool:
    """True for a NIfTI, MetaImage or NRRD file name."""
    name = str(path).lower()
    return name.endswith(ITK_SUFFIXES)


def read_itk(path: str | Path) -> Image2D | Volume:
    """Read a NIfTI, mhd/raw or NRRD image.

    Returns:
        A 3D image as :class:`Volume` (values taken as HU; ``source["hu_plausible"]`` says whether the
        range looks like CT), a 2D image as :class:`Image2D` with ``modality=None`` (the file does not
        say whether it is an X-ray or a CT slice).

    Raises:
        InputError: SimpleITK cannot read the file (missing .raw, truncated data, bad header), or the
            image has more than one component or more than 3 dimensions.
    """
    path = Path(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        reason = next((ln for ln in first if "ERROR" in ln or "error" in ln), first[-1] if first else "")
        raise InputError(f"{path}: SimpleITK cannot read the image ({reason.strip()[:200]})") from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: {img.GetNumberOfComponentsPerPixel()} components per voxel; expected 1")
    dim = img.GetDimension()
    if dim == 3 and img.GetSize()[2] == 1:
        img = img[:, :, 0]
        dim = 2
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    meta = {"path": str(path), "format": img.GetMetaData("ITK_InputFilterName") if img.HasMetaDataKey(
        "ITK_InputFilterName") else path.suffix.lstrip(".")}
    if dim == 2:
        sx, sy = img.GetSpacing()
        return Image2D(pixels=arr, spacing=(float(sy), float(sx)), modality=None, source=meta)
    if dim != 3:
        raise InputError(f"{path}: {dim}-D image; expected a 2D image or a 3D volume")
    sx, sy, sz = img.GetSpacing()
    meta["hu_plausible"] = bool(arr.min() < -500 and arr.max() > 100)
    return Volume(
        hu=arr,
        spacing=(float(sz), float(sy), float(sx)),
        origin=tuple(float(v) for v in img.GetOrigin()),
        direction=np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3),
        source=meta,
    )


def volume_to_sitk(array_zyx: np.ndarray, reference: Volume) -> sitk.Image:
    """Wrap an array ``(Z, Y, X)`` with the geometry of ``reference`` as a SimpleITK image."""
    if tuple(array_zyx.shape) != reference.shape:
        raise ValueError(f"array shape {array_zyx.shape} differs from the reference volume {reference.shape}")
    img = sitk.GetImageFromArray(array_zyx)
    img.SetSpacing(tuple(float(s) for s in reference.spacing[::-1]))
    img.SetOrigin(tuple(float(o) for o in reference.origin))
    img.SetDirection(tuple(float(d) for d in np.asarray(reference.direction).ravel()))
    return img


def write_nifti(array_zyx: np.ndarray, reference: Volume, path: str | Path) -> Path:
    """Write ``array_zyx`` (a mask or map, shape ``(Z, Y, X)``) as NIfTI with the geometry of ``reference``.

    Returns the written path. The file is compressed when the name ends in ``.nii.gz``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(volume_to_sitk(array_zyx, reference), str(path), useCompression=str(path).endswith(".gz"))
    return path
