"""LUNA16 layout: CSV parsers, subset*/<seriesuid>.mhd scans, world <-> voxel (pulmo.datasets.luna16)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from pulmo.datasets import luna16
from pulmo.errors import InputError
from pulmo.io import Volume, read_image
from tests.conftest import LIDC_SERIES, data_path

LIDC_UID = LIDC_SERIES[-1]


def test_parse_real_annotations_subset():
    rows = luna16.read_annotations(data_path("ct", "LIDC-IDRI", "luna16_annotations_subset.csv"))
    assert len(rows) == 4
    assert {r.seriesuid for r in rows} == {LIDC_UID, "1.3.6.1.4.1.14519.5.2.1.6279.6001.170706757615202213033480003264"}
    row = next(r for r in rows if r.seriesuid == LIDC_UID)
    assert row.centre == pytest.approx((56.20840547, 86.34341278, -115.8675792))
    assert row.diameter_mm == pytest.approx(23.35064438)
    grouped = luna16.annotations_by_series(rows, seriesuids=["empty"])
    centres, diameters = grouped["1.3.6.1.4.1.14519.5.2.1.6279.6001.170706757615202213033480003264"]
    assert centres.shape == (3, 3) and diameters.tolist() == pytest.approx([21.45372882, 8.785832848, 12.82311988])
    assert grouped["empty"][0].shape == (0, 3)


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_candidates_and_submissions(tmp_path: Path):
    cands = luna16.read_candidates(_write(tmp_path / "candidates.csv",
                                          "seriesuid,coordX,coordY,coordZ,class\n1.2,-56.1,-67.9,-311.9,0\n"
                                          "1.2,53.2,-84.9,-248.0,1\n1.3,1,2,3,0\n"))
    assert [c.label for c in cands] == [0, 1, 0] and cands[0].probability is None
    assert cands[1].centre == (53.2, -84.9, -248.0)
    sub = luna16.read_candidates(_write(tmp_path / "sub.csv",
                                        "seriesuid,coordX,coordY,coordZ,probability\n1.2,0,0,0,0.25\n1.2,1,1,1,0.75\n"))
    grouped = luna16.candidates_by_series(sub)
    assert grouped["1.2"][0].shape == (2, 3) and grouped["1.2"][1].tolist() == [0.25, 0.75]
    assert luna16.candidates_by_series(cands)["1.2"][1].tolist() == [0.0, 1.0]


def test_csv_errors_name_the_file_and_line(tmp_path: Path):
    with pytest.raises(InputError, match=r"no_cols.csv: columns \['diameter_mm'\] missing"):
        luna16.read_annotations(_write(tmp_path / "no_cols.csv", "seriesuid,coordX,coordY,coordZ\n1,2,3,4\n"))
    with pytest.raises(InputError, match="bad.csv: line 3: coordY is 'abc'; expected a number"):
        luna16.read_annotations(_write(tmp_path / "bad.csv", "seriesuid,coordX,coordY,coordZ,diameter_mm\n"
                                                             "1.2,1,2,3,4\n1.2,1,abc,3,4\n"))
    with pytest.raises(InputError, match="no_score.csv: neither a 'class' nor a 'probability'"):
        luna16.read_candidates(_write(tmp_path / "no_score.csv", "seriesuid,coordX,coordY,coordZ\n1,2,3,4\n"))
    with pytest.raises(InputError, match="cls.csv: line 2: class is '2'"):
        luna16.read_candidates(_write(tmp_path / "cls.csv", "seriesuid,coordX,coordY,coordZ,class\n1,2,3,4,2\n"))
    with pytest.raises(InputError, match="no such CSV"):
        luna16.read_annotations(tmp_path / "missing.csv")


def _write_mhd(root: Path, uid: str, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> tuple[Path, sitk.Image]:
    """A 4 x 5 x 6 (z, y, x) int16 scan with spacing (x 0.7, y 0.8, z 2.5) mm and an off-centre origin;
    the voxel (z 2, y 3, x 4) is the only bright one."""
    arr = np.full((4, 5, 6), -1000, np.int16)
    arr[2, 3, 4] = 40
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing((0.7, 0.8, 2.5))
    img.SetOrigin((-100.5, 50.25, -300.0))
    img.SetDirection(direction)
    folder = root / "subset3"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{uid}.mhd"
    sitk.WriteImage(img, str(path))
    return path, img


def test_mhd_scan_and_world_voxel_round_trip(tmp_path: Path):
    path, img = _write_mhd(tmp_path, "1.2.840.1")
    assert path.with_suffix(".raw").is_file() or path.with_suffix(".zraw").is_file()
    assert luna16.find_scans(tmp_path) == {"1.2.840.1": path}
    vol = luna16.read_scan(tmp_path, "1.2.840.1")
    assert isinstance(vol, Volume) and vol.shape == (4, 5, 6)
    assert vol.spacing == pytest.approx((2.5, 0.8, 0.7)) and vol.origin == pytest.approx((-100.5, 50.25, -300.0))
    world = luna16.voxel_to_world(vol, [[2, 3, 4]])[0]
    np.testing.assert_allclose(world, [-100.5 + 4 * 0.7, 50.25 + 3 * 0.8, -300.0 + 2 * 2.5])
    np.testing.assert_allclose(world, img.TransformIndexToPhysicalPoint((4, 3, 2)))
    index = np.round(luna16.world_to_voxel(vol, world)[0]).astype(int)
    assert vol.hu[tuple(index)] == 40
    rng = np.random.default_rng(0)
    points = rng.uniform([-110, 40, -310], [-90, 60, -290], size=(50, 3))
    np.testing.assert_allclose(luna16.voxel_to_world(vol, luna16.world_to_voxel(vol, points)), points, atol=1e-9)


def test_mhd_scan_with_flipped_direction_matches_simpleitk(tmp_path: Path):
    """Some scans are stored with flipped axes: the conversions follow the direction like SimpleITK."""
    _, img = _write_mhd(tmp_path, "1.2.840.2", direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    vol = luna16.read_scan(tmp_path, "1.2.840.2")
    for ijk in [(0, 0, 0), (4, 3, 2), (5, 4, 3)]:
        expected = img.TransformIndexToPhysicalPoint(ijk)
        np.testing.assert_allclose(luna16.voxel_to_world(vol, [ijk[::-1]])[0], expected, atol=1e-9)
        np.testing.assert_allclose(luna16.world_to_voxel(vol, expected)[0], ijk[::-1], atol=1e-9)
    bright = luna16.voxel_to_world(vol, [[2, 3, 4]])
    assert vol.hu[tuple(np.round(luna16.world_to_voxel(vol, bright)[0]).astype(int))] == 40


def test_layout_errors(tmp_path: Path):
    with pytest.raises(InputError, match="no subset"):
        luna16.find_scans(tmp_path)
    _write_mhd(tmp_path, "1.2.840.1")
    with pytest.raises(InputError, match="scan 9.9.mhd not found"):
        luna16.read_scan(tmp_path, "9.9")
    (tmp_path / "subset3" / "1.2.840.1.raw").unlink()
    with pytest.raises(InputError, match="1.2.840.1.mhd"):
        luna16.read_scan(tmp_path, "1.2.840.1")


def test_lidc_series_world_voxel_against_its_csvs():
    """The LIDC-IDRI-0001 DICOM series (the scan LUNA16 converted to .mhd) against the shared CSVs: every
    reader point mark (world mm) lands on an integer pixel of its slice, and the LUNA16 nodule centre maps
    to a voxel within 1.5 mm of the centre of the dense nodule around it."""
    vol = read_image(data_path(*LIDC_SERIES))
    with open(data_path("ct", "LIDC-IDRI", "lidc_xml_reader_marks.csv"), newline="") as fh:
        points = [r for r in csv.DictReader(fh) if r["kind"] != "nodule_ge3mm"]
    world = np.array([[float(r[c]) for c in ("coordX", "coordY", "coordZ")] for r in points])
    index = luna16.world_to_voxel(vol, world)
    # CSV coordinates are rounded to 0.01 mm: within 0.02 of a whole voxel (0.70 mm pixels, 2.5 mm slices)
    assert np.abs(index - np.round(index)).max() < 0.02
    assert np.all((index >= 0) & (index <= np.asarray(vol.shape) - 1))
    np.testing.assert_allclose(luna16.voxel_to_world(vol, np.round(index)), world, atol=0.006)

    ann = next(a for a in luna16.read_annotations(data_path("ct", "LIDC-IDRI", "luna16_annotations_subset.csv"))
               if a.seriesuid == vol.source["series_uid"])
    centre = np.asarray(ann.centre)
    idx = luna16.world_to_voxel(vol, centre)[0]
    np.testing.assert_allclose(luna16.voxel_to_world(vol, idx)[0], centre, atol=1e-9)
    # the dense (> -400 HU) voxels of the nodule sphere around the LUNA16 centre
    zz, yy, xx = np.ogrid[: vol.shape[0], : vol.shape[1], : vol.shape[2]]
    sz, sy, sx = vol.spacing
    ball = ((zz - idx[0]) * sz) ** 2 + ((yy - idx[1]) * sy) ** 2 + ((xx - idx[2]) * sx) ** 2 < (ann.diameter_mm / 2) ** 2
    dense = ball & (vol.hu > -400)
    assert dense.sum() > 1000
    dense_centre = luna16.voxel_to_world(vol, np.argwhere(dense).mean(axis=0))[0]
    assert np.linalg.norm(dense_centre - centre) < 1.5  # measured 0.47 mm
