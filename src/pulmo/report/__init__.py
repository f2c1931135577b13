"""Outputs of an analysis: findings.json, masks, overlays and report.html."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from pulmo.io import Image2D, write_mask_png
from pulmo.pipeline.findings import Findings
from pulmo.report.html import render_report
from pulmo.report.overlay import grey_rgb, mask_overlay

__all__ = ["grey_rgb", "mask_overlay", "render_report", "write_cxr_outputs"]


def write_cxr_outputs(image: Image2D, findings: Findings, masks: dict[str, np.ndarray],
                      out_dir: str | Path) -> dict[str, Any]:
    """Write ``lung_mask.png`` (original size, 0/255), ``overlay.png``, ``report.html`` and
    ``findings.json`` into ``out_dir``. Returns the findings dict as written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_mask_png(masks["lungs"], out / "lung_mask.png")
    mask_overlay(image.pixels, masks["lungs"]).save(out / "overlay.png")
    findings.files = {"overlay": "overlay.png", "report": "report.html", "config": "config.yaml"}
    data = findings.to_dict()
    (out / "report.html").write_text(render_report(data, {"lung mask overlay": "overlay.png"}), encoding="utf-8")
    (out / "findings.json").write_text(json.dumps(data, indent=2) + "\n")
    return data
