"""NIfTI / MetaImage (mhd+raw) / NRRD through SimpleITK, which handles the formats' orientation
conventions (NIfTI RAS is converted to LPS) and keeps spacing, origin and direction."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from pulmo.errors import InputError, OutOfScopeError
from pulmo.io.image import Image2D, LabelVolume, Volume
from pulmo.io.scope import InputLimits, check_pixels, check_voxels

ITK_SUFFIXES = (".nii", ".nii.gz", ".mhd", ".mha", ".nrrd", ".nhdr")


def has_itk_suffix(path: str | Path) -> bool:
    """True for a NIfTI, MetaImage or NRRD file name."""
    name = str(path).lower()
    return name.endswith(ITK_SUFFIXES)


def _bytes_per_voxel(pixel_id_text: str) -> int:
    bits = [int(t) for t in pixel_id_text.replace("-", " ").split() if t.isdigit()]
    return max(1, bits[0] // 8) if bits else 8


def _is_compressed(path: Path, data: Path) -> bool:
    """gzip-compressed voxels: a ``.gz`` / ``.zraw`` header or data file, NRRD ``encoding: gzip`` or MetaImage
    ``CompressedData = True``."""
    if any(p.name.lower().endswith((".gz", ".zraw")) for p in (path, data)):
        return True
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096).decode("latin-1").lower()
    except OSError:
        return False
    return "encoding: gz" in head or "compresseddata = true" in head


def _data_file(path: Path) -> Path:
    """The file that holds the voxels: a MetaImage's ``ElementDataFile`` (``.raw``, ``.zraw``; ``LOCAL`` = the
    header itself), a detached NRRD's ``data file`` (``.raw.gz``, ...), else ``path``."""
    name = path.name.lower()
    if not name.endswith((".mhd", ".nhdr")):
        return path
    try:
        with open(path, "rb") as fh:
            head = fh.read(65536).decode("latin-1")
    except OSError:
        return path
    for line in head.splitlines():
        key, _, value = line.partition("=" if name.endswith(".mhd") else ":")
        if key.strip().lower() in ("elementdatafile", "data file", "datafile"):
            value = value.strip()
            if not value or value.upper() == "LOCAL" or value.upper().startswith("LIST"):
                return path
            candidate = path.parent / value
            return candidate if candidate.is_file() else path
    return path


def check_itk_header(path: str | Path, limits: InputLimits | None = None) -> tuple[int, ...]:
    """Read only the header of a NIfTI / MetaImage / NRRD file and apply the size limits.

    Returns:
        The image size ``(x, y[, z])`` in voxels.

    Raises:
        InputError: the header cannot be read.
        OutOfScopeError: over the pixel / voxel limit, or a gzip bomb (see :func:`pulmo.io.scope.check_voxels`).
    """
    path = Path(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(f"{path}: SimpleITK cannot read the image header ({_itk_reason(exc)})") from None
    size = tuple(int(s) for s in reader.GetSize())
    per_voxel = _bytes_per_voxel(sitk.GetPixelIDValueAsString(reader.GetPixelID())) * reader.GetNumberOfComponents()
    data = _data_file(path)
    if len(size) == 2 or (len(size) == 3 and size[2] == 1):
        check_pixels(path, size[1], size[0], 1, limits)
    check_voxels(path, size, per_voxel, data.stat().st_size, _is_compressed(path, data), limits)
    return size


#: NIfTI-1/2 float datatypes (code -> numpy type), whose NaN / Inf ITK's NIfTI reader silently turns into 0.
_NIFTI_FLOATS = {16: "f4", 64: "f8"}


def nifti_nonfinite_count(path: str | Path) -> int:
    """Count NaN / Inf voxels of a float NIfTI-1 file by streaming its data (0 for other types and formats).

    ITK's NIfTI reader replaces non-finite values by 0, which would turn a NaN block into a 0 HU "soft
    tissue" block inside the lungs (a nodule to the detector): the file is checked before ITK reads it.
    """
    path = Path(path)
    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return 0
    opener = gzip.open if name.endswith(".gz") else open
    try:
        with opener(path, "rb") as fh:
            hdr = fh.read(348)
            if len(hdr) < 348:
                return 0
            endian = "<" if struct.unpack("<i", hdr[:4])[0] == 348 else ">"
            if struct.unpack(f"{endian}i", hdr[:4])[0] != 348:
                return 0  # NIfTI-2 or not NIfTI: left to ITK
            datatype = struct.unpack(f"{endian}h", hdr[70:72])[0]
            if datatype not in _NIFTI_FLOATS:
                return 0
            offset = int(struct.unpack(f"{endian}f", hdr[108:112])[0])
            fh.read(max(0, offset - 348))
            dtype = np.dtype(endian + _NIFTI_FLOATS[datatype])
            bad, rest = 0, b""
            while chunk := fh.read(1 << 24):
                data = rest + chunk
                usable = len(data) - len(data) % dtype.itemsize
                values = np.frombuffer(data[:usable], dtype=dtype)
                bad += int(values.size - np.count_nonzero(np.isfinite(values)))
                rest = data[usable:]
            return bad
    except (OSError, EOFError, struct.error, gzip.BadGzipFile):
        return 0  # unreadable: ITK reports it


def _itk_reason(exc: Exception) -> str:
    first = str(exc).strip().splitlines()
    reason = next((ln for ln in first if "ERROR" in ln or "error" in ln), first[-1] if first else "")
    return reason.strip()[:200]


def _read_sitk(path: Path, limits: InputLimits | None) -> sitk.Image:
    """The checks and the read shared by :func:`read_itk` and :func:`read_itk_labels`: the header against
    ``limits``, NaN / Inf in a float NIfTI, one component per voxel; a ``(X, Y, 1)`` image becomes 2D."""
    check_itk_header(path, limits)
    bad = nifti_nonfinite_count(path)
    if bad:
        raise OutOfScopeError(f"{path}: {bad} voxel values are not finite (NaN or Inf); pulmo accepts images "
                              "with finite values")
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"{path}: SimpleITK cannot read the image ({_itk_reason(exc)})") from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(f"{path}: {img.GetNumberOfComponentsPerPixel()} components per voxel; expected 1")
    if img.GetDimension() == 3 and img.GetSize()[2] == 1:
        img = img[:, :, 0]
    return img


def _source(img: sitk.Image, path: Path) -> dict[str, str]:
    return {"path": str(path), "format": img.GetMetaData("ITK_InputFilterName") if img.HasMetaDataKey(
        "ITK_InputFilterName") else path.suffix.lstrip(".")}


def _geometry(img: sitk.Image) -> dict[str, Any]:
    """A 3D image's geometry: ``spacing`` ``(z, y, x)`` mm, ``origin`` ``(x, y, z)`` mm LPS, ``direction``
    ``(3, 3)``."""
    sx, sy, sz = img.GetSpacing()
    return {"spacing": (float(sz), float(sy), float(sx)), "origin": tuple(float(v) for v in img.GetOrigin()),
            "direction": np.asarray(img.GetDirection(), dtype=np.float64).reshape(3, 3)}


def read_itk(path: str | Path, limits: InputLimits | None = None) -> Image2D | Volume:
    """Read a NIfTI, mhd/raw or NRRD image; the header is checked against ``limits`` before the data is read.

    Returns:
        A 3D image as :class:`Volume` (values taken as HU; ``source["hu_plausible"]`` says whether the
        range looks like CT), a 2D image as :class:`Image2D` with ``modality=None`` (the file does not
        say whether it is an X-ray or a CT slice).

    Raises:
        InputError: SimpleITK cannot read the file (missing .raw, truncated data, bad header), or the
            image has more than one component or more than 3 dimensions.
        OutOfScopeError: over the size limits or a decompression bomb (:func:`check_itk_header`), or a float
            NIfTI with NaN / Inf voxels (:func:`nifti_nonfinite_count`).
    """
    path = Path(path)
    img = _read_sitk(path, limits)
    dim = img.GetDimension()
    arr = sitk.GetArrayFromImage(img).astype(np.float32)
    meta = _source(img, path)
    if dim == 2:
        sx, sy = img.GetSpacing()
        return Image2D(pixels=arr, spacing=(float(sy), float(sx)), modality=None, source=meta)
    if dim != 3:
        raise InputError(f"{path}: {dim}-D image; expected a 2D image or a 3D volume")
    meta["hu_plausible"] = bool(arr.min() < -500 and arr.max() > 100)
    return Volume(hu=arr, source=meta, **_geometry(img))


def read_itk_labels(path: str | Path, limits: InputLimits | None = None) -> LabelVolume:
    """Read a NIfTI, mhd/raw or NRRD segmentation label volume (see :func:`pulmo.io.read_labels`).

    The file may store its labels as any integer or float pixel type, as long as every value is a
    non-negative whole number: float masks (0.0 / 1.0) are common and are read exactly.

    Args:
        path: the file. limits: size limits, checked on the header before the data is read.

    Returns:
        :class:`LabelVolume`: ``labels`` ``(Z, Y, X)`` uint8 when every value is at most 255, else int32;
        the geometry of the file as in :func:`read_itk`.

    Raises:
        InputError: SimpleITK cannot read the file, more than one component per voxel, a 2D image or not
            3D, a value that is not a whole number (a CT in HU given as labels, a probability map), a
            negative value, or a value over 2**31 - 1.
        OutOfScopeError: over the size limits or a decompression bomb, or a float NIfTI with NaN / Inf.
    """
    path = Path(path)
    img = _read_sitk(path, limits)
    dim = img.GetDimension()
    if dim != 3:
        size = " x ".join(str(s) for s in img.GetSize()[::-1])
        raise InputError(f"{path}: a {dim}-D image ({size}); expected a 3-D label volume (Z, Y, X)")
    arr = sitk.GetArrayFromImage(img)
    stored = str(arr.dtype)
    if arr.dtype.kind == "f":
        fractional = arr != np.round(arr)  # also true for NaN (Inf is caught by the range checks below)
        if fractional.any():
            value = arr[fractional].flat[0].item()
            raise InputError(f"{path}: not a label volume: value {value} is not a whole number (a CT in HU "
                             "or a probability map?); expected integer labels >= 0 (0 = background)")
    elif arr.dtype.kind not in "iub":
        raise InputError(f"{path}: pixel type {stored}; expected integer labels >= 0 (0 = background)")
    low, high = arr.min(), arr.max()
    if low < 0:
        raise InputError(f"{path}: not a label volume: value {low.item()} is negative (a CT in HU?); "
                         "expected integer labels >= 0 (0 = background)")
    if high > np.iinfo(np.int32).max:
        raise InputError(f"{path}: label value {high.item()} is over {np.iinfo(np.int32).max}; expected "
                         "labels that fit int32")
    labels = arr.astype(np.uint8 if high <= 255 else np.int32)
    return LabelVolume(labels=labels, source={**_source(img, path), "stored_dtype": stored}, **_geometry(img))


def volume_to_sitk(array_zyx: np.ndarray, reference: Volume) -> sitk.Image:
    """Wrap an array ``(Z, Y, X)`` with the geometry of ``reference`` as a SimpleITK image.

    Args:
        array_zyx: Array of shape ``(Z, Y, X)`` (any dtype SimpleITK accepts: a mask, HU, a probability map),
            in the voxel order of ``reference.hu``.
        reference: Volume whose spacing (mm, reversed to ITK's x, y, z order), origin (mm, LPS) and direction
            cosines are copied.

    Returns:
        A ``sitk.Image`` of size ``(X, Y, Z)`` in ITK order with the geometry of ``reference``.

    Raises:
        ValueError: ``array_zyx.shape`` differs from ``reference.shape``.
    """
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
