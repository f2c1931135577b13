"""What pulmo may read at all, decided from headers before any pixel is decoded.

This is the first half of the input gate (the content half is :mod:`pulmo.gate`):

* **Size limits** (:class:`InputLimits`): pixels of a 2D image and voxels of a volume are read from the
  header (Pillow's lazy open, the DICOM Rows / Columns / NumberOfFrames, SimpleITK's
  ``ReadImageInformation``) and checked before decoding, so a decompression bomb is refused in
  milliseconds with bounded memory. A gzip-compressed volume whose header promises more than
  :attr:`InputLimits.max_compression_ratio` times its file size is refused as a bomb.
* **DICOM tags** (:func:`dicom_scope`): the SOP class, Modality, BodyPartExamined, ViewPosition,
  NumberOfFrames, RescaleSlope and window of a DICOM file decide whether it is a chest radiograph
  (CR / DX), a chest CT image, a secondary capture with a chest hint (judged by content later), or
  something pulmo refuses (MR, US, NM, PT, SEG, RT objects, SR, presentation states, lateral views,
  other body parts, multi-frame objects, ...). The refusal names the tag value and what pulmo accepts.

Tag values follow DICOM PS3.3 (C.7.3.1 Modality, C.8.11.7 View Position, C.11.2 VOI LUT) and the
Defined Terms of Body Part Examined in PS3.16 Annex L.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pydicom
from pydicom.uid import UID

from pulmo.errors import OutOfScopeError

#: SOP classes of the images pulmo reads (PS3.4 B.5).
CR_IMAGE = "1.2.840.10008.5.1.4.1.1.1"
DX_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"
DX_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
CXR_SOP_CLASSES = {CR_IMAGE, DX_PRESENTATION}
CT_SOP_CLASSES = {CT_IMAGE}

CXR_MODALITIES = ("CR", "DX")
#: Radiograph-like modalities that pulmo's chest X-ray models were not trained on, with the reason.
DX_LIKE_REFUSED = {
    "RG": "RG (radiographic imaging, e.g. digitised film) is not a CR/DX chest radiograph",
    "XA": "XA is X-ray angiography, not a chest radiograph",
    "RF": "RF is fluoroscopy, not a chest radiograph",
    "MG": "MG is mammography",
    "IO": "IO is an intra-oral dental radiograph",
    "PX": "PX is a panoramic dental radiograph",
}
#: BodyPartExamined values (upper case, PS3.16 Annex L and common vendor spellings) of a chest image.
CHEST_BODY_PARTS = {"", "CHEST", "THORAX", "LUNG", "LUNGS", "PORT CHEST", "TORAX", "THORACIC", "PECHO", "TORACE"}
#: Extra BodyPartExamined values accepted for a CT whose field includes the chest.
CT_CHEST_BODY_PARTS = CHEST_BODY_PARTS | {"CHESTABDOMEN", "CHEST_ABDOMEN", "CHESTABDPELVIS", "CHEST_ABDOMEN_PELVIS",
                                          "TORSO", "WHOLEBODY", "WHOLE BODY", "TRUNK", "NECKCHEST",
                                          "NECKCHESTABDOMEN", "NECKCHESTABDPELV", "BODY"}
FRONTAL_VIEWS = {"", "PA", "AP", "APS", "AP SUPINE", "POSTERO_ANTERIOR", "ANTERO_POSTERIOR"}
LATERAL_VIEWS = {"LL", "RL", "LLD", "RLD", "LAT", "LATERAL", "LEFT LATERAL", "RIGHT LATERAL"}
#: Words in descriptions that count as a chest hint for a secondary capture / OT image.
CHEST_HINTS = ("CHEST", "THORAX", "LUNG", "CXR", "PULMO", "TORAX", "THORAC", "PECHO", "TORACE")

ACCEPTS_DICOM = ("pulmo accepts DICOM CR/DX frontal (PA/AP) chest radiographs, CT images of the chest, and "
                 "secondary captures of a chest X-ray")


@dataclasses.dataclass
class InputLimits:
    """Resource limits checked from headers before decoding.

    Attributes:
        max_pixels: largest 2D image, pixels (rows x columns x frames). Default 50 Mpx.
        max_voxels: largest volume, voxels. Default 1.5 G voxels.
        max_compression_ratio: largest (decompressed bytes the header promises) / (file bytes) of a gzip
            volume that decompresses to more than ``bomb_min_bytes``; real CT compresses 2-10x, a bomb
            thousands of times (a label mask compresses 1000x too, but is small).
        bomb_min_bytes: decompressed size below which the ratio is not checked (256 MiB).
    """

    max_pixels: int = 50_000_000
    max_voxels: int = 1_500_000_000
    max_compression_ratio: float = 1000.0
    bomb_min_bytes: int = 256 * 2**20


DEFAULT_LIMITS = InputLimits()


def check_pixels(path: str | Path, rows: int, columns: int, frames: int = 1,
                 limits: InputLimits | None = None) -> None:
    """Refuse a 2D image over ``limits.max_pixels`` before it is decoded.

    Raises:
        OutOfScopeError: over the limit, or non-positive dimensions.
    """
    limits = limits or DEFAULT_LIMITS
    if rows <= 0 or columns <= 0:
        raise OutOfScopeError(f"{path}: image size {columns} x {rows} pixels is empty; expected a 2D image")
    n = int(rows) * int(columns) * max(1, int(frames))
    if n > limits.max_pixels:
        raise OutOfScopeError(f"{path}: image of {columns} x {rows} pixels{f' x {frames} frames' if frames > 1 else ''} "
                              f"({n / 1e6:.0f} Mpx) is over the limit of {limits.max_pixels / 1e6:.0f} Mpx; "
                              "raise limits.max_pixels (--max-pixels) to read it")


def check_voxels(path: str | Path, size_xyz: tuple[int, ...], bytes_per_voxel: int, file_bytes: int | None,
                 compressed: bool, limits: InputLimits | None = None) -> None:
    """Refuse a volume over ``limits.max_voxels``, or a gzip bomb, before it is decoded.

    Args:
        path: the file (for the message).
        size_xyz: the header's image size.
        bytes_per_voxel: stored bytes per voxel.
        file_bytes: the file's size on disk (``None``: not checked for a bomb).
        compressed: the file is gzip-compressed (``.nii.gz``, or a NRRD / MetaImage with gzip encoding).
        limits: limits (default :data:`DEFAULT_LIMITS`).

    Raises:
        OutOfScopeError: over the voxel limit, or a compression ratio over the limit.
    """
    limits = limits or DEFAULT_LIMITS
    n = 1
    for s in size_xyz:
        n *= int(s)
    if n > limits.max_voxels:
        raise OutOfScopeError(f"{path}: volume of {' x '.join(str(int(s)) for s in size_xyz)} voxels "
                              f"({n / 1e9:.2f} G) is over the limit of {limits.max_voxels / 1e9:.2f} G voxels; "
                              "raise limits.max_voxels (--max-voxels) to read it")
    if compressed and file_bytes and n * bytes_per_voxel > limits.bomb_min_bytes:
        ratio = n * bytes_per_voxel / file_bytes
        if ratio > limits.max_compression_ratio:
            raise OutOfScopeError(
                f"{path}: the {file_bytes / 1024:.0f} KiB file would decompress to {n * bytes_per_voxel / 2**20:.0f} "
                f"MiB ({ratio:.0f}x, over {limits.max_compression_ratio:.0f}x): a decompression bomb, not a CT")


def _upper(ds: pydicom.Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    if isinstance(value, pydicom.multival.MultiValue):
        value = "\\".join(str(v) for v in value)
    return str(value or "").strip().upper()


def _sop_name(uid: str) -> str:
    name = UID(uid).name if uid else ""
    return name if name and name != uid else (uid or "unknown SOP class")


def _float_tag(ds: pydicom.Dataset, keyword: str) -> list[float] | None:
    value = ds.get(keyword)
    if value is None or value == "":
        return None
    values = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
    try:
        return [float(v) for v in values]
    except (TypeError, ValueError):
        return []


def _int_tag(ds: pydicom.Dataset, keyword: str, default: int, path: str | Path) -> int:
    try:
        value = ds.get(keyword, default)
        return int(value) if value not in (None, "") else default
    except (TypeError, ValueError, OverflowError):
        raise OutOfScopeError(f"{path}: malformed {keyword} {ds.get(keyword)!r} (expected an integer); pulmo accepts "
                              "DICOM files whose image attributes are valid") from None


#: BodyPartExamined words of parts that are not the chest: an X-ray whose value names one of them is refused even
#: when it names the chest too (a CT field may extend beyond the chest: for CT any chest word is enough).
NON_CHEST_WORDS = ("HEAD", "BRAIN", "SKULL", "NECK", "SPINE", "CSPINE", "LSPINE", "HAND", "FOOT", "KNEE", "HIP",
                   "ANKLE", "ELBOW", "WRIST", "SHOULDER", "TIBIA", "FEMUR", "PELVIS", "ABDOMEN", "EXTREMITY", "BREAST",
                   "JAW", "TMJ", "SINUS")


def _is_chest(body: str, whole_values: set[str]) -> bool:
    """Whether a BodyPartExamined value (upper case) is a chest field: one of ``whole_values``, or a value that
    names the chest (CHEST, THORAX, LUNG, ... in any spelling, e.g. "CHEST PA", "THORAX_AP") and no other part."""
    if body in whole_values:
        return True
    if not any(h in body for h in CHEST_HINTS):
        return False
    return not any(w in body for w in NON_CHEST_WORDS)


def dicom_scope(ds: pydicom.Dataset, path: str | Path, limits: InputLimits | None = None) -> dict[str, Any]:
    """Decide from the tags whether pulmo may read a DICOM image, and as what.

    Args:
        ds: the dataset (header only is enough).
        path: the file, for messages.
        limits: size limits.

    Returns:
        ``{"kind": "cxr" | "ct" | "secondary_capture", "modality", "sop_class", "body_part", "view_position",
        "photometric"}``; ``secondary_capture`` is a chest-hinted SC / OT image the content gate must judge.

    Raises:
        OutOfScopeError: the SOP class, Modality, body part, view, frame count, photometric interpretation,
            RescaleSlope or window is outside pulmo's scope, or the image is over the pixel limit. The
            message names the tag value and what pulmo accepts.
    """
    sop = str(ds.get("SOPClassUID", "") or "")
    modality = _upper(ds, "Modality")
    body = _upper(ds, "BodyPartExamined")
    view = _upper(ds, "ViewPosition")
    photometric = _upper(ds, "PhotometricInterpretation") or "MONOCHROME2"
    frames = max(1, _int_tag(ds, "NumberOfFrames", 1, path))
    info = {"modality": modality, "sop_class": _sop_name(sop) if sop else None, "body_part": body or None,
            "view_position": view or None, "photometric": photometric}

    def refuse(what: str, accepts: str = ACCEPTS_DICOM) -> OutOfScopeError:
        return OutOfScopeError(f"{path}: {what}; {accepts}")

    if sop == DX_PROCESSING:
        raise refuse("a DX image 'For Processing' (raw detector data before the vendor's image processing)",
                     "pulmo accepts DX 'For Presentation' and CR chest radiographs")
    if sop == SECONDARY_CAPTURE or sop.startswith(SECONDARY_CAPTURE + "."):
        kind = "secondary_capture"
    elif sop in CXR_SOP_CLASSES or (not sop and modality in CXR_MODALITIES):
        kind = "cxr"
    elif sop in CT_SOP_CLASSES or (not sop and modality == "CT"):
        kind = "ct"
    elif sop:
        raise refuse(f"Modality {modality or '(none)'}, SOP class {_sop_name(sop)}: not an image pulmo can judge")
    else:
        raise refuse(f"Modality {modality or '(none)'} without a SOP class")

    if kind == "cxr" and modality not in CXR_MODALITIES:
        reason = DX_LIKE_REFUSED.get(modality, f"Modality {modality or '(none)'} is not CR or DX")
        raise refuse(f"{_sop_name(sop)} with {reason}")
    if kind == "ct" and modality != "CT":
        raise refuse(f"a CT Image Storage object with Modality {modality or '(none)'}; expected Modality CT")
    if kind == "secondary_capture":
        if modality in DX_LIKE_REFUSED or modality not in ("OT", "SC", "", *CXR_MODALITIES):
            raise refuse(f"a secondary capture with Modality {modality}")
        text = " ".join(_upper(ds, k) for k in ("BodyPartExamined", "StudyDescription", "SeriesDescription",
                                                "ImageComments", "ProtocolName"))
        if not any(h in text for h in CHEST_HINTS):
            raise refuse(f"a secondary capture (Modality {modality or '(none)'}) with no chest hint in "
                         "BodyPartExamined or the study / series description",
                         "pulmo accepts a secondary capture only when it is marked as a chest image")
    if kind in ("cxr", "secondary_capture"):
        if kind == "cxr" and not _is_chest(body, CHEST_BODY_PARTS):
            raise refuse(f"BodyPartExamined {body!r}: pulmo's X-ray models know the chest only",
                         "pulmo accepts BodyPartExamined CHEST, THORAX, LUNG or none")
        view_tokens = set(view.replace("_", " ").replace("-", " ").split())
        body_tokens = set(body.replace("_", " ").replace("-", " ").split())
        if view_tokens & LATERAL_VIEWS or view in LATERAL_VIEWS or body_tokens & {"LAT", "LATERAL"}:
            raise refuse(f"lateral view (ViewPosition {view or '(none)'}, BodyPartExamined {body or '(none)'}): "
                         "pulmo's X-ray models are frontal-only", "pulmo accepts ViewPosition PA, AP or none")
        if view and not (view in FRONTAL_VIEWS or view_tokens & {"PA", "AP", "APS"}):
            raise refuse(f"ViewPosition {view!r} is not a frontal view", "pulmo accepts ViewPosition PA, AP or none")
    elif not (body in CT_CHEST_BODY_PARTS or any(h in body for h in CHEST_HINTS)):
        raise refuse(f"a CT of BodyPartExamined {body!r}, not of the chest",
                     "pulmo accepts CT whose BodyPartExamined is CHEST, THORAX, LUNG, a chest-including field, "
                     "or none")
    if frames > 1:
        raise refuse(f"a multi-frame object ({frames} frames)", "pulmo accepts single-frame images (a CT as a folder "
                     "of single-slice files)")
    if photometric not in ("MONOCHROME1", "MONOCHROME2", "PALETTE COLOR", "RGB") and not photometric.startswith("YBR"):
        raise refuse(f"PhotometricInterpretation {photometric!r}", "pulmo accepts MONOCHROME1/2 (or grey colour)")
    slope = _float_tag(ds, "RescaleSlope")
    if slope is not None and (len(slope) != 1 or not slope[0] or slope[0] != slope[0]):
        raise refuse(f"RescaleSlope {ds.get('RescaleSlope')!r} is invalid (must be a non-zero number)",
                     "pulmo accepts images whose modality LUT is defined")
    intercept = _float_tag(ds, "RescaleIntercept")
    if intercept is not None and (len(intercept) != 1 or intercept[0] != intercept[0]):
        raise refuse(f"RescaleIntercept {ds.get('RescaleIntercept')!r} is invalid (must be a number)",
                     "pulmo accepts images whose modality LUT is defined")
    center = _float_tag(ds, "WindowCenter")
    if kind != "ct" and center is not None and "VOILUTSequence" not in ds and not center:
        raise refuse(f"WindowCenter {ds.get('WindowCenter')!r} is invalid (must be numbers)",
                     "pulmo accepts images with a valid window or none")
    width = _float_tag(ds, "WindowWidth")
    if kind != "ct" and width is not None and "VOILUTSequence" not in ds and (not width or min(width) < 1):
        raise refuse(f"WindowWidth {ds.get('WindowWidth')!r} is invalid (PS3.3 C.11.2.1.2 requires >= 1)",
                     "pulmo accepts images with a valid window or none")
    check_pixels(path, _int_tag(ds, "Rows", 0, path), _int_tag(ds, "Columns", 0, path), frames, limits)
    return {"kind": kind, **info}
