"""LUNA16 FROC / CPM on hand-worked examples (pulmo.metrics.froc)."""

from __future__ import annotations

import numpy as np
import pytest

from pulmo.metrics.froc import (
    FROC_FP_RATES,
    cpm,
    froc,
    froc_curve,
    match_candidates,
    sensitivity_at,
)


def _example():
    """Three scans, three reference nodules, one excluded finding, ten candidates.

    Scan A: nodules N1 at (0, 0, 0) diameter 10 mm (radius 5) and N2 at (50, 0, 0) diameter 6 mm (radius 3).
        a1 (1, 1, 0)    p 0.90  distance sqrt(2) < 5 from N1       -> TP for N1 (its best hit)
        a2 (0, 3, 0)    p 0.40  distance 3 < 5 from N1 (2nd hit)   -> ignored (neither TP nor FP)
        a3 (20, 0, 0)   p 0.80  hits nothing                        -> FP
        a4 (53.5, 0, 0) p 0.30  distance 3.5 >= 3 from N2           -> FP; N2 is missed
    Scan B: nodule N3 at (10, 10, 10) diameter 8 mm (radius 4); excluded finding E1 at (-30, 0, 0) with
        diameter -1 (unknown -> 10 mm, radius 5).
        b1 (10, 10, 13) p 0.60  distance 3 < 4 from N3             -> TP for N3
        b2 (-28, 0, 0)  p 0.70  distance 2 < 5 from E1             -> ignored with `excluded`, else FP
        b3 (0, -40, 0)  p 0.50                                      -> FP
    Scan C: no nodule.  c1 p 0.95, c2 p 0.20, c3 p 0.85             -> 3 FPs

    With the excluded finding: TP scores {0.90, 0.60}; FP scores {0.95, 0.85, 0.80, 0.50, 0.30, 0.20};
    3 scans, 3 nodules. Lowering the threshold through the scores gives (FP/scan, sensitivity):
        inf (0, 0) | 0.95 (1/3, 0) | 0.90 (1/3, 1/3) | 0.85 (2/3, 1/3) | 0.80 (1, 1/3) | 0.60 (1, 2/3)
        | 0.50 (4/3, 2/3) | 0.30 (5/3, 2/3) | 0.20 (2, 2/3)
    Sensitivity at 1/8, 1/4: 0 (before the first TP); 1/2: 1/3; 1: 2/3 (the upper end of the step at
    1 FP/scan); 2, 4, 8: 2/3 (the curve ends at 2/3: N2 is never hit).
    CPM = (0 + 0 + 1/3 + 4 * 2/3) / 7 = 3/7.

    Without it b2 is a FP (0.70): ... 0.80 (1, 1/3) | 0.70 (4/3, 1/3) | 0.60 (4/3, 2/3) | ... | 0.20 (7/3, 2/3)
    Sensitivity: 0, 0, 1/3, 1/3, 2/3, 2/3, 2/3 -> CPM = (1/3 + 1/3 + 3 * 2/3) / 7 = 8/21.
    No two scores tie, so the curve is a staircase and "linear" and "step" readings agree.
    """
    candidates = {
        "A": (np.array([[1, 1, 0], [0, 3, 0], [20, 0, 0], [53.5, 0, 0]]), np.array([0.9, 0.4, 0.8, 0.3])),
        "B": (np.array([[10, 10, 13], [-28, 0, 0], [0, -40, 0]]), np.array([0.6, 0.7, 0.5])),
        "C": (np.array([[0, 0, 0], [5, 5, 5], [-5, 0, 9]]), np.array([0.95, 0.2, 0.85])),
    }
    references = {
        "A": (np.array([[0, 0, 0], [50, 0, 0]]), np.array([10.0, 6.0])),
        "B": (np.array([[10, 10, 10]]), np.array([8.0])),
        "C": (np.zeros((0, 3)), np.zeros(0)),
    }
    excluded = {"B": (np.array([[-30, 0, 0]]), np.array([-1.0]))}
    return candidates, references, excluded


@pytest.mark.parametrize("interpolation", ["linear", "step"])
def test_hand_worked_example_with_excluded_findings(interpolation):
    candidates, references, excluded = _example()
    result = froc(candidates, references, excluded=excluded, interpolation=interpolation)
    np.testing.assert_allclose(result.sensitivities, [0, 0, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert result.cpm == pytest.approx(3 / 7)
    assert (result.n_scans, result.n_nodules, result.n_detected) == (3, 3, 2)
    assert (result.n_false_positives, result.n_ignored) == (6, 2)
    np.testing.assert_allclose(result.fps_per_scan, np.array([0, 1, 1, 2, 3, 3, 4, 5, 6]) / 3)
    np.testing.assert_allclose(result.sensitivity, np.array([0, 0, 1, 1, 1, 2, 2, 2, 2]) / 3)
    np.testing.assert_allclose(result.thresholds[1:], [0.95, 0.9, 0.85, 0.8, 0.6, 0.5, 0.3, 0.2])
    assert result.froc_dict() == pytest.approx(
        {"0.125": 0, "0.25": 0, "0.5": 1 / 3, "1": 2 / 3, "2": 2 / 3, "4": 2 / 3, "8": 2 / 3})


def test_hand_worked_example_without_excluded_findings():
    candidates, references, _ = _example()
    result = froc(candidates, references)
    np.testing.assert_allclose(result.sensitivities, [0, 0, 1 / 3, 1 / 3, 2 / 3, 2 / 3, 2 / 3])
    assert result.cpm == pytest.approx(8 / 21)
    assert (result.n_false_positives, result.n_ignored) == (7, 1)
    assert cpm(candidates, references) == pytest.approx(8 / 21)


def test_match_candidates_labels_and_best_hit():
    candidates, references, excluded = _example()
    m = match_candidates(*candidates["A"], *references["A"])
    assert m.labels.tolist() == [1, 1, 0, 0]
    assert m.best_candidate.tolist() == [0, -1]
    assert m.nodule_scores[0] == 0.9 and m.nodule_scores[1] == -np.inf
    assert m.detected.tolist() == [True, False] and m.n_ignored == 1
    m = match_candidates(*candidates["B"], *references["B"], *excluded["B"])
    assert m.labels.tolist() == [1, -1, 0]


def test_hit_rule_is_strictly_inside_the_radius_and_unknown_diameter_is_10mm():
    refs = np.array([[0.0, 0.0, 0.0]])
    on_boundary = match_candidates([[5.0, 0, 0]], [1.0], refs, [10.0])
    assert on_boundary.labels.tolist() == [0]  # |c - n| == r is not a hit (LUNA16 script: d^2 < r^2)
    assert match_candidates([[4.99, 0, 0]], [1.0], refs, [10.0]).labels.tolist() == [1]
    assert match_candidates([[4.9, 0, 0]], [1.0], refs, [-1.0]).labels.tolist() == [1]  # -1 -> 10 mm
    assert match_candidates([[5.1, 0, 0]], [1.0], refs, [np.nan]).labels.tolist() == [0]


def test_one_candidate_inside_two_nodules_detects_both():
    refs = (np.array([[0.0, 0, 0], [4.0, 0, 0]]), np.array([10.0, 10.0]))
    result = froc({"s": (np.array([[2.0, 0, 0]]), np.array([0.7]))}, {"s": refs})
    assert result.n_detected == 2 and result.n_false_positives == 0 and result.n_ignored == 0
    assert result.cpm == pytest.approx(1.0)  # no false positive at all: full sensitivity at every rate


def test_scans_without_candidates_count_in_the_fp_rate_and_misses_lower_sensitivity():
    references = {"s1": (np.array([[0.0, 0, 0]]), np.array([6.0])), "s2": (np.array([[9.0, 9, 9]]), np.array([6.0]))}
    candidates = {"s1": (np.array([[0.0, 0, 1], [30.0, 0, 0]]), np.array([0.9, 0.8]))}
    result = froc(candidates, references, seriesuids=["s1", "s2", "s3", "s4"])
    # points: (0, 0), 0.9 (0, 1/2), 0.8 (1/4, 1/2): one FP over 4 scans
    np.testing.assert_allclose(result.fps_per_scan, [0, 0, 0.25])
    np.testing.assert_allclose(result.sensitivities, [0.5] * 7)
    assert result.n_scans == 4
    # entries of scans outside `seriesuids` are ignored
    assert froc(candidates, references, seriesuids=["s1"]).n_nodules == 1


def test_linear_and_step_readings_differ_only_on_a_tie():
    """One nodule (0, 0, 0) d 10; a TP and a FP both at p 0.5, a FP at p 0.9; 2 scans.

    Points: (0, 0) | 0.9 (1/2, 0) | 0.5 (1, 1): the tie makes a diagonal from (1/2, 0) to (1, 1).
    At 3/4 FP/scan linear interpolation gives 1/2; the step reading (highest sensitivity with
    FP/scan <= 3/4) gives 0.
    """
    candidates = {"s": (np.array([[0.0, 0, 0], [40.0, 0, 0], [0, 40.0, 0]]), np.array([0.5, 0.5, 0.9]))}
    references = {"s": (np.array([[0.0, 0, 0]]), np.array([10.0]))}
    lin = froc(candidates, references, seriesuids=["s", "t"], fp_rates=(0.75,), interpolation="linear")
    step = froc(candidates, references, seriesuids=["s", "t"], fp_rates=(0.75,), interpolation="step")
    assert lin.sensitivities[0] == pytest.approx(0.5)
    assert step.sensitivities[0] == pytest.approx(0.0)
    np.testing.assert_allclose(sensitivity_at([0, 0.5, 1], [0, 0, 1], (0.25, 1, 8), "linear"), [0, 1, 1])


def test_froc_curve_and_errors():
    fps, sens, thr = froc_curve([0.9, 0.4], [0.95, 0.5, 0.5], n_nodules=4, n_scans=2)
    np.testing.assert_allclose(fps, [0, 0.5, 0.5, 1.5, 1.5])
    np.testing.assert_allclose(sens, [0, 0, 0.25, 0.25, 0.5])
    assert thr[0] == np.inf
    assert FROC_FP_RATES == (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
    with pytest.raises(ValueError, match="no reference nodule"):
        froc({"s": (np.zeros((1, 3)), np.ones(1))}, {})
    with pytest.raises(ValueError, match="no scan"):
        froc({}, {})
    with pytest.raises(ValueError, match=r"expected \(N, 3\)"):
        match_candidates(np.zeros((2, 2)), np.ones(2), np.zeros((1, 3)), np.ones(1))
    with pytest.raises(ValueError, match="2 values for 1 points"):
        match_candidates(np.zeros((1, 3)), np.ones(2), np.zeros((1, 3)), np.ones(1))
    with pytest.raises(ValueError, match="interpolation"):
        sensitivity_at([0, 1], [0, 1], interpolation="cubic")
