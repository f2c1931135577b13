"""DICOM Structured Report of pulmo's findings: a TID 1500 Measurement Report (PS3.16 TID 1500) in a
Comprehensive 3D SR (PS3.3 A.35.13).

Library choice: ``highdicom.sr`` implements the TID 1500 family (TID 1501 measurement groups, TID 1410
planar and TID 1411 volumetric ROI groups, TID 1419 measurements, TID 1001 observation context, TID 4019
algorithm identification) and checks each content item's value type and relationship, so the report's tree
is the template's and not a hand-made look-alike. Codes: :mod:`pulmo.io.dicom_codes`.

What the report holds (observer context: pulmo as the device observer, TID 1004):

* CT: the lungs (TID 1411 volumetric ROI referencing the SEG's lung segment and the source series, volume mL); the infection
  (volumetric ROI referencing its segment, volume mL and percent of lung; one ROI per class for a three-class
  model, with the totals in a TID 1501 group); per nodule a volumetric ROI referencing its own segment, with
  diameter (mm), volume (mm³) and probability. Tracking UIDs are the SEG's, so the same finding is tracked
  across both objects.
* CXR: the lung fields (TID 1410 planar ROI referencing the SEG frame and its source image, area cm² when the spacing is known);
  the classification (TID 1501 group on the image: the finding (its Finding, a SNOMED CT disorder), its
  probability, whether it is within the classifier's classes and the out-of-scope score; one group per class with its probability); each detection
  box as a planar ROI whose region is a closed POLYLINE SCOORD (the rectangle's 4 corners and the first again:
  SR has no RECTANGLE graphic type, PS3.3 C.18.6.1.2) in the source image's pixel coordinates (0.0\\0.0 = the
  top-left corner of the top-left pixel, PS3.3 C.18.6.1.1), with its label and score.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import highdicom as hd
import highdicom.sr as hsr
import numpy as np
import pydicom
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from pulmo.errors import InputError
from pulmo.io import dicom_codes as C
from pulmo.io.dicom_seg import SEG_SERIES_NUMBER, Algorithm, Segment, private_coding_schemes

#: Series Number of the SR series pulmo writes.
SR_SERIES_NUMBER = SEG_SERIES_NUMBER + 1
#: Device Observer UID of pulmo (TID 1004): the same for every report, so reports can be grouped by device.
DEVICE_OBSERVER_UID = generate_uid(entropy_srcs=["pulmo chest-imaging CAD"])


def _algorithm_id(algorithm: Algorithm | None) -> hsr.AlgorithmIdentification | None:
    if algorithm is None:
        return None
    params = [f"{k}={v}" for k, v in algorithm.parameters().items()]
    return hsr.AlgorithmIdentification(name=f"pulmo {algorithm.name}"[:64], version=algorithm.version,
                                       parameters=params or None)


def _measurement(name: CodedConcept, value: Any, unit: CodedConcept,
                 algorithm: Algorithm | None = None) -> hsr.Measurement | None:
    if value is None or not np.isfinite(float(value)):
        return None
    return hsr.Measurement(name=name, value=float(value), unit=unit, algorithm_id=_algorithm_id(algorithm))


def _kept(items: Sequence[Any]) -> list[Any] | None:
    kept = [i for i in items if i is not None]
    return kept or None


def _volumetric(seg: pydicom.Dataset, number: int, segment: Segment, finding_type: CodedConcept,
                measurements: Sequence[hsr.Measurement | None],
                qualitative: Sequence[hsr.QualitativeEvaluation] = ()) -> hsr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    return hsr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hsr.TrackingIdentifier(uid=segment.tracking_uid, identifier=segment.tracking_id),
        referenced_segment=hsr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=number,
            source_series=hsr.SourceSeriesForSegmentation(seg.ReferencedSeriesSequence[0].SeriesInstanceUID)),
        finding_type=finding_type, finding_category=segment.category,
        finding_sites=[hsr.FindingSite(C.LUNG)] if segment.role != "lungs" else None,
        algorithm_id=_algorithm_id(segment.algorithm), measurements=_kept(measurements),
        qualitative_evaluations=list(qualitative) or None)


def segment_frames(seg: pydicom.Dataset, segment_number: int) -> list[int]:
    """The frame numbers (1..) of a SEG that hold segment ``segment_number``, from each frame's Segment
    Identification (per-frame, or shared when the SEG has one segment; PS3.3 C.8.20.3.1)."""
    shared = seg.SharedFunctionalGroupsSequence[0].get("SegmentIdentificationSequence")
    frames = []
    for i, item in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        ident = item.get("SegmentIdentificationSequence") or shared
        if ident and int(ident[0].ReferencedSegmentNumber) == segment_number:
            frames.append(i)
    return frames


def _segmentation_frame(seg: pydicom.Dataset, segment_number: int,
                        source: pydicom.Dataset) -> hsr.ReferencedSegmentationFrame:
    """TID 1410 Referenced Segmentation Frame: the SEG frame(s) of ``segment_number`` and its source image.

    The IMAGE item references the frames only: PS3.3 Table 10-3 (Image SOP Instance Reference Macro) allows
    Referenced Segment Number only when Referenced Frame Number is absent (highdicom writes both)."""
    ref = hsr.ReferencedSegmentationFrame(
        sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID,
        frame_number=segment_frames(seg, segment_number), segment_number=segment_number,
        source_image=hsr.SourceImageForSegmentation(source.SOPClassUID, source.SOPInstanceUID))
    for item in ref:
        for sop in item.get("ReferencedSOPSequence", []):
            if "ReferencedFrameNumber" in sop and "ReferencedSegmentNumber" in sop:
                del sop.ReferencedSegmentNumber
    return ref


def _ct_groups(seg: pydicom.Dataset, segments: Sequence[Segment], findings: dict[str, Any]) -> list[Any]:
    groups: list[Any] = []
    numbered = list(enumerate(segments, start=1))
    lungs, infection = findings.get("lungs") or {}, findings.get("infection") or {}
    for k, s in numbered:
        if s.role == "lungs":
            groups.append(_volumetric(seg, k, s, C.LUNG, [_measurement(C.VOLUME, lungs.get("volume_ml"), C.MILLILITER)]))
    inf_segments = [(k, s) for k, s in numbered if s.role == "infection"]
    totals = [_measurement(C.VOLUME, infection.get("volume_ml"), C.MILLILITER),
              _measurement(C.AREA, infection.get("area_cm2"), C.SQUARE_CENTIMETER),
              _measurement(C.PERCENT_OF_LUNG, infection.get("percent_of_lung"), C.PERCENT)]
    if len(inf_segments) == 1 and inf_segments[0][1].index is None:
        k, s = inf_segments[0]
        groups.append(_volumetric(seg, k, s, s.property_type, totals))
    elif inf_segments:
        labels = [lb for lb in infection.get("labels", []) if lb != "background"]
        for k, s in inf_segments:
            name = labels[s.index - 1] if s.index and s.index <= len(labels) else None
            groups.append(_volumetric(seg, k, s, s.property_type,
                                      [_measurement(C.VOLUME, infection.get(f"{name}_ml"), C.MILLILITER)]))
        algorithm = inf_segments[0][1].algorithm
        groups.append(hsr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hsr.TrackingIdentifier(identifier="Infection (all classes)"), finding_type=C.LESION,
            algorithm_id=_algorithm_id(algorithm), measurements=_kept(totals)))
    nodules = findings.get("nodules") or []
    for k, s in numbered:
        if s.role != "nodule" or not s.index or s.index > len(nodules):
            continue
        n = nodules[s.index - 1]
        groups.append(_volumetric(seg, k, s, C.NODULE, [
            _measurement(C.DIAMETER, n.get("diameter_mm"), C.MILLIMETER),
            _measurement(C.VOLUME, n.get("volume_mm3"), C.CUBIC_MILLIMETER),
            _measurement(C.PROBABILITY, n.get("probability"), C.NO_UNITS)]))
    return groups


def _model(findings: dict[str, Any], task: str, version: str) -> Algorithm | None:
    entry = next((m for m in findings.get("models") or [] if m.get("task") == task), None)
    if entry is None:
        return None
    return Algorithm(name=str(entry.get("name")), version=version, sha256=entry.get("sha256"),
                     architecture=entry.get("architecture"), task=task)


def _cxr_groups(source: pydicom.Dataset, seg: pydicom.Dataset, segments: Sequence[Segment], findings: dict[str, Any],
                version: str) -> list[Any]:
    groups: list[Any] = []
    source_ref = hsr.SourceImageForRegion(source.SOPClassUID, source.SOPInstanceUID)
    lungs = findings.get("lungs") or {}
    for k, s in enumerate(segments, start=1):
        if s.role == "lungs":
            groups.append(hsr.PlanarROIMeasurementsAndQualitativeEvaluations(
                tracking_identifier=hsr.TrackingIdentifier(uid=s.tracking_uid, identifier=s.tracking_id),
                referenced_segment=_segmentation_frame(seg, k, source),
                finding_type=C.LUNG, finding_category=s.category, algorithm_id=_algorithm_id(s.algorithm),
                measurements=_kept([_measurement(C.AREA, lungs.get("area_cm2"), C.SQUARE_CENTIMETER)])))
    cls = findings.get("classification")
    if cls:
        algorithm = _model(findings, "cxr-classify", version)
        image = [hsr.SourceImageForMeasurementGroup.from_source_image(source)]
        predicted = str(cls.get("predicted"))
        qualitative = []  # the finding itself is the group's Finding (finding_type), TID 1501 row 4
        if cls.get("in_scope") is not None:
            qualitative.append(hsr.QualitativeEvaluation(C.IN_SCOPE, C.YES if cls["in_scope"] else C.NO))
        probabilities = cls.get("probabilities") or {}
        groups.append(hsr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hsr.TrackingIdentifier(identifier="Classification"),
            finding_type=C.finding_code(predicted, C.CLASSIFICATION_FINDINGS), algorithm_id=_algorithm_id(algorithm),
            qualitative_evaluations=qualitative or None, source_images=image,
            measurements=_kept([_measurement(C.PROBABILITY, probabilities.get(predicted), C.NO_UNITS),
                                _measurement(C.OUT_OF_SCOPE_SCORE, cls.get("out_of_scope_score"), C.NO_UNITS)])))
        for label, p in probabilities.items():
            groups.append(hsr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hsr.TrackingIdentifier(identifier=f"Classification: {label}"[:64]),
                finding_type=C.finding_code(label, C.CLASSIFICATION_FINDINGS), algorithm_id=_algorithm_id(algorithm),
                source_images=image, measurements=_kept([_measurement(C.PROBABILITY, p, C.NO_UNITS)])))
    detections = findings.get("detections") or []
    algorithm = _model(findings, "cxr-detect", version) if detections else None
    for i, d in enumerate(detections, start=1):
        x1, y1, x2, y2 = (float(v) for v in d["box_xyxy"])
        corners = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], dtype=np.float64)
        groups.append(hsr.PlanarROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hsr.TrackingIdentifier(uid=generate_uid(), identifier=f"Detection {i}: {d['label']}"[:64]),
            referenced_region=hsr.ImageRegion(graphic_type=hsr.GraphicTypeValues.POLYLINE, graphic_data=corners,
                                              source_image=source_ref),
            finding_type=C.finding_code(str(d["label"]), C.DETECTION_FINDINGS), finding_sites=[hsr.FindingSite(C.LUNG)],
            algorithm_id=_algorithm_id(algorithm),
            measurements=_kept([_measurement(C.DETECTION_SCORE, d.get("score"), C.NO_UNITS)])))
    return groups


def _describable(sources: Sequence[pydicom.Dataset]) -> bool:
    """True when highdicom can describe the sources in the Image Library (TID 1601 needs the pixel spacing of a
    projection image and its Patient Orientation, and the plane position and orientation of a cross-sectional one)."""
    first = sources[0]
    if "FrameOfReferenceUID" in first:
        return "ImagePositionPatient" in first and "PixelSpacing" in first
    return ("PixelSpacing" in first or "ImagerPixelSpacing" in first) and bool(first.get("PatientOrientation"))


def build_measurement_report(sources: Sequence[pydicom.Dataset], seg: pydicom.Dataset, segments: Sequence[Segment],
                             findings: dict[str, Any], software_version: str,
                             series_number: int = SR_SERIES_NUMBER) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 Measurement Report of one analysis, referencing its SEG (see the module docstring).

    Args:
        sources: the source image headers (as given to :func:`pulmo.io.dicom_seg.build_segmentation`).
        seg: the SEG of the same analysis (its segments are referenced by number).
        segments: the segments of ``seg``, in its order (numbers 1..).
        findings: the ``findings.json`` content (:mod:`pulmo.findings`): ``modality``, ``lungs``,
            ``infection``, ``nodules`` (CT) or ``lungs``, ``classification``, ``detections`` (CXR), ``models``.
        software_version: the pulmo version (device observer model name, algorithm versions).
        series_number: Series Number of the new series.

    Returns:
        The Comprehensive 3D SR dataset (new Series and SOP Instance UIDs, completion flag COMPLETE,
        verification UNVERIFIED, Content Qualification RESEARCH); its evidence lists the sources and the SEG.

    Raises:
        InputError: the findings hold a value highdicom refuses (the message quotes its reason).
    """
    device = hsr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hsr.DeviceObserverIdentifyingAttributes(
            uid=DEVICE_OBSERVER_UID, name="pulmo", manufacturer_name="pulmo", model_name=f"pulmo {software_version}"[:64]))
    try:
        if findings.get("modality") == "cxr":
            groups = _cxr_groups(sources[0], seg, segments, findings, software_version)
            procedure = C.CHEST_XRAY
        else:
            groups = _ct_groups(seg, segments, findings)
            procedure = C.CT_CHEST
        report = hsr.MeasurementReport(
            observation_context=hsr.ObservationContext(observer_device_context=device),
            procedure_reported=procedure, imaging_measurements=groups or None,
            referenced_images=list(sources) if _describable(sources) else None)
        return hd.sr.Comprehensive3DSR(
            evidence=[*sources, seg], content=report, series_instance_uid=generate_uid(), series_number=series_number,
            sop_instance_uid=generate_uid(), instance_number=1, manufacturer="pulmo", is_complete=True,
            is_final=False, is_verified=False, series_description="pulmo measurement report",
            content_qualification=hd.ContentQualificationValues.RESEARCH, coding_schemes=private_coding_schemes())
    except (ValueError, TypeError, AttributeError, KeyError) as exc:
        raise InputError(f"cannot build the DICOM SR measurement report ({type(exc).__name__}: "
                         f"{' '.join(str(exc).split())[:300]})") from None
