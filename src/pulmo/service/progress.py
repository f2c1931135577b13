"""Live progress of the service's jobs: the worker's listener that writes the analysis' stage and progress into
the job store, and the one-line key finding shown in the home page's job list.

The pipeline reports ``(stage, fraction)`` through :mod:`pulmo.pipeline.progress`; :class:`StoreProgress`
writes them to the job's row (``stage``, ``progress``), at most every ``min_interval_s`` seconds unless the
stage changes, so a long stage reporting often costs a few SQLite writes, not hundreds. ``GET /api/v1/jobs/{id}``
and ``GET /api/v1/jobs`` return both.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import Any

from pulmo.service.store import JobStore

logger = logging.getLogger(__name__)


class StoreProgress:
    """A progress listener (``listener(stage, fraction)``) that records a running job's stage and progress.

    Args:
        store: the job store.
        job_id: the running job.
        min_interval_s: least time between two writes of the same stage, s (a new stage is written at once).

    Never raises: a database error (locked past the busy timeout, disk full) is logged and the analysis goes on.
    """

    def __init__(self, store: JobStore, job_id: str, min_interval_s: float = 0.5) -> None:
        self.store = store
        self.job_id = job_id
        self.min_interval_s = min_interval_s
        self._last: tuple[str | None, float, float] = (None, -1.0, 0.0)  # stage, progress, time written

    def __call__(self, stage: str, fraction: float) -> None:
        last_stage, last_fraction, last_time = self._last
        now = time.monotonic()
        if stage == last_stage and (fraction <= last_fraction or now - last_time < self.min_interval_s):
            return
        try:
            self.store.set_progress(self.job_id, stage, fraction)
        except sqlite3.Error as exc:
            logger.warning("job %s: progress not recorded (%s)", self.job_id, type(exc).__name__)
            return
        self._last = (stage, fraction, now)


def _p(value: Any) -> str:
    return f"{float(value):.2f}" if isinstance(value, int | float) else "?"


def key_finding(findings: dict[str, Any]) -> str | None:
    """The findings of a done job in one line for the job list, e.g. ``"normal (p 0.91) · 1 box: active
    tuberculosis 0.62"`` (X-ray) or ``"2 nodules (best p 0.99, 23.1 mm) · infection 8.7 mL, 0.6 % of lung"`` (CT).

    Args:
        findings: the ``findings.json`` dict of the analysis.

    Returns:
        At most 200 characters, or ``None`` when the findings hold nothing to summarise. No patient data: only
        labels and numbers.
    """
    parts: list[str] = []
    if findings.get("modality") == "cxr":
        c = findings.get("classification") or {}
        if c:
            if c.get("in_scope") is False:
                parts.append("outside the classifier's classes")
            elif c.get("predicted"):
                p = (c.get("probabilities") or {}).get(c["predicted"])
                parts.append(f"{str(c['predicted']).replace('_', ' ')} (p {_p(p)})")
        boxes = findings.get("detections")
        if isinstance(boxes, list):
            if boxes:
                best = max(boxes, key=lambda b: b.get("score") or 0.0)
                label = str(best.get("label", "finding")).replace("_", " ")
                parts.append(f"{len(boxes)} box{'es' if len(boxes) != 1 else ''}: {label} {_p(best.get('score'))}")
            else:
                parts.append("no box")
        lungs = findings.get("lungs") or {}
        if not parts and lungs.get("area_px") is not None:
            parts.append(f"lung area {lungs['area_px']} px")
    else:
        nodules = findings.get("nodules")
        if isinstance(nodules, list):
            if nodules:
                best = max(nodules, key=lambda n: n.get("probability") or 0.0)
                size = f", {float(best['diameter_mm']):.1f} mm" if best.get("diameter_mm") is not None else ""
                parts.append(f"{len(nodules)} nodule{'s' if len(nodules) != 1 else ''} "
                             f"(best p {_p(best.get('probability'))}{size})")
            else:
                parts.append("no nodule")
        inf = findings.get("infection") or {}
        if inf.get("volume_ml") is not None:
            pct = inf.get("percent_of_lung")
            parts.append(f"infection {float(inf['volume_ml']):.1f} mL"
                         + (f", {float(pct):.1f} % of lung" if pct is not None else ""))
        elif inf.get("area_px") is not None:
            area = f"{float(inf['area_cm2']):.1f} cm²" if inf.get("area_cm2") is not None else f"{inf['area_px']} px"
            parts.append(f"infection {area}")
    return " · ".join(parts)[:200] or None
