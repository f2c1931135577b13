"""DICOM SEG and TID 1500 SR written by ``pulmo analyze`` for DICOM inputs: the real LIDC-IDRI-0001 CT series and
two real chest X-rays made into DICOM (a CR from a Shenzhen TB image with lesion boxes, a DX with the pixel
spacing of its ChestX-ray14 entry).

Checked: geometry round trip (the SEG read back with highdicom and, frame by frame, with SimpleITK lands on the
voxels of the NIfTI / PNG masks pulmo writes), segment codes and algorithm identification against the bundled
model cards, the SR's references to the SEG and its values against findings.json, ``dciodvfy`` (dicom3tools)
with an explicit list of accepted warnings, new UIDs at every run, no private tags of the source.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image

hd = pytest.importorskip("highdicom", reason="DICOM SEG / SR need highdicom (pip install -e .)")

from pulmo import __version__, cli
from pulmo.errors import InputError
from pulmo.io import Image2D, read_image
from pulmo.pipeline.dicom_results import segments_of, write_dicom_results
from tests.conftest import LIDC_SERIES, ROOT, data_path
from tests.io.cxr_dicom import write_cxr_dicom

WEIGHTS = ROOT / "src" / "pulmo" / "weights"
CR_PNG = ("cxr", "montgomery_shenzhen", "images", "CHNCXR_0606_1.png")  # TB-positive: the detector finds boxes
DX_PNG = ("cxr", "ChestX-ray14_bbox_sample", "images", "00004296_000.png")

#: dciodvfy warnings accepted in pulmo's objects, each with its reason; any other warning, and every error, fails.
ACCEPTED_WARNINGS = {
    r"Missing attribute or value that would be needed to build DICOMDIR - Study (Date|Time|ID)":
        "copied from a source whose Type 2 Study Date / Time / ID are empty (LIDC is de-identified): 'unknown'",
    r"Unrecognized defined term <99PULMO> for value 1 of attribute <Coding Scheme Designator>":
        "pulmo's private coding scheme (PS3.16 8.2), declared in the Coding Scheme Identification Sequence",
}


def _analyze(source: Path, out: Path) -> dict:
    assert cli.main(["--no-progress", "analyze", str(source), "--out", str(out)]) == 0
    return json.loads((out / "findings.json").read_text())


@pytest.fixture(scope="module")
def ct_run(tmp_path_factory) -> tuple[Path, Path, dict]:
    """(series folder, output folder, findings) of one ``pulmo analyze`` of the LIDC series."""
    series = data_path(*LIDC_SERIES)
    out = tmp_path_factory.mktemp("ct") / "out"
    return series, out, _analyze(series, out)


def _dx_spacing(png: Path) -> tuple[float, float]:
    """(row, column) mm of a ChestX-ray14 PNG (1024 px) from its original size and spacing (Data_Entry_2017)."""
    with open(png.parents[1] / "Data_Entry_2017_v2020_subset.csv", newline="") as fh:
        row = next(r for r in csv.reader(fh) if r[0] == png.name)
    width, height, sx, sy = (float(v) for v in row[7:11])
    return sy * height / 1024, sx * width / 1024


@pytest.fixture(scope="module")
def cxr_runs(tmp_path_factory) -> dict[str, tuple[Path, Path, dict]]:
    """{"cr", "dx"}: (DICOM file, output folder, findings) of ``pulmo analyze`` of the two real X-rays as DICOM."""
    root = tmp_path_factory.mktemp("cxr")
    cr_png, dx_png = data_path(*CR_PNG), data_path(*DX_PNG)
    cr = write_cxr_dicom(cr_png, root / "in_cr" / "cr.dcm")
    dx = write_cxr_dicom(dx_png, root / "in_dx" / "dx.dcm", kind="DX", pixel_spacing=_dx_spacing(dx_png))
    return {k: (p, root / f"out_{k}", _analyze(p, root / f"out_{k}")) for k, p in (("cr", cr), ("dx", dx))}


def _card_sha256() -> dict[str, str]:
    return {json.loads(p.read_text())["name"]: json.loads(p.read_text())["sha256"] for p in WEIGHTS.glob("*.json")}


def _nifti_grid_indices(img: sitk.Image, world_xyz: np.ndarray) -> np.ndarray:
    """Voxel indices (z, y, x) of world LPS points in a SimpleITK image's grid."""
    direction = np.asarray(img.GetDirection()).reshape(3, 3) * np.asarray(img.GetSpacing())
    idx_xyz = np.linalg.solve(direction, (world_xyz - np.asarray(img.GetOrigin())).T).T
    return np.rint(idx_xyz[:, ::-1]).astype(int)


def _reference_masks(out: Path, findings: dict, seg: pydicom.Dataset) -> dict[int, np.ndarray]:
    """The NIfTI mask of each SEG segment number, in the NIfTI grid (z, y, x)."""
    lungs = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "lung_mask.nii.gz"))) > 0
    infection = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "infection_mask.nii.gz")))
    nodules = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "nodule_mask.nii.gz")))
    ref = {}
    for item in seg.SegmentSequence:
        label, k = str(item.SegmentLabel), int(item.SegmentNumber)
        if label == "Lungs":
            ref[k] = lungs
        elif label.startswith("Infection"):
            ref[k] = infection > 0
        else:
            ref[k] = nodules == int(label.split()[-1])
    assert len(ref) == 2 + len(findings["nodules"])
    return ref


def test_analyze_of_dicom_lists_seg_and_sr(ct_run, cxr_runs):
    for source, out, findings in [ct_run, *cxr_runs.values()]:
        assert findings["files"]["dicom_seg"] == "seg.dcm" and findings["files"]["dicom_sr"] == "sr.dcm", findings["files"]
        assert "dicom_error" not in findings["files"]
        first = pydicom.dcmread(next(iter(sorted(source.glob("*.dcm")))) if source.is_dir() else source,
                                stop_before_pixels=True)
        for name, modality in (("seg.dcm", "SEG"), ("sr.dcm", "SR")):
            ds = pydicom.dcmread(out / name)
            assert ds.Modality == modality and ds.ContentQualification == "RESEARCH"
            assert ds.StudyInstanceUID == first.StudyInstanceUID and ds.PatientID == first.PatientID
            assert ds.SeriesInstanceUID != first.SeriesInstanceUID
            private = [str(e.tag) for e in ds.iterall() if e.tag.is_private]
            assert not private, f"{name} carries private tags of the source: {private[:5]}"


def test_ct_seg_lands_on_the_nifti_voxels_with_highdicom(ct_run):
    """Every segment read back by highdicom, placed in world space by the SEG's own geometry and mapped into the
    NIfTI grid by SimpleITK, equals the NIfTI mask voxel for voxel."""
    _, out, findings = ct_run
    seg = hd.seg.segread(out / "seg.dcm")
    volume = seg.get_volume(combine_segments=False)
    grid = sitk.ReadImage(str(out / "lung_mask.nii.gz"))
    ref = _reference_masks(out, findings, seg)
    assert volume.array.shape[:3] == ref[1].shape
    for k, expected in ref.items():
        index = np.argwhere(volume.array[..., k - 1] > 0)  # (slice, row, column) of the SEG volume
        world = (np.c_[index, np.ones(len(index))] @ volume.affine.T)[:, :3]
        rebuilt = np.zeros(expected.shape, bool)
        zyx = _nifti_grid_indices(grid, world)
        assert (zyx >= 0).all() and (zyx < expected.shape).all()
        rebuilt[tuple(zyx.T)] = True
        assert expected.any(), f"segment {k} is empty in the NIfTI"
        assert np.array_equal(rebuilt, expected), f"segment {k}: {int((rebuilt != expected).sum())} voxels differ"


def test_ct_seg_frames_read_by_simpleitk_match_source_slices(ct_run):
    """SimpleITK (GDCM) decodes the SEG's bit-packed frames; each frame, at its Plane Position, references the
    source slice at that position and equals that slice of the NIfTI mask of its segment."""
    series, out, findings = ct_run
    frames = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "seg.dcm"))) > 0
    ds = pydicom.dcmread(out / "seg.dcm", stop_before_pixels=True)
    sources = {}
    for p in series.glob("*.dcm"):
        s = pydicom.dcmread(p, stop_before_pixels=True)
        sources[s.SOPInstanceUID] = [float(v) for v in s.ImagePositionPatient]
    grid = sitk.ReadImage(str(out / "lung_mask.nii.gz"))
    ref = _reference_masks(out, findings, ds)
    assert int(ds.NumberOfFrames) == frames.shape[0] == len(sources) * len(ref)  # omit_empty_frames=False
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        source_uid = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        assert np.allclose(sources[source_uid], position, atol=1e-3)
        z = _nifti_grid_indices(grid, np.asarray([position]))[0][0]
        k = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        assert np.array_equal(frames[i], ref[k][z]), f"frame {i + 1} (segment {k}, slice {z}) differs"


def test_cxr_seg_equals_the_png_lung_mask(cxr_runs):
    for source, out, findings in cxr_runs.values():
        seg = hd.seg.segread(out / "seg.dcm")
        src_uid = pydicom.dcmread(source, stop_before_pixels=True).SOPInstanceUID
        by_highdicom = seg.get_pixels_by_source_instance([src_uid], segment_numbers=[1])[0, ..., 0]
        by_simpleitk = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "seg.dcm")))[0]
        mask = np.asarray(Image.open(out / findings["lungs"]["mask"])) > 0
        assert mask.any() and np.array_equal(by_highdicom > 0, mask) and np.array_equal(by_simpleitk > 0, mask)
        assert seg.PatientOrientation == ["L", "F"]  # General Image (C.7.6.1): no frame of reference


def test_segments_codes_and_algorithm_identification(ct_run, cxr_runs):
    sha = _card_sha256()
    expected = {"Lungs": ("91723000", "39607008"), "Lung fields (visible)": ("91723000", "39607008"),
                "Infection (ground-glass opacity and consolidation)": ("49755003", "52988006")}
    for _, out, findings in [ct_run, *cxr_runs.values()]:
        ds = pydicom.dcmread(out / "seg.dcm", stop_before_pixels=True)
        models = {m["task"]: m for m in findings["models"]}
        for item in ds.SegmentSequence:
            category = item.SegmentedPropertyCategoryCodeSequence[0]
            kind = item.SegmentedPropertyTypeCodeSequence[0]
            assert category.CodingSchemeDesignator == kind.CodingSchemeDesignator == "SCT"
            want = expected.get(str(item.SegmentLabel), ("49755003", "27925004"))  # nodules
            assert (category.CodeValue, kind.CodeValue) == want, item.SegmentLabel
            algorithm = item.SegmentationAlgorithmIdentificationSequence[0]
            assert algorithm.AlgorithmVersion == __version__
            params = dict(p.split("=", 1) for p in str(algorithm.AlgorithmParameters).split(","))
            task = params["task"]
            assert algorithm.AlgorithmName == f"pulmo {models[task]['name']}"
            if models[task]["sha256"]:
                assert params["weights_sha256"] == sha[models[task]["name"]] == models[task]["sha256"]
                assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
            else:
                assert task == "ct-lungs" and "weights_sha256" not in params


def test_ct_sr_references_the_seg_and_holds_the_measurements(ct_run):
    series, out, findings = ct_run
    seg = pydicom.dcmread(out / "seg.dcm", stop_before_pixels=True)
    sr = hd.sr.srread(out / "sr.dcm")
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    tracking = {int(s.SegmentNumber): str(s.TrackingUID) for s in seg.SegmentSequence}
    groups = {g.tracking_identifier: g for g in sr.content.get_volumetric_roi_measurement_groups()}
    assert set(groups) == {"Lungs", "Infection", *(f"Nodule {k}" for k in range(1, len(findings["nodules"]) + 1))}
    for g in groups.values():
        ref = g.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert ref.source_series_for_segmentation.value == seg.ReferencedSeriesSequence[0].SeriesInstanceUID
        assert g.tracking_uid == tracking[ref.referenced_segment_numbers[0]]

    def values(name):
        return {m.name.meaning: (m.value, m.unit.value) for m in groups[name].get_measurements()}

    assert values("Lungs") == {"Volume": (pytest.approx(findings["lungs"]["volume_ml"]), "ml")}
    assert values("Infection") == {"Volume": (pytest.approx(findings["infection"]["volume_ml"]), "ml"),
                                   "Percent of lung volume": (pytest.approx(findings["infection"]["percent_of_lung"]), "%")}
    for k, n in enumerate(findings["nodules"], start=1):
        assert values(f"Nodule {k}") == {"Diameter": (pytest.approx(n["diameter_mm"]), "mm"),
                                         "Volume": (pytest.approx(n["volume_mm3"]), "mm3"),
                                         "Probability": (pytest.approx(n["probability"]), "1")}
        assert groups[f"Nodule {k}"].referenced_segment.referenced_segment_numbers == [k + 2]
    evidence = {s.SeriesInstanceUID: {i.ReferencedSOPInstanceUID for i in s.ReferencedSOPSequence}
                for st in sr.CurrentRequestedProcedureEvidenceSequence for s in st.ReferencedSeriesSequence}
    assert evidence[seg.SeriesInstanceUID] == {seg.SOPInstanceUID}
    assert len(evidence[findings["input"]["series_uid"]]) == len(list(series.glob("*.dcm")))
    device = sr.content.get_observer_contexts()[0]
    assert "pulmo" in str(device) and sr.CompletionFlag == "COMPLETE" and sr.VerificationFlag == "UNVERIFIED"


def test_cxr_sr_classification_and_boxes(cxr_runs):
    for source, out, findings in cxr_runs.values():
        src = pydicom.dcmread(source, stop_before_pixels=True)
        seg = pydicom.dcmread(out / "seg.dcm", stop_before_pixels=True)
        sr = hd.sr.srread(out / "sr.dcm")
        planar = sr.content.get_planar_roi_measurement_groups()
        lungs = [g for g in planar if g.tracking_identifier == "Lungs"]
        assert len(lungs) == 1
        frame = lungs[0].referenced_segmentation_frame
        assert frame[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID
        assert frame[1].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
        area = {m.name.meaning: m.value for m in lungs[0].get_measurements()}
        assert area == ({"Area": pytest.approx(findings["lungs"]["area_cm2"])} if findings["lungs"]["area_cm2"] else {})
        boxes = [g for g in planar if g.tracking_identifier.startswith("Detection")]
        assert len(boxes) == len(findings["detections"])
        for g, d in zip(boxes, findings["detections"]):
            x1, y1, x2, y2 = d["box_xyxy"]
            assert g.roi.graphic_type.value == "POLYLINE"
            assert np.allclose(np.reshape(g.roi.value, (-1, 2)),  # FL: float32 pixel coordinates
                               [[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]], atol=1e-3)
            selected_from = g.roi.ContentSequence[0]  # SELECTED FROM: the source image of the SCOORD
            assert selected_from.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
            assert [m.value for m in g.get_measurements()] == [pytest.approx(d["score"], abs=1e-6)]
        cls = findings["classification"]
        image_groups = {g.tracking_identifier: g for g in sr.content.get_image_measurement_groups()}
        summary = image_groups["Classification"]
        assert {m.name.meaning: m.value for m in summary.get_measurements()}["Probability"] == \
            pytest.approx(cls["probabilities"][cls["predicted"]])
        in_scope = {q.name.meaning: q.value.meaning for q in summary.get_qualitative_evaluations()}
        assert in_scope == {"Within the classifier's classes": "Yes" if cls["in_scope"] else "No"}
        for label, p in cls["probabilities"].items():
            assert image_groups[f"Classification: {label}"].get_measurements()[0].value == pytest.approx(p)
    assert cxr_runs["cr"][2]["detections"], "the TB-positive image should give at least one box (SCOORD path)"
    assert cxr_runs["dx"][2]["lungs"]["area_cm2"], "the DX carries a pixel spacing (area path)"


def _dciodvfy(path: Path) -> list[str]:
    exe = shutil.which("dciodvfy")
    if exe is None:
        pytest.skip("dciodvfy not installed (Debian: apt-get install -y dicom3tools)")
    run = subprocess.run([exe, str(path)], check=False, capture_output=True, text=True, timeout=120)
    return [ln.strip() for ln in (run.stdout + run.stderr).splitlines() if ln.strip()]


@pytest.mark.parametrize("obj", ["ct/seg.dcm", "ct/sr.dcm", "cr/seg.dcm", "cr/sr.dcm", "dx/seg.dcm", "dx/sr.dcm",
                                 "cr/source", "dx/source"])
def test_dciodvfy_finds_no_error(obj, ct_run, cxr_runs):
    run, name = obj.split("/")
    if name == "source":
        path = cxr_runs[run][0]
    else:
        path = (ct_run[1] if run == "ct" else cxr_runs[run][1]) / name
    lines = _dciodvfy(path)
    iod = {"seg.dcm": "Segmentation", "sr.dcm": "Comprehensive3DSR", "source": "CRImage" if run == "cr" else
           "DXImageForPresentation"}[name]
    assert iod in lines, f"dciodvfy did not recognise the IOD: {lines[:5]}"
    errors = [ln for ln in lines if ln.startswith("Error")]
    assert not errors, errors
    unexpected = [ln for ln in lines if ln.startswith("Warning")
                  and not any(re.fullmatch(f"Warning - {p}", ln) for p in ACCEPTED_WARNINGS)]
    assert not unexpected, unexpected


def test_new_uids_at_every_run(cxr_runs, tmp_path):
    source, out, findings = cxr_runs["cr"]
    image = read_image(source)
    masks = {"lungs": np.asarray(Image.open(out / "lung_mask.png")) > 0}
    uids = []
    for k in range(2):
        (tmp_path / str(k)).mkdir()
        write_dicom_results(image, findings, masks, tmp_path / str(k))
        seg = pydicom.dcmread(tmp_path / str(k) / "seg.dcm", stop_before_pixels=True)
        sr = pydicom.dcmread(tmp_path / str(k) / "sr.dcm")
        uids.append({seg.SOPInstanceUID, seg.SeriesInstanceUID, seg.SegmentSequence[0].TrackingUID, sr.SOPInstanceUID,
                     sr.SeriesInstanceUID})
    assert len(uids[0]) == 5 and not uids[0] & uids[1]


def _tiny_ct_series(folder: Path) -> Path:
    from pydicom.uid import generate_uid

    from tests.dicom_helpers import write_ct_series

    frame_of_reference = generate_uid()
    for p in write_ct_series(folder, n=5):
        ds = pydicom.dcmread(p)
        ds.FrameOfReferenceUID = frame_of_reference
        ds.save_as(p)
    return folder


def test_three_class_infection_gets_one_segment_per_class(tmp_path):
    """A ground-glass / consolidation model's labels become two segments (DCM ground-glass opacity, SCT lung
    consolidation) with their volumes in the SR; the totals sit in a TID 1501 group."""
    volume = read_image(_tiny_ct_series(tmp_path / "in"))
    lungs = np.zeros(volume.shape, bool)
    lungs[:, 2:14, 2:14] = True
    infection = np.zeros(volume.shape, np.uint8)
    infection[1:3, 4:8, 4:8], infection[2:4, 9:12, 9:12] = 1, 2
    nodules = np.zeros(volume.shape, np.int16)
    nodules[2, 5:7, 10:12] = 1
    findings = {"modality": "ct", "lungs": {"volume_ml": 1.2},
                "infection": {"labels": ["background", "ground_glass", "consolidation"], "volume_ml": 0.5,
                              "percent_of_lung": 4.2, "ground_glass_ml": 0.3, "consolidation_ml": 0.2},
                "nodules": [{"diameter_mm": 4.0, "volume_mm3": 30.0, "probability": 0.9}], "models": []}
    masks = {"lungs": lungs, "infection": infection, "nodules": nodules}
    segments = segments_of(findings, masks, __version__)
    assert [(s.label, s.property_type.value) for s in segments] == [
        ("Lungs", "39607008"), ("Infection: Ground-glass opacity", "112120"), ("Infection: Consolidation", "95436008"),
        ("Nodule 1", "27925004")]
    write_dicom_results(volume, findings, masks, tmp_path)
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert int(seg.NumberOfFrames) == 5 * 4
    sr = hd.sr.srread(tmp_path / "sr.dcm")
    volumes = {g.tracking_identifier: g.get_measurements()[0].value for g in
               sr.content.get_volumetric_roi_measurement_groups()}
    assert volumes == {"Lungs": 1.2, "Infection: Ground-glass opacity": 0.3, "Infection: Consolidation": 0.2,
                       "Nodule 1": 4.0}
    totals = sr.content.get_image_measurement_groups()[0]
    assert {m.name.meaning: m.value for m in totals.get_measurements()} == {"Volume": 0.5, "Percent of lung volume": 4.2}
    if shutil.which("dciodvfy"):
        for name in ("seg.dcm", "sr.dcm"):
            assert not [ln for ln in _dciodvfy(tmp_path / name) if ln.startswith("Error")]


def test_seg_needs_a_dicom_input_and_a_frame_of_reference(tmp_path):
    png = Image2D(np.zeros((8, 8), np.float32), source={"path": "x.png", "format": "PNG"})
    with pytest.raises(InputError, match="DICOM inputs only"):
        write_dicom_results(png, {"modality": "cxr"}, {"lungs": np.zeros((8, 8), bool)}, tmp_path)
    from tests.dicom_helpers import write_ct_series

    write_ct_series(tmp_path / "in", n=3)  # CT slices without a FrameOfReferenceUID: not a valid SEG source
    volume = read_image(tmp_path / "in")
    with pytest.raises(InputError, match="Frame Of Reference"):
        write_dicom_results(volume, {"modality": "ct"}, {"lungs": np.ones(volume.shape, bool)}, tmp_path)
