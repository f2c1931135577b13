"""LIDC-IDRI XML reads, reader masks, clustering, LUNA16 reference and consensus masks (pulmo.datasets.lidc)."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pulmo.datasets.lidc import (
    KIND_NODULE,
    KIND_NON_NODULE,
    KIND_SMALL_NODULE,
    UNKNOWN_DIAMETER_MM,
    NoduleMark,
    PointMark,
    cluster_marks,
    consensus_mask,
    find_lidc_xml,
    load_lidc_scan,
    luna16_excluded,
    luna16_reference,
    parse_lidc_xml,
    paste_mask,
    reader_marks,
)
from pulmo.errors import InputError
from pulmo.io import Volume
from tests.conftest import LIDC_SERIES, data_path

SERIES_UID = LIDC_SERIES[-1]


# ------------------------------------------------------------------------------- a tiny generated read


def _square(lo: int, hi: int) -> list[tuple[int, int]]:
    """The 8-connected outline of the square [lo, hi]^2 as LIDC draws it: (x, y) pixels, in order."""
    top = [(x, lo) for x in range(lo, hi + 1)]
    right = [(hi, y) for y in range(lo + 1, hi + 1)]
    bottom = [(x, hi) for x in range(hi - 1, lo - 1, -1)]
    left = [(lo, y) for y in range(hi - 1, lo, -1)]
    return top + right + bottom + left


def _roi(z: float, points, inclusion: bool = True, sop: str = "") -> str:
    edges = "".join(f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>" for x, y in points)
    return (f"<roi><imageZposition>{z}</imageZposition><imageSOP_UID>{sop}</imageSOP_UID>"
            f"<inclusion>{'TRUE' if inclusion else 'FALSE'}</inclusion>{edges}</roi>")


def _nodule(nodule_id: str, rois: str, malignancy: int | None = 4) -> str:
    chars = "" if malignancy is None else (
        f"<characteristics><subtlety>5</subtlety><malignancy>{malignancy}</malignancy></characteristics>")
    return f"<unblindedReadNodule><noduleID>{nodule_id}</noduleID>{chars}{rois}</unblindedReadNodule>"


def _session(body: str) -> str:
    return (f"<readingSession><annotationVersion>3.12</annotationVersion>"
            f"<servicingRadiologistID>r</servicingRadiologistID>{body}</readingSession>")


def _write_read(path: Path, sessions: list[str], root: str = "LidcReadMessage") -> Path:
    path.write_text(
        f'<?xml version="1.0" encoding="UTF-8"?><{root} xmlns="http://www.nih.gov"><ResponseHeader>'
        f"<SeriesInstanceUid>1.2.3</SeriesInstanceUid><StudyInstanceUID>1.2</StudyInstanceUID></ResponseHeader>"
        + "".join(sessions) + f"</{root}>")
    return path


def _tiny_volume() -> Volume:
    """5 slices of 16 x 16 px, 1 mm pixels, 2 mm slices; slice k is at z = -100 + 2 k mm."""
    return Volume(hu=np.zeros((5, 16, 16), np.float32), spacing=(2.0, 1.0, 1.0), origin=(-8.0, -8.0, -100.0))


@pytest.fixture
def tiny_read(tmp_path: Path) -> Path:
    """Reader 0: nodule A (square 1..9 on z -98; the same square with a hole 4..6 on z -96), a < 3 mm nodule
    at (x 12, y 3, z -94) and a non-nodule at (x 2, y 13, z -92). Reader 1: nodule B = the z -98 square.
    Reader 2: nodule C, a square 11..14 on z -100, far from A."""
    r0 = (_nodule("A", _roi(-98.0, _square(1, 9)) + _roi(-96.0, _square(1, 9)) + _roi(-96.0, _square(4, 6), False))
          + _nodule("small", _roi(-94.0, [(12, 3)]), malignancy=None)
          + "<nonNodule><nonNoduleID>nn</nonNoduleID><imageZposition>-92.0</imageZposition>"
            "<imageSOP_UID>x</imageSOP_UID><locus><xCoord>2</xCoord><yCoord>13</yCoord></locus></nonNodule>")
    r1 = _nodule("B", _roi(-98.0, _square(1, 9)), malignancy=5)
    r2 = _nodule("C", _roi(-100.0, _square(11, 14)), malignancy=2)
    return _write_read(tmp_path / "069.xml", [_session(r0), _session(r1), _session(r2)])


def test_parse_generated_read(tiny_read: Path):
    read = parse_lidc_xml(tiny_read)
    assert read.series_uid == "1.2.3" and read.study_uid == "1.2" and len(read.sessions) == 3
    assert [n.nodule_id for n in read.nodules] == ["A", "B", "C"]
    assert [n.kind for n in read.sessions[0].nodules] == [KIND_NODULE, KIND_SMALL_NODULE]
    a = read.nodules[0]
    assert [r.inclusion for r in a.rois] == [True, True, False]
    assert a.characteristics == {"subtlety": 5, "malignancy": 4}
    assert a.rois[0].points_xy.shape == (32, 2) and a.rois[0].z_position == -98.0
    assert read.non_nodules[0].point_xy == (2, 13) and read.non_nodules[0].z_position == -92.0
    assert find_lidc_xml(tiny_read.parent, "1.2.3") == tiny_read


def test_generated_read_masks_holes_and_contour_convention(tiny_read: Path):
    volume = _tiny_volume()
    nodules, small, non_nodules = reader_marks(parse_lidc_xml(tiny_read), volume)
    a = nodules[0]
    # outline pixels are not nodule: the 1..9 square leaves its 7 x 7 inside (2..8); the hole 4..6 (3 x 3,
    # outline included) is cut on the second slice: 49 + 40 voxels
    assert a.offset == (1, 1, 1) and a.mask.shape == (2, 9, 9)
    assert a.mask[0].sum() == 49 and a.mask[1].sum() == 40
    assert not a.mask[1, 4, 4] and a.mask[1, 2, 2]  # the hole (y 5, x 5) and an inside pixel (y 3, x 3)
    assert a.volume_mm3 == pytest.approx(89 * 2.0)
    assert a.diameter_mm == pytest.approx(2 * np.sqrt(49 / np.pi))
    full = a.full_mask(volume.shape)
    assert full.sum() == 89 and full[1, 5, 5] and not full[2, 5, 5] and not full[1, 1, 1]
    # centre of mass: x, y symmetric about 5; z weighted 49 : 40 between slices 1 and 2
    np.testing.assert_allclose(a.centre_index, [1 + 40 / 89, 5, 5])
    np.testing.assert_allclose(a.centre_world, [-3.0, -3.0, -100 + 2 * (1 + 40 / 89)])
    np.testing.assert_allclose(a.bbox_centre_world, [-3.0, -3.0, -97.0])
    with_contour, _, _ = reader_marks(parse_lidc_xml(tiny_read), volume, include_contour=True)
    assert with_contour[0].mask[0].sum() == 81 and with_contour[0].mask[1].sum() == 81 - 9
    # point marks: index (z, y, x) and world (x, y, z)
    assert small[0].index == (3, 3, 12) and small[0].kind == KIND_SMALL_NODULE
    np.testing.assert_allclose(small[0].world, [4.0, -5.0, -94.0])
    assert non_nodules[0].index == (4, 13, 2)
    np.testing.assert_allclose(non_nodules[0].world, [-6.0, 5.0, -92.0])


def test_generated_read_clusters_reference_and_consensus(tiny_read: Path):
    volume = _tiny_volume()
    nodules, _, _ = reader_marks(parse_lidc_xml(tiny_read), volume)
    clusters = cluster_marks(nodules)
    assert [c.readers for c in clusters] == [[0, 1], [2]]
    assert clusters[0].characteristic("malignancy") == [4, 5]
    assert luna16_reference(clusters, "1.2.3") == []  # 2 readers < 3
    rows = luna16_reference(clusters, "1.2.3", min_readers=2)
    assert len(rows) == 1 and rows[0]["n_readers"] == 2 and rows[0]["seriesuid"] == "1.2.3"
    # consensus of 2 readers at 50 %: a voxel of either reader (union); at 100 %: both (intersection)
    union, offset = clusters[0].consensus_mask(0.5)
    assert offset == (1, 1, 1) and union.sum() == 49 + 40
    both, _ = consensus_mask(clusters[0].marks, level=1.0)
    assert both.sum() == 49 and both[0].sum() == 49
    assert paste_mask(both, offset, volume.shape).sum() == 49
    with pytest.raises(ValueError, match="level"):
        consensus_mask(clusters[0].marks, level=0)


def _mark(reader: int, centre, diameter: float = 10.0) -> NoduleMark:
    c = np.asarray(centre, dtype=float)
    return NoduleMark(reader, f"r{reader}", {}, np.ones((1, 1, 1), bool), (0, 0, 0), c, c, c, diameter, 1.0, 1)


def test_clustering_keeps_one_mark_per_reader():
    marks = [_mark(0, (0, 0, 0)), _mark(1, (1, 0, 0)), _mark(2, (0, 1, 0)), _mark(3, (30, 0, 0)),
             _mark(0, (3, 0, 0))]  # reader 0's second nodule, 3 mm from its first: not in the same cluster
    clusters = cluster_marks(marks)
    assert [c.readers for c in clusters] == [[0, 1, 2], [0], [3]]
    np.testing.assert_allclose(clusters[0].centre_world, [1 / 3, 1 / 3, 0])
    rows = luna16_reference(clusters, "s")
    assert len(rows) == 1 and rows[0]["diameter_mm"] == 10.0
    # the linking distance grows with size: 8 mm apart links 20 mm nodules, not 10 mm ones
    assert len(cluster_marks([_mark(0, (0, 0, 0), 20), _mark(1, (8, 0, 0), 20)])) == 1
    assert len(cluster_marks([_mark(0, (0, 0, 0), 10), _mark(1, (8, 0, 0), 10)])) == 2


def test_luna16_excluded_lists_reader_marks_of_reference_nodules_and_points_with_diameter_minus_1():
    """LUNA16 ``annotations_excluded.csv`` rules (noduleCADEvaluationLUNA16.py ignores hits on them): each
    reader's own mark of a reference nodule, clusters of < 3 readers, and < 3 mm / non-nodule points with
    diameter -1 (the script takes 10 mm)."""
    from pulmo.metrics.froc import froc

    # reader 3 outlined the nodule off-centre: its mark at (3.5, 0, 0), 6 mm; the cluster: centre
    # (0.875, 0, 0), diameter 7.5 mm
    marks = [_mark(0, (0, 0, 0), 8), _mark(1, (0, 0, 0), 8), _mark(2, (0, 0, 0), 8), _mark(3, (3.5, 0, 0), 6),
             _mark(0, (60, 0, 0), 5)]
    clusters = cluster_marks(marks)
    assert [c.n_readers for c in clusters] == [4, 1]
    points = [PointMark(1, "s1", KIND_SMALL_NODULE, (0, 0, 0), np.array([-40.0, 0, 0])),
              PointMark(2, "n1", KIND_NON_NODULE, (0, 0, 0), np.array([0.0, 40, 0]))]
    rows = luna16_excluded(clusters, points[:1], points[1:], "s")
    assert [(r["kind"], r["reader"]) for r in rows] == [
        ("reader_mark", 0), ("reader_mark", 1), ("reader_mark", 2), ("reader_mark", 3),
        ("nodule_lt_readers", None), (KIND_SMALL_NODULE, 1), (KIND_NON_NODULE, 2)]
    assert [r["diameter_mm"] for r in rows] == [8, 8, 8, 6, 5, UNKNOWN_DIAMETER_MM, UNKNOWN_DIAMETER_MM]
    assert rows[3]["coordX"] == 3.5 and all(r["seriesuid"] == "s" for r in rows)

    ref = luna16_reference(clusters, "s")
    refs = {"s": (np.array([[r["coordX"], r["coordY"], r["coordZ"]] for r in ref]), np.array([r["diameter_mm"] for r in ref]))}
    new = {"s": (np.array([[r["coordX"], r["coordY"], r["coordZ"]] for r in rows]), np.array([r["diameter_mm"] for r in rows]))}
    # the former pulmo list: clusters of < 3 readers and the points with a 3 mm diameter (1.5 mm radius)
    old = {"s": (np.array([[60.0, 0, 0], [-40, 0, 0], [0, 40, 0]]), np.array([5.0, 3.0, 3.0]))}
    # c1 TP; c2 (5.5, 0, 0): outside the reference sphere (4.625 mm from its centre, radius 3.75) and the
    # 8 mm marks, 2 mm from reader 3's mark (radius 3); c3 (-37, 0, 0) 3 mm from the < 3 mm point; c4 (0, 43, 0) 3 mm from the
    # non-nodule point: all three are ignored under the LUNA16 rules, false positives under the former ones
    cands = {"s": (np.array([[1.0, 0, 0], [5.5, 0, 0], [-37, 0, 0], [0, 43, 0]]), np.array([0.9, 0.8, 0.7, 0.6]))}
    luna = froc(cands, refs, excluded=new, n_bootstrap=0)
    former = froc(cands, refs, excluded=old, n_bootstrap=0)
    assert (luna.n_detected, luna.n_false_positives, luna.n_ignored) == (1, 0, 3)
    assert (former.n_detected, former.n_false_positives, former.n_ignored) == (1, 3, 0)


def test_bad_xml_files_raise_input_error(tmp_path: Path, tiny_read: Path):
    bad = tmp_path / "bad.xml"
    bad.write_text("<LidcReadMessage><readingSession>")
    with pytest.raises(InputError, match="bad.xml: not a well-formed XML"):
        parse_lidc_xml(bad)
    cxr = _write_read(tmp_path / "cxr.xml", [], root="IdriReadMessage")
    with pytest.raises(InputError, match="cxr.xml: XML root is <IdriReadMessage>"):
        parse_lidc_xml(cxr)
    with pytest.raises(InputError, match="no such LIDC XML"):
        parse_lidc_xml(tmp_path / "missing.xml")
    z_off = _write_read(tmp_path / "zoff.xml", [_session(_nodule("A", _roi(-50.0, _square(1, 4))))])
    with pytest.raises(InputError, match=r"zoff.xml: reader 0 nodule 'A' roi: imageZposition -50.00 mm matches no"):
        reader_marks(parse_lidc_xml(z_off), _tiny_volume())
    text = _write_read(tmp_path / "text.xml", [_session(_nodule("A", _roi(-98.0, [("a", 1)])))])
    with pytest.raises(InputError, match="text.xml: reader 0 nodule 'A' xCoord is 'a'"):
        parse_lidc_xml(text)
    with pytest.raises(InputError, match="no LIDC XML read file"):
        find_lidc_xml(tiny_read.parent, series_uid="9.9")


# ---------------------------------------------------------------------------- the real LIDC-IDRI-0001


@pytest.fixture(scope="module")
def scan():
    return load_lidc_scan(data_path(*LIDC_SERIES))


def _csv(name: str) -> list[dict[str, str]]:
    with open(data_path("ct", "LIDC-IDRI", name), newline="") as fh:
        return [r for r in csv.DictReader(fh) if r["seriesuid"] == SERIES_UID]


def test_lidc_0001_counts_match_readme_and_csv(scan):
    # README: 1 nodule >= 3 mm marked by 4/4 readers, 9 < 3 mm marks, 13 non-nodule marks
    assert len(scan.read.sessions) == 4 and scan.seriesuid == SERIES_UID
    assert (len(scan.nodules), len(scan.small_nodules), len(scan.non_nodules)) == (4, 9, 13)
    assert [c.n_readers for c in scan.clusters] == [4]
    ours = Counter((m.reader, k) for k, marks in (("nodule_ge3mm", scan.nodules), ("nodule_lt3mm", scan.small_nodules),
                                                  ("non_nodule", scan.non_nodules)) for m in marks)
    theirs = Counter((int(r["reader"]), r["kind"]) for r in _csv("lidc_xml_reader_marks.csv"))
    assert ours == theirs


def test_lidc_0001_reader_marks_match_csv_world_coordinates(scan):
    """Every CSV mark (world mm, LPS) is found at the same place: points exactly, nodules by their outline
    bounding-box centre (the CSV's convention), with the same number of outlines and the same ratings."""
    by_key = {(m.reader, m.nodule_id): m for m in scan.nodules}
    by_key.update({(m.reader, m.mark_id): m for m in scan.small_nodules + scan.non_nodules})
    rows = _csv("lidc_xml_reader_marks.csv")
    for row in rows:
        mark = by_key[(int(row["reader"]), row["nodule_id"])]
        expected = [float(row["coordX"]), float(row["coordY"]), float(row["coordZ"])]
        if row["kind"] == "nodule_ge3mm":
            np.testing.assert_allclose(mark.bbox_centre_world, expected, atol=0.006)
            assert mark.n_rois == int(row["n_roi"])
            for name in ("malignancy", "texture", "calcification", "subtlety"):
                assert mark.characteristics[name] == int(row[name])
            # area-equivalent diameter of the largest axial outline: the CSV counts the outline itself
            # in, we leave it out (LIDC convention), so ours is a little smaller
            assert 0 < float(row["max_axial_area_eqdiam_mm"]) - mark.diameter_mm < 1.5
            # the mask centre of mass is inside the outline's bounding box, near its centre
            assert np.linalg.norm(mark.centre_world - mark.bbox_centre_world) < 3.0
        else:
            assert mark.kind == row["kind"]
            np.testing.assert_allclose(mark.world, expected, atol=0.006)
    assert len(rows) == len(by_key)


def test_lidc_0001_luna16_reference_agrees_with_luna16_and_consensus_csv(scan):
    luna = next(r for r in _csv("luna16_annotations_subset.csv"))
    luna_centre = np.array([float(luna[c]) for c in ("coordX", "coordY", "coordZ")])
    consensus = _csv("lidc_xml_consensus_ge3mm.csv")
    assert len(consensus) == 1
    row = consensus[0]
    csv_centre = np.array([float(row[c]) for c in ("coordX", "coordY", "coordZ")])

    reference = scan.luna16_reference()
    assert len(reference) == 1
    ref = reference[0]
    assert ref["seriesuid"] == SERIES_UID and ref["n_readers"] == int(row["n_readers"]) == 4
    centre = np.array([ref["coordX"], ref["coordY"], ref["coordZ"]])
    # mass centre vs LUNA16 annotations.csv: measured 0.21 mm
    assert np.linalg.norm(centre - luna_centre) < 1.5
    # diameter vs LUNA16 (23.35 mm; ours 23.85) and vs the CSV's mean area-equivalent diameter (24.75)
    assert abs(ref["diameter_mm"] - float(luna["diameter_mm"])) < 2.0
    assert abs(ref["diameter_mm"] - float(row["mean_eqdiam_mm"])) < 2.0
    # the consensus CSV centres are outline bounding-box centres: ours of that kind agree to 0.01 mm; the
    # mass centre is 1.68 mm away (1.0 / 1.4 / 0.2 mm per axis), as the CSV is from LUNA16 (1.76 mm)
    cluster = scan.clusters[0]
    assert np.linalg.norm(cluster.bbox_centre_world - csv_centre) < 0.05
    assert np.all(np.abs(centre - csv_centre) < 1.5)
    assert sorted(cluster.characteristic("malignancy")) == sorted(int(v) for v in row["malignancy_scores"].split(";"))


def test_lidc_0001_luna16_excluded(scan):
    """4 reader marks of the 4-reader nodule (own diameters), 9 < 3 mm and 13 non-nodule points at -1."""
    rows = scan.luna16_excluded()
    assert Counter(r["kind"] for r in rows) == {"reader_mark": 4, KIND_SMALL_NODULE: 9, KIND_NON_NODULE: 13}
    marks = [r for r in rows if r["kind"] == "reader_mark"]
    assert sorted(r["reader"] for r in marks) == [0, 1, 2, 3]
    assert np.mean([r["diameter_mm"] for r in marks]) == pytest.approx(scan.luna16_reference()[0]["diameter_mm"])
    assert all(r["diameter_mm"] == -1.0 for r in rows if r["kind"] != "reader_mark")


def test_lidc_0001_consensus_mask_is_the_dense_nodule(scan):
    vol = scan.volume
    cluster = scan.clusters[0]
    mask = paste_mask(*cluster.consensus_mask(), vol.shape)
    union = np.zeros(vol.shape, bool)
    inter = np.ones(vol.shape, bool)
    for m in cluster.marks:
        full = m.full_mask(vol.shape)
        union |= full
        inter &= full
    assert inter.sum() < mask.sum() < union.sum() and np.all(mask <= union) and np.all(inter <= mask)
    assert np.array_equal(scan.consensus_volume(), mask)
    # the consensus is soft tissue: mean HU well above lung parenchyma (about -850 HU)
    assert vol.hu[mask].mean() > -300
    luna = next(r for r in _csv("luna16_annotations_subset.csv"))
    luna_centre = np.array([float(luna[c]) for c in ("coordX", "coordY", "coordZ")])
    dense = mask & (vol.hu > -400)
    dense_centre = vol.index_to_world(np.argwhere(dense).mean(axis=0)[None])[0]
    assert np.linalg.norm(dense_centre - luna_centre) < 1.5  # measured 0.44 mm


def test_lidc_0001_slices_by_z_match_slices_by_sop_uid(scan):
    """Without SOP UIDs (a volume from .mhd), rois are matched by imageZposition to the same slices."""
    vol = scan.volume
    bare = Volume(hu=vol.hu, spacing=vol.spacing, origin=vol.origin, direction=vol.direction, source={})
    nodules, small, non_nodules = reader_marks(scan.read, bare)
    for a, b in zip(nodules, scan.nodules, strict=True):
        assert a.offset == b.offset and np.array_equal(a.mask, b.mask)
    assert [m.index for m in small + non_nodules] == [m.index for m in scan.small_nodules + scan.non_nodules]
