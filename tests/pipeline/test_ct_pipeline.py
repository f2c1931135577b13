"""``pulmo analyze`` on CT: a DICOM series, an NRRD volume and a single slice, through ``cli.main``."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from pulmo.cli import main
from pulmo.io import read_image, read_labels
from tests.conftest import LIDC_SERIES, ROOT, data_path
from tests.dicom_helpers import write_dicom

EXAMPLE_CT = ROOT / "examples" / "ct" / "LIDC-IDRI-0001"


def test_analyze_dicom_series_example(tmp_path, capsys):
    out = tmp_path / "ct"
    assert main(["--no-progress", "analyze", str(EXAMPLE_CT), "--out", str(out)]) == 0
    f = json.loads((out / "findings.json").read_text())
    assert f["modality"] == "ct" and f["input"]["volume_size"]["slices"] == 26
    assert f["input"]["spacing_mm"] == pytest.approx([2.5, 0.703125, 0.703125])
    assert 300 < f["lungs"]["volume_ml"] < 3000  # a 65-mm slab of both lungs
    coverage = f["lungs"]["coverage"]  # ... and it says so: the lungs fill both end slices of the excerpt
    assert coverage["complete"] is False and coverage["cut_at"] == ["first slice", "last slice"]
    assert min(coverage["end_slice_area_cm2"]) > 100 and "only partly in the scan" in coverage["note"]
    inf = f["infection"]
    assert inf["volume_ml"] >= 0 and 0 <= inf["percent_of_lung"] <= 100
    lesion = next(m for m in f["models"] if m["task"] == "lesion-seg")
    assert "COVID-19" in lesion["scope"]["trained_on"] and lesion["scope"]["cannot_see"]
    report = (out / "report.html").read_text()
    assert "Model scope." in report and "other diseases" in report  # the infection model says it knows COVID only
    assert f["input"]["study_date"] == "2000-01-01" and f["input"]["series_description"] is None  # LIDC: no description
    assert "<h1>pulmo report: chest CT, 2000-01-01 (LIDC-IDRI-0001)</h1>" in report  # never the series UID alone
    assert "PARTIAL: the lungs are only partly in the scan" in report
    vol = read_image(EXAMPLE_CT)
    for name in ("lung_mask.nii.gz", "infection_mask.nii.gz"):
        mask = read_labels(out / name)
        assert mask.shape == vol.shape
        np.testing.assert_allclose(mask.spacing, vol.spacing, rtol=1e-5)
        np.testing.assert_allclose(mask.origin, vol.origin, atol=1e-3)
        np.testing.assert_allclose(mask.direction, vol.direction, atol=1e-6)
    lungs = read_labels(out / "lung_mask.nii.gz").labels
    infection = read_labels(out / "infection_mask.nii.gz").labels
    assert not (infection[lungs == 0] > 0).any()  # infection only inside the lungs
    assert abs(lungs.sum() * np.prod(vol.spacing) / 1000 - f["lungs"]["volume_ml"]) < 1
    assert (out / "coronal.png").is_file() and "axial" in (out / "report.html").read_text()
    assert "only partly in the scan: cut at the first slice and last slice" in capsys.readouterr().out


def test_analyze_nrrd_volume(tmp_path):
    out = tmp_path / "nrrd"
    assert main(["--no-progress", "analyze", str(data_path("ct", "pyradiomics_lung", "lung1_image.nrrd")),
                 "--out", str(out)]) == 0
    f = json.loads((out / "findings.json").read_text())
    assert f["input"]["format"] == "NrrdImageIO" and f["lungs"]["volume_ml"] > 1000
    # the scan starts below the apex (92 cm² of lung in its first slice) and ends at the base
    assert f["lungs"]["coverage"]["cut_at"] == ["first slice"]
    assert read_labels(out / "infection_mask.nii.gz").shape == (48, 512, 512)
    # no infection in this scan: the HU post-processing takes the model's 31 mL (base, dome ring) to <= 5 mL
    inf = f["infection"]
    assert inf["volume_ml"] <= 5.0 and inf["postprocessing"]["model_volume_in_lungs_ml"] > 20
    assert inf["postprocessing"]["removed_ml"]["lung_border"] > 0 and "COVID-SemiSeg" in inf["scope"]


def test_analyze_single_windowed_ct_slice(tmp_path):
    image = data_path("ct", "COVID-SemiSeg", "TrainingSet", "LungInfection-Train", "Doctor-label", "Imgs", "10.jpg")
    out = tmp_path / "slice"
    assert main(["--no-progress", "analyze", str(image), "--modality", "ct", "--out", str(out)]) == 0
    f = json.loads((out / "findings.json").read_text())
    assert f["modality"] == "ct" and f["lungs"] is None and f["infection"]["area_px"] > 0
    assert "postprocessing" not in f["infection"]  # the HU rules never run on 8-bit slices
    assert (out / "infection_mask.png").is_file()


def test_single_dicom_ct_slice_gets_lungs_and_infection_figures(tmp_path):
    """One LIDC slice as a file: a 2D lung mask (the one-slice closing used to empty it) and real figures."""
    files = sorted(data_path(*LIDC_SERIES).glob("*.dcm"))
    (tmp_path / "in").mkdir()
    one = tmp_path / "in" / "slice.dcm"
    shutil.copy(files[70], one)
    out = tmp_path / "out"
    assert main(["--no-progress", "analyze", str(one), "--out", str(out)]) == 0
    f = json.loads((out / "findings.json").read_text())
    assert f["modality"] == "ct" and f["input"]["gate"]["as"] == "ct_slice"
    assert f["lungs"]["area_px"] > 20_000 and f["infection"]["percent_of_lung"] is not None


def test_radiograph_dicom_refused_as_ct(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    dcm = write_dicom(tmp_path / "in" / "dx.dcm", np.full((64, 64), 100, np.uint16), modality="DX")
    assert main(["--no-progress", "analyze", str(dcm), "--modality", "ct", "--out", str(tmp_path / "o")]) == 3
    assert "radiograph" in capsys.readouterr().err
