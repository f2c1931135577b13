"""pulmo's FROC against the rules of the official LUNA16 script ``noduleCADEvaluationLUNA16.py`` (Setio et
al. 2017): candidate cap, diameter -1 / 0 / NaN, excluded findings, bootstrap CI, per-size and operating point.

``_script_froc`` re-states the script's procedure step by step in plain Python (its own loops over the
annotations and a dict of remaining candidates, a ROC over the kept entries), independently of
:mod:`pulmo.metrics.froc`, and serves as the oracle.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from pulmo.errors import ConfigError
from pulmo.metrics.froc import (
    FROC_FP_RATES,
    FROC_SIZE_CLASSES,
    cpm,
    effective_diameters,
    froc,
    froc_curve,
    match_candidates,
    sensitivity_at,
    size_classes,
    top_candidates,
)

EMPTY = (np.zeros((0, 3)), np.zeros(0))


def _script_froc(candidates, references, excluded, seriesuids, max_marks):
    """The LUNA16 script's evaluateCAD + computeFROC, restated: returns (fps, sens, n_fp, n_ignored, n_tp)."""
    gt, prob, skip = [], [], []
    n_fp = n_ignored = 0
    for uid in seriesuids:
        centres, probs = candidates.get(uid, EMPTY)
        cands = {i: (tuple(map(float, c)), float(p)) for i, (c, p) in enumerate(zip(centres, probs))}
        if max_marks > 0 and len(cands) > max_marks:
            threshold = sorted((p for _, p in cands.values()), reverse=True)[max_marks]
            kept = {}
            for k, v in cands.items():
                if len(kept) >= max_marks:
                    break
                if v[1] > threshold:
                    kept[k] = v
            cands = kept
        remaining = dict(cands)
        annots = [(c, d, True) for c, d in zip(*references.get(uid, EMPTY))]
        annots += [(c, d, False) for c, d in zip(*excluded.get(uid, EMPTY))]
        for centre, diameter, included in annots:
            diameter = float(diameter)
            if diameter < 0.0:
                diameter = 10.0
            r2 = (diameter / 2.0) ** 2
            matches = []
            for key, (c, p) in cands.items():
                dist = sum((a - b) ** 2 for a, b in zip(centre, c))
                if dist < r2:
                    if included:
                        matches.append(p)
                        remaining.pop(key, None)
                    elif key in remaining:
                        n_ignored += 1
                        del remaining[key]
            if included:
                n_ignored += max(0, len(matches) - 1)
                gt.append(1.0)
                prob.append(max(matches) if matches else -1e9)
                skip.append(not matches)
        for _, p in remaining.values():
            n_fp += 1
            gt.append(0.0)
            prob.append(p)
            skip.append(False)
    labels = np.array([g for g, s in zip(gt, skip) if not s])
    scores = np.array([p for p, s in zip(prob, skip) if not s])
    n_detected, n_total = int(labels.sum()), int(sum(gt))
    thresholds = np.unique(scores)[::-1]
    tps = np.array([0] + [int(((scores >= t) & (labels == 1)).sum()) for t in thresholds])
    fps = np.array([0] + [int(((scores >= t) & (labels == 0)).sum()) for t in thresholds])
    return fps / len(seriesuids), tps / n_total, n_fp, n_ignored, n_detected


def _replay_case(luna16_rules: bool):
    """Three scans through the old pulmo rules (``luna16_rules=False``) or the LUNA16 script's.

    Scan S1: reference R (0, 0, 0) d 8 (radius 4). Excluded: a non-nodule point E (40, 0, 0) and, under
        LUNA16 rules, the individual mark M of one of R's readers, (5, 0, 0) d 6 (radius 3).
        c1 (0, 1, 0) p .9 -> TP. c2 (43, 0, 0) p .8: 3 mm from E: old rule E d 3 mm (radius 1.5) -> FP;
        LUNA16 E d -1 -> 10 mm (radius 5) -> ignored. c3 (6.5, 0, 0) p .7: 6.5 mm from R (no hit), 1.5 mm
        from M -> ignored under LUNA16 rules (M listed), FP under the old ones. c4 (0, 60, 0) p .6 -> FP.
    Scan S2: references at (0, 0, 0) with diameter 0 and at (30, 0, 0) with diameter NaN, a candidate at
        each centre (p .5, .4). Old rule: 0 and NaN -> 10 mm: both detected. LUNA16 script: radius 0 and NaN
        never hit (d^2 < 0, d^2 < NaN false): both missed, the candidates are FPs.
    Scan S3: 101 far candidates, p 0.001 ... 0.101: LUNA16 keeps the 100 most probable (cap 100), the old
        rule all 101.
    """
    far = np.c_[np.arange(101) * 20.0 + 200, np.zeros(101), np.zeros(101)]
    candidates = {
        "S1": (np.array([[0, 1, 0], [43, 0, 0], [6.5, 0, 0], [0, 60, 0]], float), np.array([0.9, 0.8, 0.7, 0.6])),
        "S2": (np.array([[0, 0, 0], [30, 0, 0]], float), np.array([0.5, 0.4])),
        "S3": (far, np.arange(1, 102) / 1000.0),
    }
    references = {"S1": (np.array([[0.0, 0, 0]]), np.array([8.0])),
                  "S2": (np.array([[0.0, 0, 0], [30, 0, 0]]), np.array([0.0, np.nan] if luna16_rules else [10.0, 10.0])),
                  "S3": EMPTY}
    if luna16_rules:
        excluded = {"S1": (np.array([[40.0, 0, 0], [5, 0, 0]]), np.array([-1.0, 6.0]))}
    else:
        excluded = {"S1": (np.array([[40.0, 0, 0]]), np.array([3.0]))}
    return candidates, references, excluded


@pytest.mark.parametrize("luna16_rules", [False, True])
def test_replay_old_rules_and_luna16_rules(luna16_rules):
    candidates, references, excluded = _replay_case(luna16_rules)
    cap = 100 if luna16_rules else 0
    result = froc(candidates, references, excluded=excluded, max_candidates_per_scan=cap, n_bootstrap=0)
    if luna16_rules:
        # c2 and c3 ignored; both S2 nodules missed, their candidates FPs; S3's lowest candidate dropped
        assert (result.n_nodules, result.n_detected) == (3, 1)
        assert (result.n_false_positives, result.n_ignored, result.n_capped) == (1 + 2 + 100, 2, 1)
    else:
        assert (result.n_nodules, result.n_detected) == (3, 3)
        assert (result.n_false_positives, result.n_ignored, result.n_capped) == (3 + 0 + 101, 0, 0)
    fps, sens, n_fp, n_ignored, n_detected = _script_froc(candidates, references, excluded, ["S1", "S2", "S3"], cap)
    assert (n_fp, n_ignored, n_detected) == (result.n_false_positives, result.n_ignored, result.n_detected)
    np.testing.assert_allclose(result.fps_per_scan, fps)
    np.testing.assert_allclose(result.sensitivity, sens)
    np.testing.assert_allclose(result.sensitivities, np.interp(FROC_FP_RATES, fps, sens))


def test_default_cap_is_the_scripts_100_and_changes_the_fp_count():
    candidates, references, excluded = _replay_case(True)
    assert froc(candidates, references, excluded=excluded, n_bootstrap=0).n_false_positives == 103
    for no_cap in (0, None, -1):
        result = froc(candidates, references, excluded=excluded, max_candidates_per_scan=no_cap, n_bootstrap=0)
        assert (result.n_false_positives, result.n_capped, result.max_candidates_per_scan) == (104, 0, 0)
    assert cpm(candidates, references, excluded=excluded, max_candidates_per_scan=100) == pytest.approx(
        froc(candidates, references, excluded=excluded, n_bootstrap=0).cpm)


def test_cap_keeps_only_candidates_above_the_next_probability_as_the_script():
    # 3 candidates, cap 2: threshold = 3rd highest (0.5); only p > 0.5 kept, so the tie at 0.5 drops both
    assert top_candidates([0.5, 0.9, 0.5], 2).tolist() == [False, True, False]
    assert top_candidates([0.2, 0.9, 0.5], 2).tolist() == [False, True, True]
    assert top_candidates([0.2, 0.9], 2).tolist() == [True, True]  # not more than the cap: all kept
    assert top_candidates([0.2, 0.9, 0.5], 0).all() and top_candidates([0.2, 0.9, 0.5], None).all()
    with pytest.raises(ConfigError, match="max_candidates_per_scan 2.5"):
        top_candidates([0.1], 2.5)


def test_diameter_zero_and_nan_never_hit_negative_is_10mm():
    np.testing.assert_array_equal(effective_diameters([-1.0, -5, 0.0, 7.0]), [10.0, 10.0, 0.0, 7.0])
    assert np.isnan(effective_diameters([np.nan])[0])
    centre = np.zeros((1, 3))
    for d in (0.0, np.nan):  # a candidate exactly at the centre: no hit, as the script (d^2 < r^2 is false)
        assert match_candidates(centre, [1.0], centre, [d]).labels.tolist() == [0]
        assert match_candidates(centre, [1.0], np.zeros((0, 3)), [], centre, [d]).labels.tolist() == [0]
    assert match_candidates([[4.9, 0, 0]], [1.0], centre, [-1.0]).labels.tolist() == [1]
    assert match_candidates([[4.9, 0, 0]], [1.0], np.zeros((0, 3)), [], centre, [-1.0]).labels.tolist() == [-1]
    assert match_candidates([[4.9, 0, 0]], [1.0], np.zeros((0, 3)), [], centre).labels.tolist() == [-1]  # default -1


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_random_cases_match_the_script(seed):
    """Random scans with ties, -1 / 0 / NaN diameters, overlapping findings and a small cap."""
    rng = np.random.default_rng(seed)
    candidates, references, excluded = {}, {}, {}
    uids = [f"s{i}" for i in range(8)]
    for uid in uids:
        m, e = int(rng.integers(0, 4)), int(rng.integers(0, 4))
        ref_c = rng.uniform(-60, 60, (m, 3))
        ref_d = rng.choice([-1.0, 0.0, np.nan, 4.0, 8.0, 15.0, 25.0], m, p=[.1, .05, .05, .2, .3, .2, .1])
        exc_c = np.r_[rng.uniform(-60, 60, (e, 3)), ref_c[: min(m, 1)] + rng.normal(0, 2, (min(m, 1), 3))]
        exc_d = rng.choice([-1.0, 0.0, np.nan, 5.0], len(exc_c), p=[.6, .1, .1, .2])
        near = np.r_[ref_c, exc_c]
        n = int(rng.integers(0, 12))
        cand = near[rng.integers(0, len(near), n)] + rng.normal(0, 4, (n, 3)) if len(near) else np.zeros((0, 3))
        cand = np.r_[cand, rng.uniform(-80, 80, (int(rng.integers(0, 6)), 3))]
        probs = np.round(rng.random(len(cand)), 1)  # many ties
        candidates[uid], references[uid], excluded[uid] = (cand, probs), (ref_c, ref_d), (exc_c, exc_d)
    rates = np.linspace(0, 10, 81)
    for cap in (0, 5):
        result = froc(candidates, references, excluded=excluded, seriesuids=uids, fp_rates=rates,
                      max_candidates_per_scan=cap, n_bootstrap=0)
        fps, sens, n_fp, n_ignored, n_detected = _script_froc(candidates, references, excluded, uids, cap)
        assert (result.n_false_positives, result.n_ignored, result.n_detected) == (n_fp, n_ignored, n_detected)
        np.testing.assert_allclose(result.sensitivities, np.interp(rates, fps, sens), atol=1e-12)


# ---------------------------------------------------------------------------------------------- bootstrap

def _many_scans(seed: int = 7, n_scans: int = 40):
    rng = np.random.default_rng(seed)
    candidates, references = {}, {}
    for i in range(n_scans):
        m = int(rng.integers(0, 3))
        ref_c = rng.uniform(-60, 60, (m, 3))
        hit = rng.random(m) < 0.7
        found = ref_c[hit] + rng.normal(0, 1, (int(hit.sum()), 3))
        cand = np.r_[found, rng.uniform(-80, 80, (int(rng.integers(0, 5)), 3))]
        candidates[f"s{i}"] = (cand, rng.random(len(cand)))
        references[f"s{i}"] = (ref_c, rng.choice([4.0, 8.0, 14.0], m))
    return candidates, references


def test_bootstrap_ci_brackets_the_point_estimate_and_is_seeded():
    candidates, references = _many_scans()
    result = froc(candidates, references, bootstrap_seed=3)
    assert result.n_bootstrap == 1000 and result.confidence == 0.95
    lo, hi = result.sensitivities_ci[:, 0], result.sensitivities_ci[:, 1]
    assert np.all(lo <= result.sensitivities) and np.all(result.sensitivities <= hi)
    assert np.all(hi - lo > 0.01)  # a real spread over 40 scans
    assert result.cpm_ci[0] <= result.cpm <= result.cpm_ci[1] and result.cpm_ci[0] < result.cpm_ci[1]
    again = froc(candidates, references, bootstrap_seed=3)
    np.testing.assert_array_equal(again.sensitivities_ci, result.sensitivities_ci)
    assert list(result.froc_ci_dict()) == ["0.125", "0.25", "0.5", "1", "2", "4", "8"]
    none = froc(candidates, references, n_bootstrap=0)
    assert none.sensitivities_ci is None and none.cpm_ci is None and none.froc_ci_dict() is None


def test_bootstrap_equals_resampling_scans_one_by_one():
    """The weighted implementation against a plain one: the same draws (numpy default_rng(seed).integers),
    each resample's candidates concatenated scan by scan, the curve recomputed, the script's percentile rule
    (sorted values, indices floor(Pz B) and floor((1 - Pz) B), Pz = 0.025))."""
    candidates, references = _many_scans(seed=11, n_scans=15)
    uids = list(references)
    n_boot = 200
    result = froc(candidates, references, n_bootstrap=n_boot, bootstrap_seed=5)
    per_scan = []
    for uid in uids:
        m = match_candidates(*candidates[uid], *references[uid])
        per_scan.append((m.nodule_scores[m.detected], candidates[uid][1][m.labels == 0], len(m.nodule_scores)))
    rng = np.random.default_rng(5)
    rows, cpms = [], []
    for _ in range(n_boot):
        idx = rng.integers(len(uids), size=len(uids))
        n_nod = sum(per_scan[i][2] for i in idx)
        if n_nod == 0:
            continue
        fps, sens, _ = froc_curve(np.concatenate([per_scan[i][0] for i in idx]),
                                  np.concatenate([per_scan[i][1] for i in idx]), n_nod, len(uids))
        rows.append(sensitivity_at(fps, sens))
        cpms.append(rows[-1].mean())
    rows, cpms = np.sort(np.asarray(rows), axis=0), np.sort(cpms)
    b = len(rows)
    assert result.n_bootstrap == b
    pz = (1.0 - 0.95) / 2.0  # the script's compute_mean_ci
    lo_i, hi_i = math.floor(pz * b), math.floor((1.0 - pz) * b)
    np.testing.assert_allclose(result.sensitivities_ci, np.c_[rows[lo_i], rows[hi_i]], atol=1e-12)
    assert result.cpm_ci == pytest.approx((cpms[lo_i], cpms[hi_i]), abs=1e-12)


def test_bootstrap_argument_errors():
    candidates, references = _many_scans(n_scans=3)
    with pytest.raises(ConfigError, match="n_bootstrap -1"):
        froc(candidates, references, n_bootstrap=-1)
    with pytest.raises(ConfigError, match="confidence 1.5"):
        froc(candidates, references, confidence=1.5)


# ---------------------------------------------------------------------------------------------- size, operating point

def test_per_size_breakdown_and_operating_point():
    """One scan (plus an empty one): nodules of 4 mm (A), 8 mm (B) and 14 mm (C); -1 (-> 10 mm, class 6-10).

    a (0, 0, 0) p .9 hits A; b (50, 0, 0) p .3 hits C; D (90, 0, 0) d -1 is missed; FPs p .8 and .5.
    Over 2 scans, points: .9 (0, 1/4) | .8 (1/2, 1/4) | .5 (1, 1/4) | .3 (1, 2/4).
    Size <6 (A): detected at .9 before any FP: 1 at every rate. 6-10 (B 8 mm missed, D 10 mm missed): 0.
    >10 (C): hit at .3, after both FPs (1 FP/scan): 0 below 1 FP/scan, 1 from 1 on (vertical step at 1).
    Operating point at 0.5: a and both FPs kept: sensitivity 1/4, 2 FPs / 2 scans = 1 FP/scan.
    """
    candidates = {"s": (np.array([[0, 0, 0], [50, 0, 0], [200, 0, 0], [0, 200, 0]], float),
                        np.array([0.9, 0.3, 0.8, 0.5]))}
    references = {"s": (np.array([[0, 0, 0], [25, 0, 0], [50, 0, 0], [90, 0, 0]], float),
                        np.array([4.0, 8.0, 14.0, -1.0])), "t": EMPTY}
    result = froc(candidates, references, n_bootstrap=0)
    assert list(result.by_size) == list(FROC_SIZE_CLASSES)
    small, mid, large = (result.by_size[k] for k in FROC_SIZE_CLASSES)
    assert (small.n_nodules, mid.n_nodules, large.n_nodules) == (1, 2, 1)
    assert (small.n_detected, mid.n_detected, large.n_detected) == (1, 0, 1)
    np.testing.assert_allclose(small.sensitivities, 1.0)
    np.testing.assert_allclose(mid.sensitivities, 0.0)
    np.testing.assert_allclose(large.sensitivities, [0, 0, 0, 1, 1, 1, 1])
    assert large.cpm == pytest.approx(4 / 7)
    assert result.by_size_dict()[">10"]["froc"]["1"] == 1.0
    assert result.operating_point(0.5) == pytest.approx({"threshold": 0.5, "sensitivity": 0.25, "fp_per_scan": 1.0})
    assert result.operating_point(0.95) == {"threshold": 0.95, "sensitivity": 0.0, "fp_per_scan": 0.0}
    # a class without nodules has no FROC
    only_small = froc(candidates, {"s": (np.zeros((1, 3)), np.array([4.0]))}, n_bootstrap=0)
    assert only_small.by_size[">10"].cpm is None and only_small.by_size_dict()[">10"]["froc"] is None
    assert size_classes([5.99, 6, 10, 10.01, np.nan]).tolist() == ["<6", "6-10", "6-10", ">10", ""]
