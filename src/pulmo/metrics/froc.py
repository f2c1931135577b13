"""LUNA16 free-response ROC (FROC) and the competition performance metric (CPM). Pure numpy.

Follows the LUNA16 evaluation (Setio et al., "Validation, comparison, and combination of algorithms for
automatic detection of pulmonary nodules in computed tomography images: the LUNA16 challenge", Med. Image
Anal. 42, 2017, and its script ``noduleCADEvaluationLUNA16.py``):

* a candidate **hits** a reference nodule when its centre lies strictly inside the nodule's sphere:
  ``|c - n| < diameter / 2`` (world mm); a reference or excluded finding with an unknown diameter (``<= 0``
  or NaN, as ``-1`` in ``annotations_excluded.csv``) gets ``default_diameter_mm`` (10 mm, as the script);
* each reference nodule counts once, as a true positive with the **highest probability** of the candidates
  hitting it; the other candidates hitting it are neither true nor false positives; a candidate hitting
  two nodules counts for both;
* a candidate that hits no reference nodule but an **excluded** finding (LUNA16 ``annotations_excluded.csv``:
  nodules < 3 mm, non-nodules, nodules marked by fewer than 3 readers) is ignored when ``excluded`` is
  given, else it is a false positive; every other candidate is a **false positive**;
* the FROC curve is (false positives / number of scans, detected nodules / all reference nodules) over all
  probability thresholds; a missed nodule (no hit) lowers the sensitivity at every threshold;
* the sensitivity at each of the seven rates 1/8, 1/4, 1/2, 1, 2, 4, 8 FP/scan is read from the curve
  and the **CPM** is their mean.

Reading the curve at a rate (``interpolation``): ``"linear"`` (default) interpolates linearly between the
curve's operating points with :func:`numpy.interp`, as the official script does (a rate beyond the last
point takes the last sensitivity; a rate exactly at a vertical step takes its upper end); ``"step"`` takes
the highest sensitivity reached with FP/scan <= the rate. The two differ only where a true and a false
positive share a probability (a diagonal segment of the curve).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

#: The seven false-positive rates (per scan) of the LUNA16 CPM.
FROC_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: Diameter in mm used for a finding whose diameter is unknown (<= 0 or NaN), as the LUNA16 script.
DEFAULT_DIAMETER_MM = 10.0

Points = tuple[np.ndarray, np.ndarray]


@dataclass
class ScanMatch:
    """Candidates of one scan matched to its reference nodules (see :func:`match_candidates`).

    Attributes:
        labels: int ``(N,)`` per candidate: 1 hits a reference nodule, 0 false positive, -1 ignored (hits
            only an excluded finding).
        nodule_scores: float ``(M,)`` per reference nodule: the highest probability of the candidates hitting
            it, ``-inf`` when none does.
        hits: bool ``(N, M)``: candidate ``i`` hits nodule ``j``.
        best_candidate: int ``(M,)`` per reference nodule: the index of its highest-probability hit (the
            first on a tie), -1 when missed.
    """

    labels: np.ndarray
    nodule_scores: np.ndarray
    hits: np.ndarray
    best_candidate: np.ndarray

    @property
    def n_ignored(self) -> int:
        """Candidates neither true nor false positives: hits on excluded findings and hits other than a
        nodule's best one."""
        counted = np.zeros(len(self.labels), dtype=bool)
        counted[self.best_candidate[self.best_candidate >= 0]] = True
        return int((self.labels == -1).sum() + ((self.labels == 1) & ~counted).sum())

    @property
    def detected(self) -> np.ndarray:
        """Bool ``(M,)``: the nodule is hit by at least one candidate (at any probability)."""
        return np.isfinite(self.nodule_scores)


@dataclass
class FrocResult:
    """FROC analysis of a CAD system (see :func:`froc`).

    Attributes:
        fp_rates: the false-positive rates (per scan) the sensitivities are read at.
        sensitivities: float ``(len(fp_rates),)`` sensitivity at each rate, in [0, 1].
        cpm: mean of ``sensitivities`` (the LUNA16 competition performance metric).
        fps_per_scan: float ``(K,)`` the curve's x: false positives per scan, non-decreasing, from 0.
        sensitivity: float ``(K,)`` the curve's y: detected / all reference nodules, non-decreasing, from 0.
        thresholds: float ``(K,)`` probability threshold of each point (``inf`` for the first).
        n_scans: number of scans the FP rate is divided by.
        n_nodules: number of reference nodules.
        n_detected: reference nodules hit by some candidate (the curve's highest sensitivity x ``n_nodules``).
        n_false_positives: candidates counted as false positives.
        n_ignored: candidates neither true nor false positives (second hits, hits on excluded findings).
        interpolation: ``"linear"`` or ``"step"``.
    """

    fp_rates: tuple[float, ...]
    sensitivities: np.ndarray
    cpm: float
    fps_per_scan: np.ndarray
    sensitivity: np.ndarray
    thresholds: np.ndarray
    n_scans: int
    n_nodules: int
    n_detected: int
    n_false_positives: int
    n_ignored: int
    interpolation: str

    def froc_dict(self) -> dict[str, float]:
        """``{"0.125": s, "0.25": s, "0.5": s, "1": s, "2": s, "4": s, "8": s}`` (the metrics.json form)."""
        return {f"{r:g}": float(s) for r, s in zip(self.fp_rates, self.sensitivities)}


def _points(centres: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(centres, dtype=np.float64)
    if arr.size == 0:
        return arr.reshape(0, 3)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{what}: shape {arr.shape}; expected (N, 3) world coordinates (x, y, z) in mm")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what}: non-finite coordinates")
    return arr


def _vector(values: np.ndarray, n: int, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"{what}: {arr.shape[0]} values for {n} points")
    return arr


def _radii(diameters: np.ndarray, default_diameter_mm: float) -> np.ndarray:
    d = np.where(np.isfinite(diameters) & (diameters > 0), diameters, default_diameter_mm)
    return d / 2.0


def _inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    if len(points) == 0 or len(centres) == 0:
        return np.zeros((len(points), len(centres)), dtype=bool)
    d2 = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=-1)
    return d2 < (radii**2)[None, :]


def match_candidates(centres: np.ndarray, probabilities: np.ndarray, reference_centres: np.ndarray,
                     reference_diameters: np.ndarray, excluded_centres: np.ndarray | None = None,
                     excluded_diameters: np.ndarray | None = None,
                     default_diameter_mm: float = DEFAULT_DIAMETER_MM) -> ScanMatch:
    """Match one scan's candidates to its reference nodules with the LUNA16 hit rule.

    Args:
        centres: ``(N, 3)`` candidate centres, world mm ``(x, y, z)``.
        probabilities: ``(N,)`` candidate probabilities (any real scores; higher = more likely a nodule).
        reference_centres: ``(M, 3)`` reference nodule centres, world mm.
        reference_diameters: ``(M,)`` diameters in mm (``<= 0`` / NaN: ``default_diameter_mm``).
        excluded_centres: ``(E, 3)`` excluded findings (hits on them are ignored), or ``None``.
        excluded_diameters: ``(E,)`` their diameters in mm (default: all unknown).
        default_diameter_mm: diameter of a finding whose diameter is unknown.

    Returns:
        :class:`ScanMatch`.

    Raises:
        ValueError: shapes that do not fit (``(N, 3)`` centres, one value per point) or non-finite centres.
    """
    points = _points(centres, "candidate centres")
    scores = _vector(probabilities, len(points), "candidate probabilities")
    refs = _points(reference_centres, "reference centres")
    ref_radii = _radii(_vector(reference_diameters, len(refs), "reference diameters"), default_diameter_mm)
    hits = _inside(points, refs, ref_radii)
    labels = np.where(hits.any(axis=1), 1, 0)
    if excluded_centres is not None:
        exc = _points(excluded_centres, "excluded centres")
        exc_d = (np.full(len(exc), np.nan) if excluded_diameters is None
                 else _vector(excluded_diameters, len(exc), "excluded diameters"))
        on_excluded = _inside(points, exc, _radii(exc_d, default_diameter_mm)).any(axis=1)
        labels = np.where((labels == 0) & on_excluded, -1, labels)
    nodule_scores = np.full(len(refs), -np.inf)
    best = np.full(len(refs), -1, dtype=np.int64)
    for j in range(len(refs)):
        if hits[:, j].any():
            best[j] = int(np.argmax(np.where(hits[:, j], scores, -np.inf)))
            nodule_scores[j] = scores[best[j]]
    return ScanMatch(labels=labels, nodule_scores=nodule_scores, hits=hits, best_candidate=best)


def froc_curve(true_positive_scores: np.ndarray, false_positive_scores: np.ndarray, n_nodules: int,
               n_scans: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The FROC curve from the scores of detected nodules and of false positives.

    Args:
        true_positive_scores: ``(D,)`` one score per detected reference nodule (its best hit).
        false_positive_scores: ``(F,)`` the false-positive candidates' scores.
        n_nodules: all reference nodules (detected or not), ``>= D``.
        n_scans: number of scans, ``>= 1``.

    Returns:
        ``(fps_per_scan, sensitivity, thresholds)``, each ``(K,)``: one point per distinct score, in
        decreasing threshold order, after a first point ``(0, 0)`` at threshold ``inf``.

    Raises:
        ValueError: ``n_scans < 1``, ``n_nodules < 1`` or fewer nodules than detections.
    """
    tp = np.asarray(true_positive_scores, dtype=np.float64).reshape(-1)
    fp = np.asarray(false_positive_scores, dtype=np.float64).reshape(-1)
    if n_scans < 1:
        raise ValueError(f"n_scans {n_scans}; expected at least 1 scan")
    if n_nodules < 1 or n_nodules < len(tp):
        raise ValueError(f"n_nodules {n_nodules} with {len(tp)} detections; expected >= 1 and >= detections")
    thresholds = np.unique(np.concatenate([tp, fp]))[::-1]
    tp_sorted, fp_sorted = np.sort(tp), np.sort(fp)
    n_tp = len(tp_sorted) - np.searchsorted(tp_sorted, thresholds, side="left")  # scores >= threshold
    n_fp = len(fp_sorted) - np.searchsorted(fp_sorted, thresholds, side="left")
    fps = np.concatenate([[0.0], n_fp / n_scans])
    sens = np.concatenate([[0.0], n_tp / n_nodules])
    return fps, sens, np.concatenate([[np.inf], thresholds])


def sensitivity_at(fps_per_scan: np.ndarray, sensitivity: np.ndarray, fp_rates: Iterable[float] = FROC_FP_RATES,
                   interpolation: str = "linear") -> np.ndarray:
    """Read a FROC curve at the given FP/scan rates.

    Args:
        fps_per_scan: ``(K,)`` non-decreasing curve x (from :func:`froc_curve`).
        sensitivity: ``(K,)`` non-decreasing curve y.
        fp_rates: the rates.
        interpolation: ``"linear"`` (:func:`numpy.interp` over the points, as the LUNA16 script) or ``"step"``
            (highest sensitivity with FP/scan <= rate; 0 when no point qualifies).

    Returns:
        ``(len(fp_rates),)`` sensitivities.

    Raises:
        ValueError: unknown ``interpolation``.
    """
    rates = np.asarray(list(fp_rates), dtype=np.float64)
    x = np.asarray(fps_per_scan, dtype=np.float64)
    y = np.asarray(sensitivity, dtype=np.float64)
    if interpolation == "linear":
        return np.interp(rates, x, y)
    if interpolation == "step":
        last = np.searchsorted(x, rates, side="right") - 1
        return np.where(last >= 0, y[np.clip(last, 0, None)], 0.0)
    raise ValueError(f"interpolation {interpolation!r}; expected 'linear' or 'step'")


def froc(candidates: Mapping[str, Points], references: Mapping[str, Points],
         excluded: Mapping[str, Points] | None = None, seriesuids: Iterable[str] | None = None,
         fp_rates: Iterable[float] = FROC_FP_RATES, interpolation: str = "linear",
         default_diameter_mm: float = DEFAULT_DIAMETER_MM) -> FrocResult:
    """LUNA16 FROC analysis and CPM over a set of scans.

    Args:
        candidates: ``{scan_id: (centres (N, 3) world mm xyz, probabilities (N,))}``; scans without an
            entry have no candidate.
        references: ``{scan_id: (centres (M, 3) world mm xyz, diameters (M,) mm)}``, the reference nodules
            (LUNA16 ``annotations.csv``).
        excluded: ``{scan_id: (centres (E, 3), diameters (E,))}`` findings whose hits are ignored (LUNA16
            ``annotations_excluded.csv``), or ``None`` to count them as false positives.
        seriesuids: the scans evaluated (their number divides the false positives); default: every scan
            in ``references``, ``candidates`` or ``excluded``. Entries of other scans are ignored.
        fp_rates: FP/scan rates of the CPM (default :data:`FROC_FP_RATES`).
        interpolation: how the curve is read at a rate, ``"linear"`` or ``"step"`` (module docstring).
        default_diameter_mm: diameter for findings with an unknown diameter.

    Returns:
        :class:`FrocResult`.

    Raises:
        ValueError: no scan, no reference nodule, bad array shapes, or unknown ``interpolation``.
    """
    excluded = excluded or {}
    scans = (list(dict.fromkeys(seriesuids)) if seriesuids is not None
             else list(dict.fromkeys([*references, *candidates, *excluded])))
    if not scans:
        raise ValueError("froc: no scan to evaluate")
    empty_points: Points = (np.zeros((0, 3)), np.zeros(0))
    tp_scores, fp_scores = [], []
    n_nodules = n_ignored = 0
    for scan in scans:
        centres, probabilities = candidates.get(scan, empty_points)
        ref_centres, ref_diameters = references.get(scan, empty_points)
        exc = excluded.get(scan)
        match = match_candidates(centres, probabilities, ref_centres, ref_diameters,
                                 None if exc is None else exc[0], None if exc is None else exc[1],
                                 default_diameter_mm)
        scores = np.asarray(probabilities, dtype=np.float64).reshape(-1)
        n_nodules += len(match.nodule_scores)
        tp_scores.append(match.nodule_scores[match.detected])
        fp_scores.append(scores[match.labels == 0])
        n_ignored += match.n_ignored
    tp = np.concatenate(tp_scores)
    fp = np.concatenate(fp_scores)
    if n_nodules == 0:
        raise ValueError("froc: no reference nodule in the evaluated scans; sensitivity is undefined")
    fps, sens, thresholds = froc_curve(tp, fp, n_nodules, len(scans))
    rates = tuple(float(r) for r in fp_rates)
    at = sensitivity_at(fps, sens, rates, interpolation)
    return FrocResult(fp_rates=rates, sensitivities=at, cpm=float(np.mean(at)), fps_per_scan=fps,
                      sensitivity=sens, thresholds=thresholds, n_scans=len(scans), n_nodules=n_nodules,
                      n_detected=len(tp), n_false_positives=len(fp), n_ignored=n_ignored,
                      interpolation=interpolation)


def cpm(candidates: Mapping[str, Points], references: Mapping[str, Points], **kwargs: object) -> float:
    """The LUNA16 competition performance metric: :func:`froc` ``(...).cpm`` (same arguments)."""
    return froc(candidates, references, **kwargs).cpm  # type: ignore[arg-type]
