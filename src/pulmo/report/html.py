"""``report.html``: one self-contained page per analysed input (relative links to the PNGs beside it)."""

from __future__ import annotations

import html
import json
from typing import Any

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem;max-width:1150px;color:#1d2329}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:1.6rem}
.scope{font-size:.85rem;color:#5a4a00;background:#fff8dc;border-left:3px solid #d4a017;padding:.3rem .6rem;max-width:900px}
table{border-collapse:collapse}td,th{border:1px solid #ccd;padding:.3rem .6rem;text-align:left;vertical-align:top;overflow-wrap:anywhere}
th{background:#eef2f6}.imgs{display:flex;gap:1rem;flex-wrap:wrap}.imgs figure{margin:0}
.imgs img{max-width:520px;width:100%;border:1px solid #ccd}.note{color:#667;font-size:.85rem}
code{background:#f3f5f7;padding:0 .2rem}details pre{font-size:.8rem}
table.nodules td.num{text-align:right;font-variant-numeric:tabular-nums}table.nodules img{width:240px;display:block;border:1px solid #ccd}
"""

def report_title(findings: dict[str, Any]) -> str:
    """The report's title: modality, study date and series description when the input has them, then the input's
    file or folder name (never a UID alone), e.g. ``pulmo report: chest CT, 2000-01-01 (LIDC-IDRI-0001)``."""
    inp = findings.get("input") or {}
    what = {"ct": "chest CT", "cxr": "chest X-ray"}.get(str(findings.get("modality")), "image")
    parts = [p for p in (what, inp.get("study_date"), inp.get("series_description")) if p]
    name = str(inp.get("path") or "").rstrip("/").split("/")[-1]
    return f"pulmo report: {', '.join(parts)}" + (f" ({name})" if name else "")


_LABELS = {
    "area_px": "area (px)", "area_cm2": "area (cm²)", "volume_ml": "volume (mL)", "percent_of_lung": "% of lung",
    "n_components": "connected components", "n_slices_with_infection": "slices with infection",
    "key_slice": "key axial slice (index)", "spacing_mm": "spacing (mm)", "image_size": "image size (px)",
    "volume_size": "volume size (voxels)", "origin_mm": "origin (mm, LPS)",
}


def _fmt(value: Any) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list | tuple):
        return " x ".join(_fmt(v) for v in value)
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _finding_line(row: dict[str, Any]) -> str:
    """One detection as a line of text (boxes as bracketed lists)."""
    return "; ".join(f"{k.replace('_', ' ')} [{', '.join(f'{x:.1f}' for x in v)}]" if isinstance(v, list | tuple)
                     else f"{k.replace('_', ' ')} {_fmt(v)}" for k, v in row.items())


NODULE_COLUMNS = ("#", "centre x, y, z (mm, LPS)", "diameter (mm)", "volume (mm³)", "probability",
                  "slice index (axial z)", "key slice")


def _nodule_volume_mm3(row: dict[str, Any]) -> float | None:
    """``volume_mm3``; for findings written before it, ``volume_ml`` x 1000; None when neither is there."""
    if row.get("volume_mm3") is not None:
        return float(row["volume_mm3"])
    return float(row["volume_ml"]) * 1000.0 if row.get("volume_ml") is not None else None


def _nodule_table(nodules: list[dict[str, Any]]) -> str:
    """The nodule findings as an HTML table, one row per nodule (columns :data:`NODULE_COLUMNS`): number
    (1 = most probable, = the label in ``nodule_mask``), world centre (LPS mm, 1 decimal), diameter (mm,
    1 decimal), volume (mm³, whole number), probability (2 decimals, in [0, 1]), key axial slice index and
    the key-slice PNG (``key_slice_image``) as a thumbnail linked to the full-size picture."""
    if not nodules:
        return '<p class="note">No nodule above the model\'s probability threshold.</p>'
    head = "".join(f"<th>{html.escape(c)}</th>" for c in NODULE_COLUMNS)
    rows = []
    for i, n in enumerate(nodules):
        centre = n.get("center_xyz_mm") or n.get("center_mm")
        volume = _nodule_volume_mm3(n)
        image = n.get("key_slice_image")
        alt = f"nodule {i + 1}: key axial slice {n.get('slice_index', '?')} with its marker"
        thumb = (f'<a href="{html.escape(image)}"><img src="{html.escape(image)}" alt="{html.escape(alt)}" '
                 f'loading="lazy"></a>' if image else "-")
        cells = [str(i + 1), ", ".join(f"{float(v):.1f}" for v in centre) if centre else "-",
                 f"{float(n['diameter_mm']):.1f}" if n.get("diameter_mm") is not None else "-",
                 f"{volume:.0f}" if volume is not None else "-",
                 f"{float(n['probability']):.2f}" if n.get("probability") is not None else "-",
                 str(n["slice_index"]) if n.get("slice_index") is not None else "-"]
        rows.append(f'<tr data-nodule="{i + 1}">' + "".join(f'<td class="num">{html.escape(c)}</td>' for c in cells)
                    + f"<td>{thumb}</td></tr>")
    return f'<table class="nodules"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _table(section: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(_LABELS.get(k, k.replace('_', ' ')))}</th><td>{html.escape(_fmt(v))}</td></tr>"
                   for k, v in section.items())
    return f"<table>{rows}</table>"


def _scope_note(scope: dict[str, Any] | None) -> str:
    """One paragraph under a finding: the classes its model knows, its training data, what it cannot see, and how
    it did on a source it never saw (``external_check``, when the card has one)."""
    if not scope:
        return ""
    return (f'<p class="scope"><b>Model scope.</b> Knows only: {html.escape(", ".join(scope.get("classes", [])))}. '
            f'Trained on: {html.escape(str(scope.get("trained_on", "?")))}. '
            f'Cannot see: {html.escape(str(scope.get("cannot_see", "?")))}.'
            + (f' <b>On a source it never saw:</b> {html.escape(str(scope["external_check"]))}.'
               if scope.get("external_check") else "") + '</p>')


def render_report(findings: dict[str, Any], images: dict[str, str]) -> str:
    """HTML text of the report for ``findings`` (the findings.json dict) and ``images`` {caption: file}."""
    inp = findings["input"]
    sections = [("Input", {"modality": findings.get("modality"), **{k: v for k, v in inp.items() if k != "gate"}})]
    gate = inp.get("gate")
    if gate:
        rows = {"decision": f"{gate.get('decision')} as {str(gate.get('as', '')).replace('_', ' ')}"}
        rows.update({f"gate p({k})": v for k, v in (gate.get("scores") or {}).items()})
        rows.update({f"check: {c['check'].replace('_', ' ')}": "passed" for c in gate.get("checks", [])})
        if gate.get("dicom"):
            rows["DICOM tags"] = ", ".join(f"{k} {v}" for k, v in gate["dicom"].items() if v)
        sections.append(("Input gate (is this an input pulmo may judge?)", rows))
    for key, title in (("lungs", "Lungs"), ("infection", "Infection (CT)")):
        if findings.get(key):
            section = dict(findings[key])
            coverage = section.pop("coverage", None)
            if coverage:  # CT: does the scan hold the whole lung field?
                section["coverage"] = ("the whole lung field is in the scan" if coverage.get("complete")
                                       else f"PARTIAL: {coverage.get('note')}")
            sections.append((title, section))
    if findings.get("classification"):
        c = findings["classification"]
        ece = c.get("calibration_ece")
        outside = c.get("in_scope") is False
        rows = {"finding": c.get("statement") or c.get("predicted")}
        if outside:
            rows["out-of-scope score"] = (f"{c.get('out_of_scope_score')} (p(other finding); out of scope at >= "
                                          f"{c.get('out_of_scope_threshold')})")
        rows.update({f"p({k})": v for k, v in (c.get("probabilities") or {}).items()})
        rows["probabilities"] = ("temperature-scaled" + (f"; calibrated to a held-out ECE of {ece:.3f} (held-out "
                                                         "patients of the training sources)" if ece is not None
                                                         else "; calibration not measured"))
        rows["heatmap energy in lungs"] = c.get("heatmap_energy_in_lungs")
        rows["what the energy means"] = ("the share of the heatmap's weight that lies inside the lung mask: near 1 "
                                         "the model looked at the lungs; near the lungs' share of the image "
                                         "(about 0.3) it looked anywhere")
        sections.append(("Classification" + (": outside the classifier's classes" if outside else ""), rows))
    if findings.get("detections") is not None:
        rows = findings["detections"]
        sections.append(("Lesion detections (CXR)", {f"{i + 1}": _finding_line(r) for i, r in enumerate(rows)}
                                                    or {"none": "no finding above the threshold"}))
    if findings.get("nodules") is not None:
        sections.append(("Nodules (CT)", _nodule_table(findings["nodules"])))  # HTML, not a key/value section
    scopes = {m.get("task"): m.get("scope") for m in findings.get("models", []) if m.get("scope")}
    section_task = {"Lungs": "lung-seg", "Classification": "cxr-classify",
                    "Classification: outside the classifier's classes": "cxr-classify", "Lesion detections (CXR)": "cxr-detect",
                    "Infection (CT)": "lesion-seg", "Nodules (CT)": "nodule"}
    body = "".join(f"<h2>{html.escape(t)}</h2>{s if isinstance(s, str) else _table(s)}"
                   f"{_scope_note(scopes.get(section_task.get(t, '')))}"
                   for t, s in sections)
    models = "".join(
        f"<tr><td>{html.escape(str(m.get('task')))}</td><td>{html.escape(str(m.get('name')))}</td>"
        f"<td>{html.escape(str(m.get('architecture')))}</td><td><code>{html.escape(str(m.get('sha256') or '-')[:16])}</code></td></tr>"
        for m in findings.get("models", []))
    figures = "".join(
        f'<figure><img src="{html.escape(f)}" alt="{html.escape(c)}"><figcaption>{html.escape(c)}</figcaption></figure>'
        for c, f in images.items())
    title = html.escape(report_title(findings))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{_STYLE}</style></head>
<body>
<h1>{title}</h1>
<p class="note">Generated by pulmo {html.escape(str(findings.get('pulmo_version')))} on {html.escape(str(findings.get('created')))}.
Research software: not a medical device; every finding needs review by a qualified reader.</p>
<div class="imgs">{figures}</div>
{body}
<h2>Models</h2><table><tr><th>task</th><th>weights / method</th><th>architecture</th><th>sha256</th></tr>{models}</table>
<h2>findings.json</h2><details><summary>show</summary><pre>{html.escape(json.dumps(findings, indent=2))}</pre></details>
</body></html>
"""
