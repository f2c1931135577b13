"""Worker entry points for the tests of the per-job limits: the real :func:`worker_main` (its memory limit,
its claim loop, its job runner) with only the analysis replaced, in the spawned worker process itself.

A job uploaded with the modality hint ``ct`` misbehaves (sleeps, or allocates beyond the memory limit);
any other job gets a quick fake analysis, so a test can show the worker carries on afterwards.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pulmo.service.worker import worker_main


def _fake_analysis(path: Path, out_dir: Path) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    return {"modality": "cxr", "input": {"path": str(path)}, "lungs": {"area_px": 1}, "files": {}}


def slow_worker(*args: Any, **kwargs: Any) -> None:
    """A worker whose ``ct`` jobs take two minutes."""
    import pulmo.pipeline

    def analysis(path: Path, out_dir: Path, modality: str | None = None, **_: Any) -> dict[str, Any]:
        if modality == "ct":
            time.sleep(120)
        return _fake_analysis(path, out_dir)

    pulmo.pipeline.analyze_image = analysis
    worker_main(*args, **kwargs)


def hungry_worker(*args: Any, **kwargs: Any) -> None:
    """A worker whose ``ct`` jobs ask for 1 GiB more than the process' memory limit (never touched, so it
    would cost nothing if the limit were missing: the job would then be done and the test fail)."""
    import pulmo.pipeline

    def analysis(path: Path, out_dir: Path, modality: str | None = None, **_: Any) -> dict[str, Any]:
        if modality == "ct":
            import resource

            import numpy as np

            soft, _hard = resource.getrlimit(resource.RLIMIT_DATA)
            if soft == resource.RLIM_INFINITY:
                raise AssertionError("the worker runs without a memory limit")
            np.zeros(soft + (1 << 30), np.uint8)
        return _fake_analysis(path, out_dir)

    pulmo.pipeline.analyze_image = analysis
    worker_main(*args, **kwargs)
