"""DICOM Segmentation (SEG) objects of pulmo's masks, referencing the source images (PS3.3 A.51, C.8.20).

Library choice: highdicom (``highdicom.seg.Segmentation``) builds the Segmentation IOD from the source
datasets: it copies the Patient, General Study and Frame of Reference modules of the source (and nothing
else of it, no private tags), derives the plane positions / orientation / pixel measures of every frame
from the source images (PS3.3 C.7.6.16 functional groups), writes the Derivation Image and Referenced Series
sequences, bit-packs BINARY frames and checks the attributes against the standard as it goes. Writing these
functional groups by hand with pydicom is where home-made SEG writers usually go wrong.

Conventions (the ones OHIF and 3D Slicer expect):

* One SEG holds every mask of one analysis; each mask is one segment (CT: lungs, infection or its classes,
  each nodule; CXR: lung fields). Segments may overlap (BINARY, one frame per source image and segment).
* Content Qualification ``RESEARCH`` (PS3.3 C.12.1): research software, not a medical device.
* ``omit_empty_frames=False``: every source image gets a frame for every segment, so viewers that index
  frames by source image place the masks correctly.
* Segmented property category and type are SNOMED CT (``SCT``) concepts (CID 7150 / 7151, see
  :mod:`pulmo.io.dicom_codes`); each segment names the algorithm (pulmo version, model name, weights
  sha256) in its Segment Algorithm Identification (PS3.3 C.8.20.2, ``AlgorithmIdentificationSequence``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from pulmo.errors import InputError
from pulmo.io.dicom_codes import PRIVATE_SCHEME, PRIVATE_SCHEME_NAME

#: Series Number of the SEG series pulmo writes (the SR series is one more).
SEG_SERIES_NUMBER = 9701
MANUFACTURER = "pulmo"

_FAMILIES = {"ai": codes.cid7162.ArtificialIntelligence,
             "morphological": codes.cid7162.MorphologicalOperations}


@dataclasses.dataclass
class Algorithm:
    """What produced a segment (PS3.3 C.8.20.2 Segment Algorithm Identification; TID 4019 in SR).

    Attributes:
        name: the model or method name (``lesion-seg``, ``hu-threshold-components``).
        version: the pulmo version that ran it.
        family: ``"ai"`` (a trained model: CID 7162 Artificial Intelligence) or ``"morphological"`` (a
            threshold / connected-components method: CID 7162 Morphological Operations).
        sha256: the weights' sha256 from the model card (``None`` for a method without weights).
        architecture: the network architecture (or the method's description).
        task: pulmo's task name.
    """

    name: str
    version: str
    family: str = "ai"
    sha256: str | None = None
    architecture: str | None = None
    task: str | None = None

    def parameters(self) -> dict[str, str]:
        """The Algorithm Parameters (key: value text, PS3.3 C.8.20.2): task, architecture, weights sha256."""
        out = {"task": self.task, "architecture": self.architecture, "weights_sha256": self.sha256}
        return {k: str(v) for k, v in out.items() if v}

    def identification(self) -> hd.AlgorithmIdentificationSequence:
        """The SEG ``AlgorithmIdentificationSequence`` item."""
        return hd.AlgorithmIdentificationSequence(
            name=f"pulmo {self.name}"[:64], family=_FAMILIES.get(self.family, _FAMILIES["ai"]), version=self.version,
            source="pulmo", parameters=self.parameters() or None)


@dataclasses.dataclass
class Segment:
    """One segment of a SEG.

    Attributes:
        label: Segment Label (LO, at most 64 characters), e.g. ``"Lungs"``, ``"Nodule 1"``.
        mask: bool array in the source grid: ``(Z, Y, X)`` for a series (Z = the sources in order), or
            ``(H, W)`` for one image.
        category: segmented property category (SCT, CID 7150).
        property_type: segmented property type (SCT, CID 7151).
        algorithm: what produced it.
        tracking_id: Tracking ID (the SR's tracking identifier of the same finding).
        tracking_uid: Tracking UID (new for each run).
        anatomic_region: the anatomic region the segment lies in (e.g. the lung for a nodule), or ``None``.
        role: what the segment is in pulmo's findings: ``"lungs"``, ``"infection"`` (all infection, or one class
            of it), ``"nodule"``; the SR links its measurements by it.
        index: the nodule number (1..) for a nodule, the label value for one class of infection, else ``None``.
    """

    label: str
    mask: np.ndarray
    category: CodedConcept
    property_type: CodedConcept
    algorithm: Algorithm
    tracking_id: str
    tracking_uid: str = dataclasses.field(default_factory=generate_uid)
    anatomic_region: CodedConcept | None = None
    role: str = ""
    index: int | None = None


#: Type 2 attributes of the Patient and General Study modules (PS3.3 C.7.1.1, C.7.2.1) that SEG and SR copy from
#: the source: a source without them (not conformant, but common) gets them empty, which the standard allows.
_PATIENT_STUDY_TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                        "ReferringPhysicianName", "StudyID", "AccessionNumber")


def private_coding_schemes() -> list:
    """The Coding Scheme Identification Sequence item of pulmo's private scheme (PS3.3 C.12.1.1.8)."""
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    return [CodingSchemeIdentificationItem(PRIVATE_SCHEME, name=PRIVATE_SCHEME_NAME, responsible_organization="pulmo")]


def read_source_datasets(paths: Sequence[str | Path]) -> list[pydicom.Dataset]:
    """Headers (no pixel data) of the source images, in the given order (the order of the mask's first axis).

    Raises:
        InputError: a file cannot be read as DICOM.
    """
    out = []
    for p in paths:
        try:
            ds = pydicom.dcmread(p, stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - pydicom raises many types on a bad file
            raise InputError(f"{p}: cannot re-read the DICOM source for SEG/SR ({type(exc).__name__}: {exc})") from None
        for keyword in _PATIENT_STUDY_TYPE2:  # absent Type 2 attributes are copied as empty (= unknown)
            if keyword not in ds:
                setattr(ds, keyword, "")
        out.append(ds)
    return out


def _frames(mask: np.ndarray, sources: Sequence[pydicom.Dataset], label: str) -> np.ndarray:
    arr = np.asarray(mask) > 0
    if arr.ndim == 2:
        arr = arr[None]
    rows, cols = int(sources[0].Rows), int(sources[0].Columns)
    if arr.shape != (len(sources), rows, cols):
        raise InputError(f"segment {label!r}: mask of shape {tuple(np.shape(mask))} does not fit the {len(sources)} "
                         f"source image(s) of {rows} x {cols} pixels; expected ({len(sources)}, {rows}, {cols})")
    return arr


def build_segmentation(sources: Sequence[pydicom.Dataset], segments: Sequence[Segment], software_version: str,
                       series_description: str = "pulmo segmentations", series_number: int = SEG_SERIES_NUMBER,
                       content_description: str | None = None) -> hd.seg.Segmentation:
    """A BINARY DICOM SEG of ``segments`` on ``sources`` (PS3.3 A.51 Segmentation IOD).

    Args:
        sources: the source image headers: the CT slices of the series in the order of the masks' first axis
            (sorted along the slice normal, as :func:`pulmo.io.dicom.read_dicom_series` does), or the one
            image of a chest X-ray / CT slice.
        segments: the segments, numbered 1.. in this order.
        software_version: the pulmo version (Software Versions, and each segment's algorithm version).
        series_description: Series Description of the new series.
        series_number: Series Number of the new series.
        content_description: Content Description (default: the segment labels).

    Returns:
        The SEG dataset (new Series and SOP Instance UIDs; ``save_as`` writes it). Every source image has one
        frame per segment (``omit_empty_frames=False``), so it holds ``len(sources) * len(segments)`` frames
        of ``Rows x Columns`` bits.

    Raises:
        InputError: no source or segment, a mask that does not fit the sources, or source headers highdicom
            cannot build a SEG from (the message names the attribute it reports).
    """
    if not sources:
        raise InputError("no source image for the DICOM SEG; expected the DICOM images that were analysed")
    if not segments:
        raise InputError("no segment for the DICOM SEG; expected at least one mask")
    private = any(c.scheme_designator == PRIVATE_SCHEME for s in segments for c in (s.category, s.property_type))
    stack = np.stack([_frames(s.mask, sources, s.label) for s in segments], axis=-1)  # (F, R, C, S)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=k, segment_label=s.label[:64], segmented_property_category=s.category,
            segmented_property_type=s.property_type, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=s.algorithm.identification(), tracking_uid=s.tracking_uid,
            tracking_id=s.tracking_id[:64], anatomic_regions=[s.anatomic_region] if s.anatomic_region else None)
        for k, s in enumerate(segments, start=1)]
    try:
        seg = hd.seg.Segmentation(
            source_images=list(sources), pixel_array=stack, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions, series_instance_uid=generate_uid(), series_number=series_number,
            sop_instance_uid=generate_uid(), instance_number=1, manufacturer=MANUFACTURER,
            manufacturer_model_name="pulmo", software_versions=software_version, device_serial_number="none",
            content_description=(content_description or ", ".join(s.label for s in segments))[:64],
            content_label="PULMO", omit_empty_frames=False, series_description=series_description[:64],
            content_qualification=hd.ContentQualificationValues.RESEARCH,
            coding_schemes=private_coding_schemes() if private else None)
    except (ValueError, AttributeError, TypeError, KeyError) as exc:
        raise InputError(f"cannot build a DICOM SEG on the source images ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:300]}); pulmo writes SEG for DICOM images with the "
                         "standard's image geometry attributes") from None
    if "FrameOfReferenceUID" not in sources[0]:  # a projection image: General Image's Patient Orientation (2C)
        seg.PatientOrientation = sources[0].get("PatientOrientation", "")
    return seg
