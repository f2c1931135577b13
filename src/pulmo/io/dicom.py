"""DICOM readers: a single 2D file (chest X-ray or CT slice) and a CT series folder.

pydicom decodes the pixels (RLE Lossless natively; JPEG / JPEG-LS / JPEG 2000 through pylibjpeg) and
provides the standard modality and VOI LUT transforms (PS3.3 C.11), so those are not re-implemented here.
"""

from __future__ import annotations

import logging
import os
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut

from pulmo.errors import InputError, OutOfScopeError
from pulmo.io.image import Image2D, Volume
from pulmo.io.raster import channel_difference
from pulmo.io.scope import InputLimits, check_voxels, dicom_scope

logger = logging.getLogger(__name__)

#: Relative tolerance on slice spacing before a series is declared uneven.
SLICE_SPACING_TOLERANCE = 0.1


def is_dicom_file(path: str | Path) -> bool:
    """True when the file carries the ``DICM`` magic at byte 128 (DICOM Part 10)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _dcmread(path: Path, header_only: bool = False) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(path, stop_before_pixels=header_only)
    except (InvalidDicomError, OSError, EOFError, ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a readable DICOM file ({exc})") from None


def _pixels(ds: pydicom.Dataset, path: Path) -> np.ndarray:
    if "PixelData" not in ds:
        raise InputError(f"{path}: DICOM file without pixel data (SOP class {ds.get('SOPClassUID', '?')})")
    try:
        return ds.pixel_array
    except Exception as exc:  # noqa: BLE001 - pydicom raises ValueError, RuntimeError, NotImplementedError... on bad pixel data
        raise InputError(
            f"{path}: cannot decode the pixel data ({type(exc).__name__}: {exc}); the file may be truncated "
            f"or use an unsupported transfer syntax ({ds.file_meta.get('TransferSyntaxUID', '?')})"
        ) from None


def _date(value: Any) -> str | None:
    """A DICOM DA value (``YYYYMMDD``) as ISO ``YYYY-MM-DD``; None when absent or not a date."""
    text = str(value or "").strip()
    return f"{text[:4]}-{text[4:6]}-{text[6:8]}" if len(text) == 8 and text.isdigit() else None


def _spacing_2d(ds: pydicom.Dataset) -> tuple[tuple[float, float] | None, str | None]:
    """``((row, column) mm, tag)`` from PixelSpacing or ImagerPixelSpacing; ``(None, None)`` when neither
    holds two positive finite numbers (a malformed value is treated as unknown spacing, not guessed)."""
    for tag in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            value = ds.get(tag)
            if value is None or isinstance(value, (str, bytes)) or len(value) != 2:
                continue
            row, col = float(value[0]), float(value[1])
        except (TypeError, ValueError, OverflowError):
            logger.warning("ignoring malformed %s %r", tag, ds.get(tag, ""))
            continue
        if 0 < row < 1e4 and 0 < col < 1e4:
            return (row, col), tag
    return None, None


#: Largest mean / 99th-percentile channel difference (grey levels of 255) of a colour-encoded grey image.
_GREY_MEAN_DIFF, _GREY_P99_DIFF = 1.5, 12.0


def _grey_from_colour(arr: np.ndarray, ds: pydicom.Dataset, path: Path, photometric: str) -> np.ndarray:
    """The grey plane of a PALETTE COLOR / RGB / YBR image that is grey in disguise; refuses true colour."""
    if photometric == "PALETTE COLOR":
        try:
            arr = apply_color_lut(arr, ds)
        except Exception as exc:  # noqa: BLE001 - pydicom raises ValueError/KeyError on a bad palette
            raise InputError(f"{path}: PALETTE COLOR image with an unreadable palette ({exc})") from None
    if arr.ndim != 3 or arr.shape[-1] != 3:
        raise OutOfScopeError(f"{path}: {photometric} data of shape {arr.shape}; pulmo accepts greyscale images")
    rgb = arr.astype(np.float32)
    mean_diff, p99 = channel_difference(rgb, float(rgb.max()))
    if mean_diff > _GREY_MEAN_DIFF or p99 > _GREY_P99_DIFF:
        raise OutOfScopeError(f"{path}: a {photometric} colour image (mean channel difference {mean_diff:.1f} of 255, "
                              f"99th percentile {p99:.0f}); pulmo accepts greyscale radiographs and CT")
    return rgb.mean(axis=-1)


def read_dicom_file(path: str | Path, limits: InputLimits | None = None) -> Image2D:
    """Read one 2D DICOM image (a chest X-ray: CR / DX, a single CT slice, or a chest secondary capture).

    The tags are checked first (:func:`pulmo.io.scope.dicom_scope`: SOP class, Modality, body part, view,
    frames, RescaleSlope, window, size limit) from the header alone, before the pixels are decoded.
    Chest X-ray: the modality LUT (rescale slope/intercept) and the first VOI LUT or window are applied,
    then MONOCHROME1 is inverted so that higher values mean more attenuation. A CT slice is returned in HU
    (modality LUT only). Bits beyond BitsStored are masked by pydicom. PALETTE COLOR, RGB and YBR images
    are accepted only when their channels are equal (grey in disguise).

    Args:
        path: a DICOM Part 10 file.
        limits: size limits (default :data:`pulmo.io.scope.DEFAULT_LIMITS`).

    Returns:
        :class:`Image2D`, pixels float32 ``(H, W)``, spacing from PixelSpacing or ImagerPixelSpacing (mm),
        modality ``"ct"`` for a CT image, else ``"cxr"``; ``source["dicom_scope"]`` holds the tag decision.

    Raises:
        OutOfScopeError: the tags put the image outside pulmo's scope, or it is true colour.
        InputError: not DICOM, no or truncated pixel data.
    """
    path = Path(path)
    try:
        scope = dicom_scope(_dcmread(path, header_only=True), path, limits)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:  # a value pydicom cannot convert
        raise InputError(f"{path}: malformed DICOM header ({type(exc).__name__}: {str(exc)[:200]}); pulmo accepts "
                         "valid DICOM Part 10 files") from None
    ds = _dcmread(path)
    arr = _pixels(ds, path)
    photometric = scope["photometric"]
    if photometric in ("PALETTE COLOR", "RGB") or photometric.startswith("YBR") or arr.ndim == 3:
        arr = _grey_from_colour(arr, ds, path, photometric)
        grey_from = photometric
        photometric = "MONOCHROME2"
    else:
        grey_from = None
    if arr.ndim != 2:
        raise OutOfScopeError(f"{path}: pixel data of shape {arr.shape}; pulmo accepts single-frame 2D images")
    dicom_modality = scope["modality"]
    try:
        out = apply_modality_lut(arr, ds).astype(np.float32) if grey_from is None else arr.astype(np.float32)
    except (ValueError, TypeError) as exc:
        raise InputError(f"{path}: malformed RescaleSlope / RescaleIntercept / Modality LUT ({str(exc)[:120]}); "
                         "pulmo accepts images with a valid modality LUT") from None
    applied = ["modality_lut"] if grey_from is None else [f"grey_from_{grey_from.lower().replace(' ', '_')}"]
    if scope["kind"] == "ct":
        modality = "ct"
    else:
        modality = "cxr"
        if grey_from is None and ("VOILUTSequence" in ds or "WindowCenter" in ds):
            try:
                out = apply_voi_lut(out, ds, index=0).astype(np.float32)
            except (ValueError, TypeError, KeyError, IndexError) as exc:
                raise InputError(f"{path}: malformed window / VOI LUT ({str(exc)[:120]}); pulmo accepts images with a "
                                 "valid window or none") from None
            applied.append("voi_lut")
        if photometric == "MONOCHROME1":
            out = float(out.max()) + float(out.min()) - out
            applied.append("invert_monochrome1")
    spacing, spacing_tag = _spacing_2d(ds)
    return Image2D(
        pixels=np.ascontiguousarray(out, dtype=np.float32),
        spacing=spacing,
        modality=modality,
        source={
            "path": str(path),
            "format": "DICOM",
            "dicom_modality": dicom_modality,
            "dicom_scope": scope,
            "photometric": scope["photometric"],
            "bit_depth": int(ds.get("BitsStored", 8)),
            "transforms": applied,
            "spacing_tag": spacing_tag,
            "sop_instance_uid": str(ds.get("SOPInstanceUID", "")),
        },
    )


def _geometry(ds: pydicom.Dataset, keyword: str, n: int, path: Path) -> np.ndarray:
    """``n`` finite floats of a geometry tag, or InputError naming the malformed value."""
    try:
        value = np.asarray([float(v) for v in ds.get(keyword)], dtype=np.float64)
    except (TypeError, ValueError):
        value = np.zeros(0)
    if value.shape != (n,) or not np.all(np.isfinite(value)):
        raise InputError(f"{path}: malformed {keyword} {ds.get(keyword)!r} (expected {n} numbers); pulmo accepts "
                         "CT slices with valid geometry")
    return value


def _valid_slope(ds: pydicom.Dataset) -> bool:
    try:
        slope = float(ds.get("RescaleSlope", 1.0))
    except (TypeError, ValueError):
        return False
    return slope != 0 and np.isfinite(slope)


def _list_files(folder: Path) -> list[Path]:
    files = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        files.extend(Path(root) / n for n in sorted(names))
    return files


def _is_localizer(ds: pydicom.Dataset) -> bool:
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    return "LOCALIZER" in image_type


def read_dicom_series(folder: str | Path, series_uid: str | None = None, limits: InputLimits | None = None) -> Volume:
    """Read a CT series from a folder (searched recursively) into a :class:`Volume` in HU.

    Files that are not DICOM (an LIDC XML, say) are skipped. Localisers and images without
    ImagePositionPatient / ImageOrientationPatient are excluded. When several series remain, the one
    with the most slices is used (ties broken by the smallest SeriesInstanceUID) unless ``series_uid``
    is given; the choice and the excluded series are logged and kept in ``Volume.source``. Slices are
    sorted along the slice normal (ImagePositionPatient projected on row x column cosines).

    Args:
        folder: a folder holding the series' files.
        series_uid: the SeriesInstanceUID to read, when the folder holds several.
        limits: size limits (default :data:`pulmo.io.scope.DEFAULT_LIMITS`), checked before the pixels are read.

    Returns:
        :class:`Volume`: hu float32 ``(Z, Y, X)``, spacing ``(z, y, x)`` mm, LPS origin and direction.

    Raises:
        OutOfScopeError: the chosen series is not a chest CT by its tags (:func:`pulmo.io.scope.dicom_scope` of
            its first file), or is over the voxel limit.
        InputError: empty folder, no DICOM series with geometry, ``series_uid`` not found, fewer than 2
            slices, differing orientation or size, duplicate positions, or a gap or uneven spacing
            (a missing slice) beyond 10 % of the median slice spacing.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder")
    files = _list_files(folder)
    if not files:
        raise InputError(f"{folder}: the folder is empty; expected DICOM files of one CT series")
    series: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    skipped_non_dicom, localizers, no_geometry = 0, 0, 0
    for f in files:
        if not is_dicom_file(f):
            skipped_non_dicom += 1
            continue
        ds = _dcmread(f, header_only=True)
        if _is_localizer(ds):
            localizers += 1
            continue
        if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
            no_geometry += 1
            continue
        series[str(ds.get("SeriesInstanceUID", "unknown"))].append((f, ds))
    if not series:
        raise InputError(
            f"{folder}: no DICOM image series with slice geometry found ({len(files)} files: "
            f"{skipped_non_dicom} not DICOM, {localizers} localisers, {no_geometry} without position)"
        )
    if series_uid is not None:
        if series_uid not in series:
            raise InputError(f"{folder}: series {series_uid} not found; present: {sorted(series)}")
        chosen = series_uid
    else:
        chosen = min(series, key=lambda uid: (-len(series[uid]), uid))
    excluded = {uid: len(items) for uid, items in series.items() if uid != chosen}
    if excluded:
        logger.warning("%s: %d series found; using %s (%d slices), excluded %s",
                       folder, len(series), chosen, len(series[chosen]), excluded)
    items = series[chosen]
    if len(items) < 2:
        raise InputError(f"{folder}: series {chosen} has {len(items)} slice; expected a volume of 2 or more")

    orientation = _geometry(items[0][1], "ImageOrientationPatient", 6, items[0][0])
    for f, ds in items:
        if not np.allclose(_geometry(ds, "ImageOrientationPatient", 6, f), orientation, atol=1e-3):
            raise InputError(f"{f}: ImageOrientationPatient differs from the rest of series {chosen}")
    row_cos, col_cos = orientation[:3], orientation[3:]
    normal = np.cross(row_cos, col_cos)
    positions = np.array([_geometry(ds, "ImagePositionPatient", 3, f) for f, ds in items])
    order = np.argsort(positions @ normal, kind="stable")
    items = [items[i] for i in order]
    positions = positions[order]
    distances = positions @ normal
    steps = np.diff(distances)
    if np.any(steps < 1e-3):
        i = int(np.argmin(steps))
        raise InputError(f"{folder}: two slices of series {chosen} share the position {distances[i]:.2f} mm")
    median_step = float(np.median(steps))
    bad = np.flatnonzero(np.abs(steps - median_step) > SLICE_SPACING_TOLERANCE * median_step)
    if bad.size:
        i = int(bad[0])
        raise InputError(
            f"{folder}: uneven slices in series {chosen}: a step of {steps[i]:.2f} mm after slice position "
            f"{distances[i]:.2f} mm where the median step is {median_step:.2f} mm (missing slices?)"
        )

    first = items[0][1]
    try:
        scope = dicom_scope(first, items[0][0], limits)
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise InputError(f"{items[0][0]}: malformed DICOM header ({type(exc).__name__}: {str(exc)[:200]})") from None
    if scope["kind"] != "ct":
        raise OutOfScopeError(f"{folder}: series {chosen} is Modality {scope['modality'] or '(none)'} "
                              f"({scope['sop_class']}), not CT; pulmo reads a folder as a chest CT series")
    rows, cols = int(first.Rows), int(first.Columns)
    check_voxels(folder, (cols, rows, len(items)), 4, None, False, limits)
    hu = np.empty((len(items), rows, cols), dtype=np.float32)
    for k, (f, _) in enumerate(items):
        ds = _dcmread(f)
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise InputError(f"{f}: slice size {ds.Rows}x{ds.Columns} differs from {rows}x{cols} in the series")
        if str(ds.get("Modality", "")).upper() != "CT" or not _valid_slope(ds):
            raise OutOfScopeError(f"{f}: slice of series {chosen} with Modality {ds.get('Modality', '(none)')!r} "
                                  f"and RescaleSlope {ds.get('RescaleSlope', '(none)')!r}; pulmo accepts CT slices "
                                  "with a non-zero RescaleSlope")
        try:
            hu[k] = apply_modality_lut(_pixels(ds, f), ds)
        except (ValueError, TypeError) as exc:
            raise InputError(f"{f}: malformed RescaleSlope / RescaleIntercept ({str(exc)[:120]}); pulmo accepts CT "
                             "slices with a valid modality LUT") from None
    spacing_rc, _ = _spacing_2d(first)
    if spacing_rc is None:
        raise InputError(f"{folder}: series {chosen} has no PixelSpacing; cannot build a volume geometry")
    direction = np.stack([row_cos, col_cos, normal], axis=1)  # columns: x (column index), y (row), z (slice)
    dicom_modality = str(first.get("Modality", ""))
    meta: dict[str, Any] = {
        "path": str(folder),
        "format": "DICOM series",
        "dicom_modality": dicom_modality,
        "dicom_scope": scope,
        "series_uid": chosen,
        "study_date": _date(first.get("StudyDate")),
        "series_description": str(first.get("SeriesDescription") or "").strip() or None,
        "n_slices": len(items),
        "excluded_series": excluded,
        "skipped_files": {"not_dicom": skipped_non_dicom, "localizer": localizers, "no_geometry": no_geometry},
        "files": [str(f) for f, _ in items],
    }
    return Volume(
        hu=hu,
        spacing=(median_step, spacing_rc[0], spacing_rc[1]),
        origin=tuple(float(v) for v in positions[0]),
        direction=direction,
        source=meta,
    )


def folder_is_dicom_series(folder: str | Path, recursive: bool = False) -> bool:
    """True when a folder is one DICOM volume, not a batch: at least two DICOM files of one SeriesInstanceUID
    carry slice geometry (any modality: a folder of MR or PET slices is one series, which the series reader
    then refuses as not CT), and the folder holds no other image files (a PNG beside them makes it a batch).

    Only the folder's own files are looked at unless ``recursive``.
    """
    folder = Path(folder)
    files = _list_files(folder) if recursive else sorted(p for p in folder.iterdir() if p.is_file())
    per_series: Counter[str] = Counter()
    for f in files:
        if not is_dicom_file(f):
            if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".nii", ".gz", ".nrrd", ".mhd", ".mha"):
                return False
            continue
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - an unreadable file is reported when the batch reaches it
            logger.debug("%s: unreadable DICOM header while probing for a series", f)
            continue
        if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds:
            per_series[str(ds.get("SeriesInstanceUID", ""))] += 1
    return any(n >= 2 for n in per_series.values())
