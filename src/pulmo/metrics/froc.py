"""LUNA16 free-response ROC (FROC) and the competition performance metric (CPM). Pure numpy.

Follows the official LUNA16 evaluation script ``noduleCADEvaluationLUNA16.py`` (Setio et al., "Validation,
comparison, and combination of algorithms for automatic detection of pulmonary nodules in computed
tomography images: the LUNA16 challenge", Med. Image Anal. 42, 2017), rule by rule:

* **candidate cap** (the script's ``maxNumberOfCADMarks = 100``): a scan with more than
  ``max_candidates_per_scan`` candidates keeps only those whose probability is strictly greater than the
  ``(max + 1)``-th highest probability (so candidates tied at that probability are all dropped and fewer
  than ``max`` may remain); ``0``, a negative value or ``None`` keeps every candidate (the script's ``-1``);
* **diameter** (the script's ``if diameter < 0.0: diameter = 10.0``): a reference or excluded finding with
  a negative diameter (``-1`` in ``annotations_excluded.csv``) gets ``default_diameter_mm`` (10 mm); any
  other diameter is used as it is, so a diameter of 0 (radius 0) or NaN (every comparison false) is never
  hit by any candidate: such a reference nodule always counts as missed and such an excluded finding
  ignores nothing;
* **hit**: a candidate hits a finding when its centre lies strictly inside the finding's sphere,
  ``|c - n|^2 < (diameter / 2)^2`` (world mm);
* each **reference nodule** counts once, as a true positive with the **highest probability** of the
  candidates hitting it; the other candidates hitting it are neither true nor false positives; a candidate
  hitting two nodules counts for both;
* a candidate that hits no reference nodule but an **excluded** finding (``annotations_excluded.csv``,
  the script's ``bOtherNodulesAsIrrelevant = True``) is ignored when ``excluded`` is given, else it is a
  false positive; every other candidate is a **false positive**;
* the **FROC curve** is (false positives / number of scans, detected nodules / all reference nodules) over
  all probability thresholds (the script's ``computeFROC``); a missed nodule lowers the sensitivity at every
  threshold;
* the sensitivity at each of the seven rates 1/8, 1/4, 1/2, 1, 2, 4, 8 FP/scan is read from the curve
  and the **CPM** is their mean;
* **bootstrap** (the script's ``computeFROC_bootstrap``, ``bNumberOfBootstrapSamples = 1000``,
  ``bConfidence = 0.95``): the scans are resampled with replacement (as many as there are), the FROC curve
  of each resample is computed as above (a scan drawn twice counts twice; the FP rate is divided by the
  number of scans), and the ``confidence`` interval of each sensitivity is the script's ``compute_mean_ci``
  percentile rule: with the ``B`` resample values sorted, ``[v[floor(Pz B)], v[floor((1 - Pz) B)]]``,
  ``Pz = (1 - confidence) / 2``. The script reads the resampled curves on a 10000-point grid of
  0.125..8 FP/scan; here they are read exactly at the seven rates, and the CPM interval applies the same
  rule to each resample's CPM (the script gives none). A resample without any reference nodule (its
  sensitivity is undefined; the script would produce NaN) is left out of ``B``. The draws use
  :func:`numpy.random.default_rng` with ``bootstrap_seed`` (the script draws unseeded with
  ``np.random.randint``), so the bounds reproduce for one seed but not the script's random numbers.

Additions of pulmo, not in the script: a **per-size** breakdown (:data:`FROC_SIZE_CLASSES`: reference
diameter after the rule above ``< 6`` mm, ``6-10`` mm inclusive, ``> 10`` mm; sensitivity over that subset
of nodules with the false positives of the whole evaluation) and the **operating point** at one
probability threshold (:meth:`FrocResult.operating_point`).

Reading the curve at a rate (``interpolation``): ``"linear"`` (default) interpolates linearly between the
curve's operating points with :func:`numpy.interp`, as the official script does (a rate beyond the last
point takes the last sensitivity; a rate exactly at a vertical step takes its upper end); ``"step"`` takes
the highest sensitivity reached with FP/scan <= the rate. The two differ only where a true and a false
positive share a probability (a diagonal segment of the curve).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from pulmo.errors import ConfigError

#: The seven false-positive rates (per scan) of the LUNA16 CPM.
FROC_FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
#: Diameter in mm used for a finding whose diameter is negative (unknown), as the LUNA16 script.
DEFAULT_DIAMETER_MM = 10.0
#: Candidates kept per scan, the script's ``maxNumberOfCADMarks``.
MAX_CANDIDATES_PER_SCAN = 100
#: Bootstrap resamples and confidence, the script's ``bNumberOfBootstrapSamples`` and ``bConfidence``.
N_BOOTSTRAP = 1000
CONFIDENCE = 0.95
#: Size classes of the per-size breakdown (reference diameter in mm): ``d < 6``, ``6 <= d <= 10``, ``d > 10``.
FROC_SIZE_CLASSES = ("<6", "6-10", ">10")

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
class SizeFroc:
    """FROC of the reference nodules of one size class (see :data:`FROC_SIZE_CLASSES`).

    Attributes:
        size: the class name, ``"<6"``, ``"6-10"`` or ``">10"`` (mm).
        n_nodules: reference nodules of that size.
        n_detected: those hit by some candidate.
        sensitivities: float ``(len(fp_rates),)`` in [0, 1], over the nodules of that size, with all false
            positives of the evaluation; ``None`` when ``n_nodules`` is 0.
        cpm: their mean, ``None`` when ``n_nodules`` is 0.
    """

    size: str
    n_nodules: int
    n_detected: int
    sensitivities: np.ndarray | None
    cpm: float | None


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
        max_candidates_per_scan: the candidate cap applied (0: none).
        n_capped: candidates dropped by the cap.
        true_positive_scores: float ``(n_detected,)`` the best-hit probability of each detected nodule.
        false_positive_scores: float ``(n_false_positives,)`` the false positives' probabilities.
        sensitivities_ci: float ``(len(fp_rates), 2)`` bootstrap ``confidence`` interval (lower, upper) of
            each sensitivity, in [0, 1]; ``None`` without bootstrap.
        cpm_ci: ``(lower, upper)`` bootstrap interval of the CPM; ``None`` without bootstrap.
        n_bootstrap: resamples the intervals are computed from (0: no bootstrap).
        confidence: the intervals' confidence level in (0, 1).
        by_size: ``{size class: SizeFroc}`` for each of :data:`FROC_SIZE_CLASSES`.
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
    max_candidates_per_scan: int = 0
    n_capped: int = 0
    true_positive_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    false_positive_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))
    sensitivities_ci: np.ndarray | None = None
    cpm_ci: tuple[float, float] | None = None
    n_bootstrap: int = 0
    confidence: float = CONFIDENCE
    by_size: dict[str, SizeFroc] = field(default_factory=dict)

    def froc_dict(self) -> dict[str, float]:
        """``{"0.125": s, "0.25": s, "0.5": s, "1": s, "2": s, "4": s, "8": s}`` (the metrics.json form)."""
        return {f"{r:g}": float(s) for r, s in zip(self.fp_rates, self.sensitivities)}

    def froc_ci_dict(self) -> dict[str, list[float]] | None:
        """``{"0.125": [lower, upper], ...}`` of :attr:`sensitivities_ci`, or ``None`` without bootstrap."""
        if self.sensitivities_ci is None:
            return None
        return {f"{r:g}": [float(lo), float(hi)] for r, (lo, hi) in zip(self.fp_rates, self.sensitivities_ci)}

    def by_size_dict(self) -> dict[str, dict[str, object]]:
        """``{size: {"n_nodules", "n_detected", "cpm", "froc": {rate: s}}}`` (``cpm`` / ``froc`` null when
        the class has no nodule)."""
        out: dict[str, dict[str, object]] = {}
        for name, s in self.by_size.items():
            out[name] = {"n_nodules": s.n_nodules, "n_detected": s.n_detected, "cpm": s.cpm,
                         "froc": None if s.sensitivities is None else
                         {f"{r:g}": float(v) for r, v in zip(self.fp_rates, s.sensitivities)}}
        return out

    def operating_point(self, threshold: float) -> dict[str, float]:
        """Sensitivity and FP/scan when only candidates with probability ``>= threshold`` are kept.

        Args:
            threshold: a probability threshold (e.g. a model card's ``thresholds.probability``).

        Returns:
            ``{"threshold", "sensitivity" (detected / all reference nodules, in [0, 1]),
            "fp_per_scan" (false positives / scans, >= 0)}``, with the matching and cap of :func:`froc`.
        """
        t = float(threshold)
        return {"threshold": t,
                "sensitivity": float((self.true_positive_scores >= t).sum() / self.n_nodules),
                "fp_per_scan": float((self.false_positive_scores >= t).sum() / self.n_scans)}


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


def effective_diameters(diameters: np.ndarray, default_diameter_mm: float = DEFAULT_DIAMETER_MM) -> np.ndarray:
    """The diameters the hit test uses: the LUNA16 script's ``if diameter < 0.0: diameter = 10.0``.

    Args:
        diameters: ``(M,)`` diameters in mm (any reals, NaN allowed).
        default_diameter_mm: the diameter given to negative values.

    Returns:
        float ``(M,)``: negative values replaced by ``default_diameter_mm``; 0 and NaN kept (such a finding
        is never hit: ``d^2 < 0`` and ``d^2 < NaN`` are false).
    """
    d = np.asarray(diameters, dtype=np.float64)
    return np.where(d < 0, default_diameter_mm, d)


def _inside(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    if len(points) == 0 or len(centres) == 0:
        return np.zeros((len(points), len(centres)), dtype=bool)
    d2 = ((points[:, None, :] - centres[None, :, :]) ** 2).sum(axis=-1)
    with np.errstate(invalid="ignore"):
        return d2 < (radii**2)[None, :]


def _cap(max_candidates_per_scan: int | None) -> int:
    if max_candidates_per_scan is None:
        return 0
    if isinstance(max_candidates_per_scan, bool) or int(max_candidates_per_scan) != max_candidates_per_scan:
        raise ConfigError(f"max_candidates_per_scan {max_candidates_per_scan!r}; expected an integer "
                          f"(0 or None: keep every candidate)")
    return max(0, int(max_candidates_per_scan))


def top_candidates(probabilities: np.ndarray, max_candidates_per_scan: int | None = MAX_CANDIDATES_PER_SCAN
                   ) -> np.ndarray:
    """Which candidates of one scan the LUNA16 script keeps (``maxNumberOfCADMarks``).

    With more than ``max`` candidates, the script sorts the probabilities in decreasing order, takes the
    ``(max + 1)``-th (``probs[maxNumberOfCADMarks]``) as threshold and keeps the candidates strictly above
    it: at most ``max``, fewer when candidates tie at the threshold (they are all dropped).

    Args:
        probabilities: ``(N,)`` candidate probabilities.
        max_candidates_per_scan: the cap; ``0``, negative or ``None``: keep all (the script's ``-1``).

    Returns:
        bool ``(N,)``: the kept candidates.

    Raises:
        ConfigError: ``max_candidates_per_scan`` is not an integer.
    """
    p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    cap = _cap(max_candidates_per_scan)
    if cap == 0 or len(p) <= cap:
        return np.ones(len(p), dtype=bool)
    threshold = np.sort(p)[::-1][cap]
    return p > threshold


def match_candidates(centres: np.ndarray, probabilities: np.ndarray, reference_centres: np.ndarray,
                     reference_diameters: np.ndarray, excluded_centres: np.ndarray | None = None,
                     excluded_diameters: np.ndarray | None = None,
                     default_diameter_mm: float = DEFAULT_DIAMETER_MM) -> ScanMatch:
    """Match one scan's candidates to its reference nodules with the LUNA16 hit rule (module docstring).

    No candidate cap is applied here (see :func:`top_candidates`).

    Args:
        centres: ``(N, 3)`` candidate centres, world mm ``(x, y, z)``.
        probabilities: ``(N,)`` candidate probabilities (any real scores; higher = more likely a nodule).
        reference_centres: ``(M, 3)`` reference nodule centres, world mm.
        reference_diameters: ``(M,)`` diameters in mm (negative: ``default_diameter_mm``; 0 / NaN: never hit,
            as the LUNA16 script).
        excluded_centres: ``(E, 3)`` excluded findings (hits on them are ignored), or ``None``.
        excluded_diameters: ``(E,)`` their diameters in mm, same rule (default: all ``-1``, i.e. 10 mm).
        default_diameter_mm: diameter of a finding with a negative diameter.

    Returns:
        :class:`ScanMatch`.

    Raises:
        ValueError: shapes that do not fit (``(N, 3)`` centres, one value per point) or non-finite centres.
    """
    points = _points(centres, "candidate centres")
    scores = _vector(probabilities, len(points), "candidate probabilities")
    refs = _points(reference_centres, "reference centres")
    ref_d = effective_diameters(_vector(reference_diameters, len(refs), "reference diameters"), default_diameter_mm)
    hits = _inside(points, refs, ref_d / 2.0)
    labels = np.where(hits.any(axis=1), 1, 0)
    if excluded_centres is not None:
        exc = _points(excluded_centres, "excluded centres")
        exc_d = (np.full(len(exc), -1.0) if excluded_diameters is None
                 else _vector(excluded_diameters, len(exc), "excluded diameters"))
        on_excluded = _inside(points, exc, effective_diameters(exc_d, default_diameter_mm) / 2.0).any(axis=1)
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


def size_classes(diameters: np.ndarray) -> np.ndarray:
    """The :data:`FROC_SIZE_CLASSES` name of each diameter in mm: ``"<6"`` (d < 6), ``"6-10"`` (6 <= d <= 10),
    ``">10"`` (d > 10), ``""`` for NaN. Returns an object array ``(M,)``."""
    d = np.asarray(diameters, dtype=np.float64).reshape(-1)
    out = np.full(len(d), "", dtype=object)
    out[d < 6] = "<6"
    out[(d >= 6) & (d <= 10)] = "6-10"
    out[d > 10] = ">10"
    return out


def _interval(values: np.ndarray, confidence: float) -> np.ndarray:
    """The script's ``compute_mean_ci`` bounds of each column of ``values`` ``(B, R)`` -> ``(R, 2)``."""
    v = np.sort(values, axis=0)
    n = len(v)
    pz = (1.0 - confidence) / 2.0
    lo = v[math.floor(pz * n)]
    hi = v[min(math.floor((1.0 - pz) * n), n - 1)]
    return np.stack([lo, hi], axis=-1)


def _bootstrap(scores: np.ndarray, is_tp: np.ndarray, scan_of: np.ndarray, nodules_per_scan: np.ndarray,
               rates: tuple[float, ...], interpolation: str, n_bootstrap: int, seed: int | None,
               confidence: float) -> tuple[np.ndarray | None, tuple[float, float] | None, int]:
    """Bootstrap over scans (module docstring): ``(sensitivities_ci (R, 2), cpm_ci, resamples used)``."""
    n_scans = len(nodules_per_scan)
    order = np.argsort(-scores, kind="stable")
    s_sorted, tp_sorted, scan_sorted = scores[order], is_tp[order], scan_of[order]
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_bootstrap):
        counts = np.bincount(rng.integers(n_scans, size=n_scans), minlength=n_scans)
        n_nodules = int(counts @ nodules_per_scan)
        if n_nodules == 0:
            continue
        w = counts[scan_sorted]
        kept = w > 0
        s, wt, tp = s_sorted[kept], w[kept], tp_sorted[kept]
        cum_tp, cum_fp = np.cumsum(wt * tp), np.cumsum(wt * ~tp)
        ends = np.r_[np.nonzero(s[1:] != s[:-1])[0], len(s) - 1] if len(s) else np.zeros(0, dtype=np.int64)
        fps = np.r_[0.0, cum_fp[ends] / n_scans]
        sens = np.r_[0.0, cum_tp[ends] / n_nodules]
        rows.append(sensitivity_at(fps, sens, rates, interpolation))
    if not rows:
        return None, None, 0
    values = np.asarray(rows)
    sens_ci = _interval(values, confidence)
    cpm_lo, cpm_hi = _interval(values.mean(axis=1, keepdims=True), confidence)[0]
    return sens_ci, (float(cpm_lo), float(cpm_hi)), len(rows)


def froc(candidates: Mapping[str, Points], references: Mapping[str, Points],
         excluded: Mapping[str, Points] | None = None, seriesuids: Iterable[str] | None = None,
         fp_rates: Iterable[float] = FROC_FP_RATES, interpolation: str = "linear",
         default_diameter_mm: float = DEFAULT_DIAMETER_MM,
         max_candidates_per_scan: int | None = MAX_CANDIDATES_PER_SCAN, n_bootstrap: int = N_BOOTSTRAP,
         bootstrap_seed: int | None = 0, confidence: float = CONFIDENCE) -> FrocResult:
    """LUNA16 FROC analysis and CPM over a set of scans, as ``noduleCADEvaluationLUNA16.py`` (module docstring).

    Args:
        candidates: ``{scan_id: (centres (N, 3) world mm xyz, probabilities (N,))}``; scans without an
            entry have no candidate.
        references: ``{scan_id: (centres (M, 3) world mm xyz, diameters (M,) mm)}``, the reference nodules
            (LUNA16 ``annotations.csv``).
        excluded: ``{scan_id: (centres (E, 3), diameters (E,))}`` findings whose hits are ignored (LUNA16
            ``annotations_excluded.csv``, diameter ``-1`` = 10 mm), or ``None`` to count them as false positives.
        seriesuids: the scans evaluated (their number divides the false positives); default: every scan
            in ``references``, ``candidates`` or ``excluded``. Entries of other scans are ignored.
        fp_rates: FP/scan rates of the CPM (default :data:`FROC_FP_RATES`).
        interpolation: how the curve is read at a rate, ``"linear"`` or ``"step"`` (module docstring).
        default_diameter_mm: diameter for findings with a negative (unknown) diameter.
        max_candidates_per_scan: keep at most this many of each scan's most probable candidates
            (:func:`top_candidates`; default 100, the script's ``maxNumberOfCADMarks``; 0 or ``None``: all).
        n_bootstrap: bootstrap resamples of the scans for the confidence intervals (default 1000, as the
            script; 0: none).
        bootstrap_seed: seed of the resampling (:func:`numpy.random.default_rng`); ``None``: fresh entropy.
        confidence: confidence level of the intervals, in (0, 1) (default 0.95, as the script).

    Returns:
        :class:`FrocResult`.

    Raises:
        ValueError: no scan, no reference nodule, bad array shapes, or unknown ``interpolation``.
        ConfigError: ``max_candidates_per_scan`` not an integer, ``n_bootstrap`` negative or not an integer,
            or ``confidence`` outside (0, 1).
    """
    cap = _cap(max_candidates_per_scan)
    if isinstance(n_bootstrap, bool) or int(n_bootstrap) != n_bootstrap or n_bootstrap < 0:
        raise ConfigError(f"n_bootstrap {n_bootstrap!r}; expected an integer >= 0 (0: no bootstrap)")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence {confidence!r}; expected a level in (0, 1), e.g. 0.95")
    excluded = excluded or {}
    scans = (list(dict.fromkeys(seriesuids)) if seriesuids is not None
             else list(dict.fromkeys([*references, *candidates, *excluded])))
    if not scans:
        raise ValueError("froc: no scan to evaluate")
    empty_points: Points = (np.zeros((0, 3)), np.zeros(0))
    tp_scores, fp_scores, tp_scan, fp_scan, nodules_per_scan = [], [], [], [], []
    nodule_scores, nodule_sizes = [], []
    n_ignored = n_capped = 0
    for k, scan in enumerate(scans):
        centres, probabilities = candidates.get(scan, empty_points)
        points = _points(centres, "candidate centres")
        scores = _vector(probabilities, len(points), "candidate probabilities")
        keep = top_candidates(scores, cap)
        n_capped += int((~keep).sum())
        points, scores = points[keep], scores[keep]
        ref_centres, ref_diameters = references.get(scan, empty_points)
        exc = excluded.get(scan)
        match = match_candidates(points, scores, ref_centres, ref_diameters,
                                 None if exc is None else exc[0], None if exc is None else exc[1],
                                 default_diameter_mm)
        nodules_per_scan.append(len(match.nodule_scores))
        nodule_scores.append(match.nodule_scores)
        nodule_sizes.append(size_classes(effective_diameters(
            _vector(ref_diameters, len(match.nodule_scores), "reference diameters"), default_diameter_mm)))
        tp_scores.append(match.nodule_scores[match.detected])
        fp_scores.append(scores[match.labels == 0])
        tp_scan.append(np.full(int(match.detected.sum()), k))
        fp_scan.append(np.full(int((match.labels == 0).sum()), k))
        n_ignored += match.n_ignored
    tp = np.concatenate(tp_scores)
    fp = np.concatenate(fp_scores)
    n_nodules = int(sum(nodules_per_scan))
    if n_nodules == 0:
        raise ValueError("froc: no reference nodule in the evaluated scans; sensitivity is undefined")
    fps, sens, thresholds = froc_curve(tp, fp, n_nodules, len(scans))
    rates = tuple(float(r) for r in fp_rates)
    at = sensitivity_at(fps, sens, rates, interpolation)

    all_nodule_scores, all_sizes = np.concatenate(nodule_scores), np.concatenate(nodule_sizes)
    by_size = {}
    for name in FROC_SIZE_CLASSES:
        in_class = all_sizes == name
        s_tp = all_nodule_scores[in_class & np.isfinite(all_nodule_scores)]
        n = int(in_class.sum())
        s_at = None
        if n:
            s_fps, s_sens, _ = froc_curve(s_tp, fp, n, len(scans))
            s_at = sensitivity_at(s_fps, s_sens, rates, interpolation)
        by_size[name] = SizeFroc(size=name, n_nodules=n, n_detected=len(s_tp), sensitivities=s_at,
                                 cpm=None if s_at is None else float(np.mean(s_at)))

    sens_ci, cpm_ci, n_used = None, None, 0
    if n_bootstrap:
        sens_ci, cpm_ci, n_used = _bootstrap(
            np.concatenate([tp, fp]), np.r_[np.ones(len(tp), bool), np.zeros(len(fp), bool)],
            np.concatenate([*tp_scan, *fp_scan]).astype(np.int64), np.asarray(nodules_per_scan, dtype=np.int64),
            rates, interpolation, int(n_bootstrap), bootstrap_seed, confidence)
    return FrocResult(fp_rates=rates, sensitivities=at, cpm=float(np.mean(at)), fps_per_scan=fps,
                      sensitivity=sens, thresholds=thresholds, n_scans=len(scans), n_nodules=n_nodules,
                      n_detected=len(tp), n_false_positives=len(fp), n_ignored=n_ignored,
                      interpolation=interpolation, max_candidates_per_scan=cap, n_capped=n_capped,
                      true_positive_scores=tp, false_positive_scores=fp, sensitivities_ci=sens_ci, cpm_ci=cpm_ci,
                      n_bootstrap=n_used, confidence=float(confidence), by_size=by_size)


def cpm(candidates: Mapping[str, Points], references: Mapping[str, Points], **kwargs: object) -> float:
    """The LUNA16 competition performance metric: :func:`froc` ``(...).cpm`` (same arguments; no bootstrap
    unless ``n_bootstrap`` is given)."""
    kwargs.setdefault("n_bootstrap", 0)
    return froc(candidates, references, **kwargs).cpm  # type: ignore[arg-type]
