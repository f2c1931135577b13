"""The CT report writer's nodule findings: one key-slice PNG per nodule with a numbered marker, an HTML table
with one row per nodule, and nodule volumes in mm³ in findings.json. A tiny generated volume with two fake
nodules (no model), and the real LIDC-IDRI-0001 example through ``pulmo analyze``."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pulmo.findings import Findings
from pulmo.io import Volume
from pulmo.report import write_ct_outputs
from pulmo.report.html import NODULE_COLUMNS, render_report
from pulmo.report.overlay import NODULE_MARKER_COLOUR, nodule_marker_radius_px
from tests.conftest import ROOT

EXAMPLE_CT = ROOT / "examples" / "ct" / "LIDC-IDRI-0001"
SPACING = (2.5, 0.75, 0.75)  # z, y, x mm


class _Tables(HTMLParser):
    """Collects every <table> of a page: its class, header cells, and per row its cells' text and <img> srcs."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[dict] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "table":
            self.tables.append({"class": a.get("class", ""), "head": [], "rows": []})
        elif not self.tables:
            return
        elif tag == "tr":
            self.tables[-1]["rows"].append({"cells": [], "imgs": [], "attrs": a})
        elif tag in ("td", "th"):
            self._cell = []
        elif tag == "img" and self.tables[-1]["rows"]:
            self.tables[-1]["rows"][-1]["imgs"].append(a.get("src"))

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None and self.tables:
            row = self.tables[-1]["rows"][-1]
            row["cells"].append(("th" if tag == "th" else "td", "".join(self._cell).strip()))
            self._cell = None


def _nodule_tables(page: str) -> list[dict]:
    parser = _Tables()
    parser.feed(page)
    return [t for t in parser.tables if "nodules" in t["class"].split()]


def _tiny_ct_with_two_nodules() -> tuple[Volume, Findings, dict[str, np.ndarray]]:
    """A 12 x 96 x 96 chest (two box lungs of air in soft tissue) with two solid spheres in the lungs:
    10 mm at (z 4, y 40, x 30) and 6 mm at (z 8, y 60, x 66); their findings as the nodule detector makes them."""
    shape = (12, 96, 96)
    hu = np.full(shape, -1000.0, np.float32)
    hu[:, 6:-6, 6:-6] = 40.0
    lungs = np.zeros(shape, bool)
    lungs[1:-1, 16:-16, 14:44] = lungs[1:-1, 16:-16, 52:82] = True
    hu[lungs] = -850.0
    vol = Volume(hu=hu, spacing=SPACING, origin=(-36.0, -36.0, -120.0), direction=np.eye(3),
                 source={"path": "tiny", "format": "generated"})
    zz, yy, xx = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    labels = np.zeros(shape, np.int16)
    nodules = []
    for number, (centre, diameter, p) in enumerate((((4, 40, 30), 10.0, 0.93), ((8, 60, 66), 6.0, 0.61)), 1):
        d2 = sum(((g - c) * s) ** 2 for g, c, s in zip((zz, yy, xx), centre, SPACING))
        ball = d2 <= (diameter / 2) ** 2
        hu[ball] = 30.0
        labels[ball] = number
        nodules.append({"center_xyz_mm": [round(float(v), 2) for v in vol.index_to_world(np.array([centre]))[0]],
                        "center_zyx_index": [float(c) for c in centre], "diameter_mm": diameter,
                        "volume_mm3": round(float(ball.sum()) * float(np.prod(SPACING)), 1), "probability": p,
                        "slice_index": centre[0]})
    findings = Findings(
        input={"path": "tiny", "format": "generated", "spacing_mm": list(SPACING)}, modality="ct",
        lungs={"mask": "lung_mask.nii.gz", "volume_ml": round(float(lungs.sum()) * np.prod(SPACING) / 1000, 1)},
        infection={"mask": "infection_mask.nii.gz", "labels": ["background", "infection"], "volume_ml": 0.0},
        nodules=nodules, nodule_mask="nodule_mask.nii.gz")
    return vol, findings, {"lungs": lungs, "infection": np.zeros(shape, np.uint8), "nodules": labels}


def _marker_ring_hits(png: Path, centre_yx: tuple[float, float], diameter_mm: float, shape_hw=(96, 96),
                      spacing_x: float = SPACING[2]) -> list[int]:
    """Marker-coloured pixels on the ring of the marker (radius +- 2 px) around ``centre_yx`` (px of the
    ``shape_hw`` slice grid of column spacing ``spacing_x`` mm), per quadrant (up-left, up-right, down-left,
    down-right)."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    sy, sx = rgb.shape[0] / shape_hw[0], rgb.shape[1] / shape_hw[1]
    cy, cx = (centre_yx[0] + 0.5) * sy, (centre_yx[1] + 0.5) * sx
    radius = nodule_marker_radius_px(diameter_mm, spacing_x) * sx
    yy, xx = np.mgrid[:rgb.shape[0], :rgb.shape[1]]
    dist = np.hypot(yy + 0.5 - cy, xx + 0.5 - cx)
    hit = (np.abs(rgb - np.array(NODULE_MARKER_COLOUR)).sum(-1) <= 30) & (np.abs(dist - radius) <= 2)
    up, left = yy < cy, xx < cx
    return [int((hit & q).sum()) for q in (up & left, up & ~left, ~up & left, ~up & ~left)]


def test_ct_report_has_a_nodule_table_and_a_marked_key_slice_per_nodule(tmp_path):
    vol, findings, masks = _tiny_ct_with_two_nodules()
    data = write_ct_outputs(vol, findings, masks, tmp_path)

    written = json.loads((tmp_path / "findings.json").read_text())
    assert written == json.loads(json.dumps(data))
    for row, expected in zip(written["nodules"], findings.nodules):
        assert "volume_ml" not in row and row["volume_mm3"] == pytest.approx(expected["volume_mm3"])
    sphere_mm3 = np.pi / 6 * np.array([10.0, 6.0]) ** 3  # the voxelised balls are within 25 % of the sphere
    np.testing.assert_allclose([n["volume_mm3"] for n in written["nodules"]], sphere_mm3, rtol=0.25)

    tables = _nodule_tables((tmp_path / "report.html").read_text(encoding="utf-8"))
    assert len(tables) == 1
    head, *rows = tables[0]["rows"]
    assert [text for _, text in head["cells"]] == list(NODULE_COLUMNS)
    assert len(rows) == len(written["nodules"]) == 2
    assert "#" in NODULE_COLUMNS[0] and "mm³" in NODULE_COLUMNS[3] and "slice" in NODULE_COLUMNS[5]
    for i, (row, n) in enumerate(zip(rows, written["nodules"])):
        cells = [text for _, text in row["cells"]]
        assert cells[:6] == [str(i + 1), ", ".join(f"{v:.1f}" for v in n["center_xyz_mm"]), f"{n['diameter_mm']:.1f}",
                             f"{n['volume_mm3']:.0f}", f"{n['probability']:.2f}", str(n["slice_index"])]
        name = n["key_slice_image"]
        assert name == f"nodule_{i + 1}_axial_{n['slice_index']:03d}.png" and row["imgs"] == [name]
        assert (tmp_path / name).is_file() and name in written["files"]["overlays"]

    # each PNG shows its nodule's marker all round its centre; the other nodule (on another slice) has none
    (first, second) = written["nodules"]
    for n, other in ((first, second), (second, first)):
        png = tmp_path / n["key_slice_image"]
        assert Image.open(png).size == (96, 96)
        assert min(_marker_ring_hits(png, n["center_zyx_index"][1:], n["diameter_mm"])) >= 3, n
        assert sum(_marker_ring_hits(png, other["center_zyx_index"][1:], other["diameter_mm"])) == 0


def test_nodule_table_reads_findings_written_with_volume_ml():
    """A findings.json of before ``volume_mm3`` (``volume_ml``, no key-slice image) still gets its table."""
    nodule = {"center_xyz_mm": [1.0, 2.0, 3.0], "diameter_mm": 8.0, "volume_ml": 0.268, "probability": 0.5,
              "slice_index": 7}
    page = render_report({"input": {"path": "old"}, "modality": "ct", "nodules": [nodule]}, {})
    (table,) = _nodule_tables(page)
    cells = [text for _, text in table["rows"][1]["cells"]]
    assert cells == ["1", "1.0, 2.0, 3.0", "8.0", "268", "0.50", "7", "-"]
    assert "No nodule above" in render_report({"input": {"path": "none"}, "modality": "ct", "nodules": []}, {})


def test_real_lidc_example_report_lists_its_nodule(tmp_path):
    """The real LIDC-IDRI-0001 example (26 slices, its 23 mm nodule) through ``pulmo analyze`` (~15 s)."""
    from pulmo.cli import main
    from pulmo.weights import WEIGHTS_DIR

    if not (EXAMPLE_CT.is_dir() and any(EXAMPLE_CT.iterdir())):
        pytest.skip(f"the example CT series is absent: {EXAMPLE_CT}")
    if not (WEIGHTS_DIR / "nodule.json").is_file():
        pytest.skip("no bundled nodule weights: the CT pipeline finds no nodules")
    out = tmp_path / "ct"
    assert main(["--no-progress", "analyze", str(EXAMPLE_CT), "--out", str(out)]) == 0
    f = json.loads((out / "findings.json").read_text())
    assert f["nodules"], "the bundled model finds the 23 mm nodule of LIDC-IDRI-0001"
    (table,) = _nodule_tables((out / "report.html").read_text(encoding="utf-8"))
    assert len(table["rows"]) - 1 == len(f["nodules"])
    big = max(f["nodules"], key=lambda n: n["diameter_mm"])
    assert 15 < big["diameter_mm"] < 30 and "volume_ml" not in big
    assert big["volume_mm3"] == pytest.approx(np.pi / 6 * big["diameter_mm"] ** 3, rel=0.01)  # equivalent sphere
    size = f["input"]["volume_size"]
    for n in f["nodules"]:
        hits = _marker_ring_hits(out / n["key_slice_image"], n["center_zyx_index"][1:], n["diameter_mm"],
                                 (size["rows"], size["columns"]), f["input"]["spacing_mm"][2])
        assert min(hits) >= 3, (n, hits)


def test_report_title_names_modality_date_and_series_never_a_uid_alone():
    from pulmo.report.html import report_title

    uid_folder = {"modality": "ct", "input": {"path": "/data/1.3.6.1.4.1.14519.5/", "study_date": "2001-02-03",
                                             "series_description": "CHEST 1.25mm"}}
    assert report_title(uid_folder) == "pulmo report: chest CT, 2001-02-03, CHEST 1.25mm (1.3.6.1.4.1.14519.5)"
    assert report_title({"modality": "cxr", "input": {"path": "x/a.png"}}) == "pulmo report: chest X-ray (a.png)"
    assert report_title({}) == "pulmo report: image"
