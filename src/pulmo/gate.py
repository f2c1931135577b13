"""The input gate: may pulmo judge this image at all, and as what?

The header half (size limits and DICOM tags) runs inside :func:`pulmo.io.read_image` (see
:mod:`pulmo.io.scope`), before pixels are decoded. This module is the content half, applied to what was
read, before any pipeline runs (``pulmo analyze``, the service, :func:`pulmo.analyze`):

* **Chest X-ray** (:func:`check_cxr`): finite pixels; not constant; more than :data:`MIN_GREY_LEVELS`
  grey levels (a mask, a drawing or a blank picture has a handful); then the bundled gate model
  (:mod:`pulmo.tasks.input_gate`) must find a frontal chest radiograph, ``p(cxr) >=`` its card's
  threshold. A picture the model calls an axial CT slice is refused with a pointer to ``--modality ct``.
* **CT slice** (:func:`check_ct_slice`): finite; for HU input (DICOM CT) air below -500 HU and tissue, and
  lungs (at least 50 cm² found by the lung extraction);
  the gate model must find an axial CT slice (``p(ct_slice) >=`` threshold), so a radiograph given with
  ``--modality ct`` is refused by its content, not only by its tag.
* **CT volume** (:func:`check_ct_volume`): finite voxels; spacing within :data:`SPACING_RANGE_MM` and a field
  within :data:`MAX_FIELD_MM`; a
  known, orthonormal direction with an axial slice axis; an HU histogram with air (<= -900 HU), soft
  tissue (-200..300 HU) and bone (> 300 HU) in plausible shares. Lungs large enough are then required by
  the lung extraction (:func:`pulmo.transforms.ct.lung_mask_ct`).

Every refusal raises :class:`pulmo.errors.OutOfScopeError` with one line: ``<file>: <what is wrong>;
<what pulmo accepts>`` (exit code 3 in the CLI). What passes gets a decision record for ``findings.json``
(``input.gate``): the checks run, their values and the model's scores.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pulmo.errors import InputError, OutOfScopeError
from pulmo.io import Image2D, InputLimits, Volume, read_image
from pulmo.weights import cached_loader

#: Fewest distinct grey levels of a radiograph or CT slice (on the gate's sub-sampled view).
MIN_GREY_LEVELS = 24
#: Accepted CT voxel spacing, mm (every axis).
SPACING_RANGE_MM = (0.2, 10.0)
#: Largest physical field of a CT volume, mm: (along z, in-plane). Scanners reconstruct at most ~700 mm
#: in-plane and a whole body is under 2 m; a larger field means a wrong spacing, and resampling it to the
#: nodule model's 1.5 mm grid would need tens of GB.
MAX_FIELD_MM = (2000.0, 800.0)
#: HU histogram of a chest CT: least share of air (<= -900 HU, outside the body and in the lungs), of soft
#: tissue (-200..300 HU) and of bone (> 300 HU).
MIN_AIR_FRACTION, MIN_TISSUE_FRACTION, MIN_BONE_FRACTION = 0.02, 0.05, 0.0005

ACCEPTS_CXR = "pulmo accepts frontal (PA/AP) chest radiographs"
ACCEPTS_CT = "pulmo accepts chest CT in Hounsfield units (volumes, or axial slices)"


def _gate_model(weights: str):
    from pulmo.inference.input_gate import InputGateModel

    return InputGateModel(weights)


gate_model = cached_loader("input-gate", "input-gate", _gate_model,
                           doc="The gate model (:class:`pulmo.tasks.input_gate.InputGateModel`; bundled, or "
                               "``--weights input-gate=FILE``), loaded once per process.")


def _where(image: Image2D | Volume) -> str:
    return str(image.source.get("path", "input"))


def _finite(arr: np.ndarray, where: str, accepts: str) -> dict[str, Any]:
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise OutOfScopeError(f"{where}: {bad} pixel/voxel values are not finite (NaN or Inf); {accepts}")
    return {"check": "finite", "passed": True}


def _grey_levels(pixels: np.ndarray, where: str, accepts: str) -> dict[str, Any]:
    step = max(1, int(np.ceil(max(pixels.shape) / 512)))
    view = pixels[::step, ::step]
    lo, hi = float(view.min()), float(view.max())
    if hi - lo <= 0:
        raise OutOfScopeError(f"{where}: a constant image (every pixel {lo:g}); {accepts}")
    levels = int(np.unique(view).size)
    if levels < MIN_GREY_LEVELS:
        raise OutOfScopeError(f"{where}: only {levels} grey levels (a mask, a drawing or a blank picture, not a "
                              f"radiograph; at least {MIN_GREY_LEVELS} expected); {accepts}")
    return {"check": "grey_levels", "passed": True, "value": levels}


def _model_scores(pixels: np.ndarray) -> tuple[dict[str, float], dict[str, Any]]:
    from pulmo.weights import model_entry

    model = gate_model()
    return model.predict(pixels), model_entry(model.card, thresholds=model.thresholds, backend=model.backend)


def check_cxr(image: Image2D) -> dict[str, Any]:
    """Content gate of a chest X-ray (see the module docstring).

    Args:
        image: the X-ray as read (pixels ``(H, W)``).

    Returns:
        The decision record ``{"decision": "accepted", "as": "cxr", "checks": [...], "scores": {label: p},
        "model": {...}}``.

    Raises:
        OutOfScopeError: non-finite, constant or few-level pixels, or the gate model does not find a frontal
            chest radiograph.
    """
    where = _where(image)
    checks = [_finite(image.pixels, where, ACCEPTS_CXR), _grey_levels(image.pixels, where, ACCEPTS_CXR)]
    scores, model = _model_scores(image.pixels)
    threshold = model["thresholds"]["cxr"]
    if scores["cxr"] < threshold:
        if scores["ct_slice"] >= max(scores["other"], model["thresholds"]["ct_slice"]):
            hint = ("pulmo reads CT from CT Image Storage files (a CT series folder, or one CT slice)"
                    if image.source.get("format") == "DICOM" else
                    "pass modality 'ct' (--modality ct) to analyse it as a CT slice, or give the whole CT volume")
            raise OutOfScopeError(f"{where}: the picture looks like an axial CT slice (gate p(ct_slice) "
                                  f"{scores['ct_slice']:.2f}), not a chest radiograph; {hint}")
        raise OutOfScopeError(f"{where}: the picture does not look like a frontal chest radiograph (gate p(cxr) "
                              f"{scores['cxr']:.3f} < {threshold:.3f}); {ACCEPTS_CXR}")
    checks.append({"check": "gate_model", "passed": True, "value": round(scores["cxr"], 4), "threshold": threshold})
    return {"decision": "accepted", "as": "cxr", "checks": checks,
            "scores": {k: round(v, 4) for k, v in scores.items()}, "model": model}


def check_ct_slice(image: Image2D) -> dict[str, Any]:
    """Content gate of a single axial CT slice (HU from DICOM, or an already windowed picture).

    Returns:
        The decision record (as :func:`check_cxr`, ``"as": "ct_slice"``).

    Raises:
        OutOfScopeError: non-finite or constant pixels, HU without air or tissue, or the gate model does not
            find an axial CT slice.
    """
    where = _where(image)
    pixels = image.pixels
    checks = [_finite(pixels, where, ACCEPTS_CT), _grey_levels(pixels, where, ACCEPTS_CT)]
    if image.source.get("format") == "DICOM":
        air = float((pixels <= -500).mean())
        tissue = float(((pixels > -200) & (pixels < 300)).mean())
        if air < MIN_AIR_FRACTION or tissue < MIN_TISSUE_FRACTION:
            raise OutOfScopeError(f"{where}: values {pixels.min():.0f}..{pixels.max():.0f} with {air:.1%} air "
                                  f"(<= -500 HU) and {tissue:.1%} soft tissue are not a CT slice in HU; {ACCEPTS_CT}")
        checks.append({"check": "hu_histogram", "passed": True, "air_fraction": round(air, 4),
                       "tissue_fraction": round(tissue, 4)})
        checks.append(_slice_lungs(image, where))
    scores, model = _model_scores(pixels)
    threshold = model["thresholds"]["ct_slice"]
    if scores["ct_slice"] < threshold:
        what = ("looks like a chest radiograph" if scores["cxr"] >= max(scores["other"], model["thresholds"]["cxr"])
                else "does not look like an axial CT slice")
        raise OutOfScopeError(f"{where}: the picture {what} (gate p(ct_slice) {scores['ct_slice']:.3f} < "
                              f"{threshold:.3f}); {ACCEPTS_CT}")
    checks.append({"check": "gate_model", "passed": True, "value": round(scores["ct_slice"], 4),
                   "threshold": threshold})
    return {"decision": "accepted", "as": "ct_slice", "checks": checks,
            "scores": {k: round(v, 4) for k, v in scores.items()}, "model": model}


def _slice_lungs(image: Image2D, where: str) -> dict[str, Any]:
    """A CT slice in HU must show lungs: the lung extraction on the slice (as a 10 mm slab) must find at least
    :data:`pulmo.transforms.ct.MIN_LUNG_ML` of them, i.e. 50 cm² (a head or abdomen slice has none)."""
    from pulmo.transforms.ct import MIN_LUNG_ML, lung_mask_slice

    spacing = image.spacing or (1.0, 1.0)
    try:
        lungs = lung_mask_slice(image)
    except InputError:
        # MIN_LUNG_ML mL over a 10 mm slab = MIN_LUNG_ML * 1000 / 10 mm² = MIN_LUNG_ML cm²
        raise OutOfScopeError(f"{where}: no lungs in the slice (less than {MIN_LUNG_ML:.0f} cm² of air "
                              f"inside the body); {ACCEPTS_CT}: a slice through the lungs") from None
    area_cm2 = float(lungs.sum()) * spacing[0] * spacing[1] / 100.0
    return {"check": "lungs_in_slice", "passed": True, "lung_area_cm2": round(area_cm2, 1)}


def check_ct_volume(volume: Volume) -> dict[str, Any]:
    """Plausibility gate of a CT volume (see the module docstring).

    Returns:
        The decision record ``{"decision": "accepted", "as": "ct_volume", "checks": [...]}``.

    Raises:
        OutOfScopeError: non-finite voxels, spacing outside :data:`SPACING_RANGE_MM`, an unknown or
            non-axial orientation, or an HU histogram that is not a chest CT.
    """
    where = _where(volume)
    hu = volume.hu
    checks = [_finite(hu, where, ACCEPTS_CT)]
    spacing = np.asarray(volume.spacing, dtype=np.float64)
    lo, hi = SPACING_RANGE_MM
    if not np.all(np.isfinite(spacing)) or spacing.min() < lo or spacing.max() > hi:
        raise OutOfScopeError(f"{where}: voxel spacing {tuple(round(float(s), 3) for s in spacing)} mm (z, y, x) is "
                              f"outside {lo}-{hi} mm; {ACCEPTS_CT} with spacing within {lo}-{hi} mm")
    extent = np.asarray(volume.shape, dtype=np.float64) * spacing
    if extent[1] > MAX_FIELD_MM[1] or extent[2] > MAX_FIELD_MM[1] or extent[0] > MAX_FIELD_MM[0]:
        raise OutOfScopeError(f"{where}: a field of {' x '.join(f'{e:.0f}' for e in extent)} mm (z, y, x) is larger than "
                              f"any CT ({MAX_FIELD_MM[1]:.0f} mm in-plane, {MAX_FIELD_MM[0]:.0f} mm along z at most): the "
                              f"spacing or size in the header is wrong; {ACCEPTS_CT}")
    checks.append({"check": "spacing_mm", "passed": True, "value": [round(float(s), 4) for s in spacing],
                   "field_mm": [round(float(e), 1) for e in extent]})
    direction = np.asarray(volume.direction, dtype=np.float64)
    if direction.shape != (3, 3) or not np.all(np.isfinite(direction)) or not np.allclose(
            direction.T @ direction, np.eye(3), atol=1e-3):
        raise OutOfScopeError(f"{where}: the orientation (direction cosines) is unknown or not orthonormal; "
                              f"{ACCEPTS_CT} with a known orientation")
    if abs(direction[2, 2]) < 0.8:
        raise OutOfScopeError(f"{where}: the slice axis points {np.round(direction[:, 2], 2).tolist()} (LPS), not "
                              "head-foot: pulmo's CT models work on axial slices; reformat the volume to axial")
    checks.append({"check": "orientation", "passed": True, "slice_axis_lps": np.round(direction[:, 2], 3).tolist()})
    view = hu[:, ::4, ::4]
    air = float((view <= -900).mean())
    tissue = float(((view > -200) & (view < 300)).mean())
    bone = float((view > 300).mean())
    if air < MIN_AIR_FRACTION or tissue < MIN_TISSUE_FRACTION or bone < MIN_BONE_FRACTION:
        raise OutOfScopeError(
            f"{where}: values {float(hu.min()):.0f}..{float(hu.max()):.0f} with {air:.1%} air (<= -900 HU), "
            f"{tissue:.1%} soft tissue (-200..300 HU) and {bone:.2%} bone (> 300 HU) are not a chest CT in HU "
            f"(at least {MIN_AIR_FRACTION:.0%}, {MIN_TISSUE_FRACTION:.0%} and {MIN_BONE_FRACTION:.2%} expected); "
            f"{ACCEPTS_CT}")
    checks.append({"check": "hu_histogram", "passed": True, "air_fraction": round(air, 4),
                   "tissue_fraction": round(tissue, 4), "bone_fraction": round(bone, 5)})
    return {"decision": "accepted", "as": "ct_volume", "checks": checks}


def check_input(image: Image2D | Volume, modality: str) -> dict[str, Any]:
    """Run the content gate for the modality pulmo is about to analyse the input as.

    Args:
        image: what :func:`pulmo.io.read_image` returned.
        modality: ``"cxr"`` or ``"ct"``.

    Returns:
        The decision record for ``findings.json`` ``input.gate``, with the header decision (DICOM tags)
        under ``"dicom"`` when the input was DICOM.

    Raises:
        OutOfScopeError: the input is refused (see :func:`check_cxr`, :func:`check_ct_slice`,
            :func:`check_ct_volume`).
    """
    if isinstance(image, Volume):
        decision = check_ct_volume(image)
    elif modality == "ct":
        decision = check_ct_slice(image)
    else:
        decision = check_cxr(image)
    if image.source.get("dicom_scope"):
        decision["dicom"] = image.source["dicom_scope"]
    return decision


def screen(path: str | Path, modality: str | None = None,
           limits: InputLimits | None = None) -> tuple[Image2D | Volume, str, dict[str, Any]]:
    """Read an input and pass it through the whole gate (header, tags, content), without analysing it.

    Args:
        path: an image file, a volume file or a DICOM series folder.
        modality: ``"cxr"`` or ``"ct"`` for a 2D image whose file does not tell (or to treat a picture as a
            CT slice); ``None``: the file decides (a volume is CT, a DICOM's tags decide, a PNG/JPEG is a CXR).
        limits: size limits checked before decoding.

    Returns:
        ``(image, modality, decision)``: what was read, ``"cxr"`` or ``"ct"``, and the decision record.

    Raises:
        OutOfScopeError: refused by the gate.
        InputError: unreadable input, or a modality that contradicts the file (a volume as ``cxr``, a DICOM CT
            as ``cxr``, a DICOM radiograph as ``ct``, a 2D image of unknown modality).
    """
    image = read_image(path, limits)
    if isinstance(image, Volume):
        if modality == "cxr":
            raise InputError(f"{path}: a 3D volume {image.shape[::-1]} (x, y, z) cannot be a chest X-ray; "
                             "pulmo accepts a volume as a CT")
        effective = "ct"
    else:
        effective = modality or image.modality
        if effective is None:
            raise InputError(f"{path}: a 2D image whose file does not tell the modality; pass modality 'cxr' or 'ct' "
                             "(--modality cxr / ct)")
        if effective == "cxr" and image.modality == "ct":
            raise InputError(f"{path}: the DICOM Modality is CT; a CT slice cannot be analysed as a chest X-ray")
        if effective == "ct" and image.modality == "cxr" and image.source.get("format") == "DICOM":
            raise InputError(f"{path}: the DICOM Modality is {image.source.get('dicom_modality')!r}, a radiograph; "
                             "it cannot be analysed as a CT slice")
    return image, effective, check_input(image, effective)


__all__ = ["check_ct_slice", "check_ct_volume", "check_cxr", "check_input", "gate_model", "screen"]
