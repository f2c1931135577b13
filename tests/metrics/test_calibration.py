"""Expected calibration error and temperature scaling (Guo et al., ICML 2017)."""

from __future__ import annotations

import numpy as np
import pytest

from pulmo.metrics.calibration import expected_calibration_error, fit_temperature, softmax


def test_ece_of_perfect_and_overconfident_predictions():
    labels = np.array([0, 1, 0, 1])
    assert expected_calibration_error(np.eye(2)[labels], labels) == 0.0
    # always 90 % sure, right half the time: |0.5 - 0.9| = 0.4
    prob = np.array([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.1, 0.9]])
    assert expected_calibration_error(prob, np.array([0, 1, 1, 0])) == pytest.approx(0.4)


def test_ece_hand_computed_two_bins():
    prob = np.array([[0.95, 0.05], [0.95, 0.05], [0.55, 0.45], [0.55, 0.45]])
    labels = np.array([0, 0, 0, 1])  # bin 0.95: acc 1.0 (gap 0.05); bin 0.55: acc 0.5 (gap 0.05)
    assert expected_calibration_error(prob, labels, n_bins=10) == pytest.approx(0.05)


def test_ece_rejects_bad_shapes():
    with pytest.raises(ValueError):
        expected_calibration_error(np.ones((3, 2)), np.zeros(4))


def test_softmax_and_temperature_recover_a_known_scale():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(0, 2, (2000, 3))
    y = np.array([rng.choice(3, p=p) for p in softmax(true_logits)])
    assert softmax(true_logits).sum(axis=1) == pytest.approx(np.ones(2000))
    assert fit_temperature(true_logits * 2.5, y) == pytest.approx(2.5, rel=0.15)
