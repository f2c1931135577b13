"""``analyze_path`` returns data (``AnalyzeResult``); ``pulmo.cli`` turns it into the printed lines and the exit code.

The single-input line is checked against the formatter the pipeline had before (kept here as the reference), over
findings of every kind: a CT volume (whole or cut lungs), a CT slice, an X-ray with classes, boxes and nodules.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from pulmo.cli import _analyze_exit_code, _analyze_lines
from pulmo.pipeline import AnalyzeResult
from pulmo.pipeline.analyze import headline_values


def _old_summary_line(path: Path, findings: dict[str, Any], out_dir: Path, seconds: float) -> str:
    """The line ``pulmo.pipeline.analyze`` built itself before the formatting moved to the CLI."""
    lungs, infection = findings.get("lungs") or {}, findings.get("infection")
    if lungs.get("volume_ml") is not None:
        text = f"lungs {lungs['volume_ml']} mL"
        if (lungs.get("coverage") or {}).get("complete") is False:
            text += " (only partly in the scan: cut at the " + " and ".join(lungs["coverage"]["cut_at"]) + ")"
    elif lungs.get("area_cm2") is not None:
        text = f"lungs {lungs['area_cm2']} cm2"
    else:
        text = f"lungs {lungs.get('area_px', '?')} px"
    if infection:
        amount = (f"{infection['volume_ml']} mL" if "volume_ml" in infection else f"{infection['area_px']} px")
        text += f", infection {amount} ({infection.get('percent_of_lung')} % of lung)"
    if findings.get("classification"):
        c = findings["classification"]
        text += (", finding outside the classifier's classes" if c.get("in_scope") is False
                 else f", class {c.get('predicted')}")
    if findings.get("detections") is not None:
        text += f", {len(findings['detections'])} lesion box(es)"
    if findings.get("nodules") is not None:
        text += f", {len(findings['nodules'])} nodule(s)"
    return f"{path}: {findings['modality']}: {text} ({seconds:.2f} s) -> {out_dir / 'report.html'}"


FINDINGS = [
    {"modality": "ct", "lungs": {"volume_ml": 4123.5, "coverage": {"complete": True, "cut_at": []}},
     "infection": {"volume_ml": 12.3, "percent_of_lung": 0.3}, "nodules": [{}, {}]},
    {"modality": "ct", "lungs": {"volume_ml": 3000.0, "coverage": {"complete": False, "cut_at": ["apex", "base"]}},
     "infection": {"volume_ml": 0.0, "percent_of_lung": 0.0}, "nodules": []},
    {"modality": "ct", "lungs": {"area_px": 5000, "area_cm2": 120.5},
     "infection": {"area_px": 40, "percent_of_lung": 0.8}},
    {"modality": "cxr", "lungs": {"area_px": 91234, "area_cm2": None},
     "classification": {"predicted": "pneumonia_bacterial", "in_scope": True}, "detections": [{}]},
    {"modality": "cxr", "lungs": {"area_px": 91234},
     "classification": {"predicted": "other_finding", "in_scope": False}, "detections": []},
    {"modality": "cxr", "lungs": {}},
]


@pytest.mark.parametrize("findings", FINDINGS)
def test_single_line_is_the_line_of_before(findings, tmp_path):
    result = AnalyzeResult(input=str(tmp_path / "in.dcm"), out_dir=tmp_path / "out", kind="single",
                           rows=[{"input": str(tmp_path / "in.dcm"), "status": "ok"}],
                           headline=headline_values(findings), seconds=1.234)
    assert _analyze_lines(result) == [_old_summary_line(tmp_path / "in.dcm", findings, tmp_path / "out", 1.234)]
    assert _analyze_exit_code(result) == 0


def test_batch_lines_and_exit_codes(tmp_path):
    rows = [{"input": "a.png", "status": "ok", "resumed": "no"}, {"input": "b.png", "status": "failed",
                                                                  "error": "b.png: unreadable", "resumed": "no"},
            {"input": "c.txt", "status": "skipped", "error": "not a supported image format", "resumed": ""}]
    batch = AnalyzeResult(input="in", out_dir=tmp_path, kind="batch", rows=rows, n_inputs=2, n_inputs_all=2,
                          skipped={"not a supported image format": 1}, failures=["b.png: unreadable"],
                          summary_path=tmp_path / "summary.csv")
    assert _analyze_lines(batch) == [
        (f"analysed 1 of 2 inputs in in -> {tmp_path / 'summary.csv'} (1 other file skipped: not a supported image "
         "format)"), "  failed: b.png: unreadable"]
    assert _analyze_exit_code(batch) == 1
    # a shard that did not merge exits 0 whatever its inputs did; the one that merged a failure exits 1
    shard = AnalyzeResult(input="in", out_dir=tmp_path, kind="batch", rows=rows[:2], n_inputs=2, n_inputs_all=4,
                          resume=True, failures=["b.png: unreadable"], shard=(1, 2),
                          summary_path=tmp_path / "summary.shard-1-of-2.csv")
    assert _analyze_lines(shard) == [
        (f"analysed 1 of 2 inputs in in (shard 1 of 2: 4 inputs in all), 0 kept from an earlier run -> "
         f"{tmp_path / 'summary.shard-1-of-2.csv'}"), "  failed: b.png: unreadable",
        "summary.csv is merged by the last of the 2 shards to finish"]
    assert _analyze_exit_code(shard) == 0
    shard.merged_summary, shard.shards_merged, shard.merged_failed = tmp_path / "summary.csv", 2, 1
    assert _analyze_lines(shard)[-1] == f"merged the 2 shard summaries into {tmp_path / 'summary.csv'}"
    assert _analyze_exit_code(shard) == 1
    shard.merged_failed = 0
    assert _analyze_exit_code(shard) == 0
    idle = AnalyzeResult(input="x.png", out_dir=tmp_path, kind="single", rows=[], shard=(2, 3))
    assert _analyze_lines(idle) == ["x.png: one input, analysed by shard 0 of 3; nothing for shard 2"]
    assert _analyze_exit_code(idle) == 0


def test_dicomweb_lines(tmp_path):
    findings = FINDINGS[0]
    url = "http://pacs:8042/dicom-web/studies/1.2.3"
    web = {"url": url, "base_url": "http://pacs:8042/dicom-web", "study_uid": "1.2.3", "series_uid": "1.2.3.4",
           "modality": "CT", "n_instances": 120, "series_in_study": 1, "seconds_fetch": 2.5}
    result = AnalyzeResult(input=url, out_dir=tmp_path, kind="single", rows=[{"input": url, "status": "ok"}],
                           headline=headline_values(findings), seconds=3.0, dicomweb=web)
    fetched = f"{url}: fetched 120 CT instance(s) of series 1.2.3.4 in 2.50 s"
    assert _analyze_lines(result) == [fetched, _old_summary_line(Path(url), findings, tmp_path, 3.0)
                                      .replace(str(Path(url)), url)]
    web.update(stored=["1.9", "1.10"], seg_series_uid="1.5", sr_series_uid="1.6", seconds_store=0.25)
    assert _analyze_lines(result)[-1] == ("http://pacs:8042/dicom-web: stored DICOM SEG (series 1.5) and SR (series "
                                          "1.6) in study 1.2.3 in 0.25 s")


def test_the_result_holds_no_printable_lines_or_exit_code():
    fields = {f.name for f in dataclasses.fields(AnalyzeResult)}
    assert not fields & {"lines", "exit_code"}
