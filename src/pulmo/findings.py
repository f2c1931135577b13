"""The result of ``pulmo analyze`` for one input, in original image coordinates.

``findings.json`` schema (``schema_version`` "1.2"; 1.1 added ``input.gate``; 1.2 added
``classification.in_scope`` / ``out_of_scope_score`` / ``statement``, whole-image heatmap normalisation, nodule
``volume_mm3`` (was ``volume_ml``) and ``key_slice_image``):

* ``schema_version``, ``pulmo_version``, ``created`` (UTC ISO 8601)
* ``input``: ``path``, ``format``, ``image_size`` ``{"height", "width"}`` (px), ``spacing_mm``
  ``[row, column]`` or null, ``photometric``, ``bit_depth``; ``gate``: the input gate's decision
  (:mod:`pulmo.gate`): ``decision`` ("accepted"), ``as`` ("cxr" | "ct_slice" | "ct_volume"), ``checks``
  ``[{"check", "passed", ...values}]``, for 2D inputs ``scores`` {cxr, ct_slice, other: calibrated p} and
  ``model`` {name, sha256, thresholds}, for DICOM ``dicom`` (the tag decision: kind, modality, SOP class,
  body part, view position, photometric)
* ``modality``: ``"cxr"`` or ``"ct"``
* ``lungs``: ``mask`` (CXR: PNG 0/255 at the original size; CT: NIfTI in the input geometry); CXR:
  ``area_px``, ``area_cm2`` (null when the spacing is unknown), ``n_components``, ``convention``;
  CT volume: ``volume_ml``, ``method``, ``coverage`` {complete, cut_at, end_slice_area_cm2, note}: whether the
  scan holds the whole lung field (:func:`pulmo.transforms.ct.lung_coverage`)
* ``infection`` (CT): ``mask`` (NIfTI, 0 background, 1.. labels), ``labels``, ``volume_ml`` and
  ``percent_of_lung`` (volume) or ``area_px`` / ``area_cm2`` (single slice), ``n_slices_with_infection``,
  ``key_slice`` (axial index with the most infection), per-class ``<label>_ml`` for a three-class model;
  CT volumes: ``postprocessing`` (the HU rules of :mod:`pulmo.transforms.ct_postprocess`, the model's raw
  volume and the mL each rule removed) and ``scope`` (what the lesion model was trained on)
* ``classification`` (CXR, when a classifier is bundled): ``probabilities`` {label: p} (calibrated, sum 1;
  ``other_finding`` = a finding outside the four classes), ``predicted`` (top label), ``in_scope`` (false when
  the top label is ``other_finding`` or ``out_of_scope_score`` >= ``out_of_scope_threshold``; null for a four-class model, which cannot tell),
  ``out_of_scope_score`` (p(other_finding), null for a four-class model), ``statement`` (the diagnosis, or
  "finding outside the classifier's classes ..." when not in scope), ``calibrated`` (temperature scaling),
  ``temperature``, ``calibration_ece`` (held-out ECE of the card), ``lung_masked_input``, ``input_crop``,
  ``heatmaps`` {"gradcam": PNG, "gradcam++": PNG} (normalised over the whole image,
  ``heatmap_normalisation``), ``heatmap_energy_in_lungs`` {method: fraction of the map's weight inside the
  lungs}
* ``detections`` (CXR, when a detector is bundled): ``[{"label", "name", "score", "box_xyxy"}]`` (``name``: the clinical display name) with ``box_xyxy``
  ``[x1, y1, x2, y2]`` in original pixels, scores in [0, 1] at or above the model card's threshold, highest
  first; an empty list when nothing passes the threshold
* ``nodules`` (CT volume, when a nodule model is bundled): ``[{"center_xyz_mm", "center_zyx_index",
  "diameter_mm", "volume_mm3", "probability", "slice_index", "key_slice_image", "mask_method"}]``, most probable
  first: ``center_xyz_mm`` world LPS mm, ``center_zyx_index`` voxel indices (float), ``diameter_mm`` of the
  equivalent sphere, ``volume_mm3`` in mm³ (replaces the former ``volume_ml``), ``probability`` in [0, 1] at or
  above the card's threshold, ``slice_index`` the key axial z index, ``key_slice_image`` the PNG of that slice
  with the nodule's numbered marker, ``mask_method`` the model whose outline gives the mask, diameter and volume:
  ``"nodule-seg (2.5-D U-Net, real LIDC crops)"`` (when ``nodule-seg`` weights are bundled, listed in ``models``)
  or ``"nodule (NoduleNet mask head)"``; plus ``nodule_mask`` (NIfTI in the input geometry, 1.. = nodule number)
* ``models``: ``[{"task", "name", "architecture", "sha256", "scope"}]`` (``scope``: the card's ``{"classes",
  "trained_on", "cannot_see"}`` and, where a whole source was left out, ``external_check``: how the model did there; ``calibration_ece`` where the card reports a held-out ECE; detectors add
  their threshold)
* ``files``: the other files written: ``overlays`` (a list of PNG names), ``report``, ``config``; for a DICOM
  input ``dicom_seg`` and ``dicom_sr`` (the reason in ``dicom_error`` when they could not be built)
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
from typing import Any

SCHEMA_VERSION = "1.2"


@dataclasses.dataclass
class Findings:
    """Findings for one image; ``to_dict()`` gives the ``findings.json`` content.

    Every field is the ``findings.json`` key of the same name (see the module docstring for their contents);
    a field that is None is written as null (the step did not run or does not apply to the modality).

    Attributes:
        input: the input's path, format, size (px), spacing (mm) and gate decision.
        modality: ``"cxr"`` or ``"ct"``.
        lungs: the lung mask file and its area (px, cm²) or volume (mL).
        infection: CT infection mask, labels and volume (mL) or area.
        classification: CXR class probabilities in [0, 1] (sum 1), scope and heatmaps.
        detections: CXR boxes ``[x1, y1, x2, y2]`` in original px with scores in [0, 1].
        nodules: CT nodules (world LPS mm, voxel indices, diameter mm, volume mm³, probability in [0, 1]).
        nodule_mask: file name of the nodule label volume (NIfTI, 1.. = nodule number).
        models: the models that ran (task, name, architecture, sha256, scope).
        files: other files written: ``{"overlays": [...], "report", "config"}``; for a DICOM input also
            ``dicom_seg`` and ``dicom_sr``, or ``dicom_error``.
        created: UTC time of creation, ISO 8601 to the second.
    """

    input: dict[str, Any]
    modality: str
    lungs: dict[str, Any] | None = None
    infection: dict[str, Any] | None = None
    classification: dict[str, Any] | None = None
    detections: list[dict[str, Any]] | None = None
    nodules: list[dict[str, Any]] | None = None
    nodule_mask: str | None = None
    models: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    created: str = dataclasses.field(
        default_factory=lambda: _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"))

    def to_dict(self) -> dict[str, Any]:
        """The ``findings.json`` content: ``schema_version``, ``pulmo_version``, then every field (deep-copied
        by ``dataclasses.asdict``)."""
        from pulmo.version import __version__

        d = {"schema_version": SCHEMA_VERSION, "pulmo_version": __version__}
        d.update(dataclasses.asdict(self))
        return d
