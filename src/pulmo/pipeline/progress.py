"""Stage progress of one analysis: the pipeline says which stage it is in and how far the whole analysis is;
whoever runs it (the service's worker) may listen.

The pipeline calls :func:`report_progress` at the start of each stage (and inside long stages); nothing happens
unless a caller installed a listener with :func:`progress_listener` around the analysis. The listener is
context-local (a :class:`contextvars.ContextVar`), so concurrent analyses in threads do not mix.

Stages, in the order an analysis passes them (:data:`STAGES`): ``reading`` (the input gate and the reader),
``lungs``, ``infection`` and ``nodules`` (CT), ``classify`` and ``detect`` (chest X-ray), ``report`` (masks,
overlays, ``report.html``, ``findings.json``).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

STAGES = ("reading", "lungs", "infection", "nodules", "classify", "detect", "report")

#: fraction of the whole analysis at the start of each stage, per pipeline (measured on the 2-core machine:
#: a CT volume spends most of its time in the infection model, an X-ray in classification + heatmaps)
STAGE_START = {
    "cxr": {"reading": 0.0, "lungs": 0.15, "classify": 0.35, "detect": 0.65, "report": 0.85},
    "ct": {"reading": 0.0, "lungs": 0.08, "infection": 0.15, "nodules": 0.7, "report": 0.85},
}

Listener = Callable[[str, float], None]
_listener: contextvars.ContextVar[Listener | None] = contextvars.ContextVar("pulmo_progress_listener", default=None)


def report_progress(stage: str, fraction: float) -> None:
    """Tell the listener (if any) that the analysis is in ``stage`` and ``fraction`` done.

    Args:
        stage: one of :data:`STAGES`.
        fraction: progress of the whole analysis in [0, 1] (clipped).

    Raises:
        ValueError: ``stage`` is not one of :data:`STAGES` (a bug in the caller).
    """
    if stage not in STAGES:
        raise ValueError(f"progress stage {stage!r}: expected one of {', '.join(STAGES)}")
    listener = _listener.get()
    if listener is not None:
        listener(stage, min(1.0, max(0.0, float(fraction))))


def stage_start(pipeline: str, stage: str) -> float:
    """Fraction of the whole analysis at the start of ``stage`` of ``pipeline`` (``cxr`` / ``ct``)."""
    return STAGE_START[pipeline][stage]


def report_stage(pipeline: str, stage: str, within: float = 0.0) -> None:
    """:func:`report_progress` for ``stage`` of ``pipeline``, ``within`` (0..1) of the way to the next stage."""
    starts = STAGE_START[pipeline]
    order = sorted(starts, key=starts.get)
    start = starts[stage]
    nxt = next((starts[s] for s in order if starts[s] > start), 1.0)
    report_progress(stage, start + min(1.0, max(0.0, within)) * (nxt - start))


@contextlib.contextmanager
def progress_listener(listener: Listener | None) -> Iterator[None]:
    """Call ``listener(stage, fraction)`` on every :func:`report_progress` inside the ``with`` block.

    The listener runs in the analysis' thread; an exception it raises propagates into the analysis, so it should
    not raise (the service's listener swallows database errors).
    """
    token = _listener.set(listener)
    try:
        yield
    finally:
        _listener.reset(token)
