"""The input-gate model task: corpus pieces, threshold rule, and train -> evaluate through the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pulmo.cli import main
from pulmo.datasets.gate_corpus import GATE_LABELS, GENERATED_KINDS, GateCorpus, generated_picture
from pulmo.tasks.input_gate import _threshold, gate_rates


@pytest.mark.parametrize("kind", GENERATED_KINDS)
def test_generated_pictures(kind):
    img = generated_picture(kind, np.random.default_rng(0), size=64)
    assert img.shape == (64, 64) and img.dtype == np.float32 and 0 <= img.min() and img.max() <= 255


def test_threshold_sits_in_the_gap_and_minimises_errors():
    pos = np.array([0.9, 0.95, 0.99])
    neg = np.array([0.01, 0.02, 0.1])
    t = _threshold(np.r_[pos, neg], np.r_[np.ones(3, bool), np.zeros(3, bool)])
    assert t == pytest.approx(0.5, abs=1e-6)  # logit middle of (0.1, 0.9]
    # perfect separation over the whole range: 0.5, not the middle of the clip bounds in log space (0.218)
    assert _threshold(np.r_[0.99, 0.999, 0.001], np.array([True, True, False])) == pytest.approx(0.5, abs=0.05)
    # one positive outlier at 0.02 costs less than accepting two negatives: it is refused, the rest accepted
    prob = np.r_[0.02, 0.9, 0.95, 0.99, np.full(20, 0.3), np.full(20, 0.001)]
    t = _threshold(prob, np.r_[np.ones(4, bool), np.zeros(40, bool)])
    assert 0.3 < t < 0.9


def test_gate_rates_count_refusals_and_acceptances():
    prob = np.array([[0.9, 0.05, 0.05], [0.1, 0.1, 0.8], [0.6, 0.2, 0.2], [0.05, 0.9, 0.05]])
    labels = np.array([0, 0, 2, 1])
    r = gate_rates(prob, labels, ["a", "a", "b", "c"], {"cxr": 0.5, "ct_slice": 0.5})
    assert r["cxr"]["refused"] == 1 and r["cxr"]["n"] == 2
    assert r["non_cxr"]["accepted"] == 1 and r["non_cxr"]["per_source"]["b"] == {"n": 1, "accepted": 1}
    assert r["ct_slice"]["refused"] == 0 and r["non_ct"]["accepted"] == 0


def test_train_and_evaluate_input_gate_through_the_cli(tmp_path, capsys):
    rng = np.random.default_rng(0)
    n = 60
    labels = np.arange(n) % len(GATE_LABELS)
    images = (rng.random((n, 128, 128)) * 60 + labels[:, None, None] * 80).astype(np.uint8)
    corpus = GateCorpus(images, labels, [f"g{i}" for i in range(n)], ["src"] * n).save(tmp_path / "c.npz")
    out = tmp_path / "run"
    assert main(["--no-progress", "train", "input-gate", "--corpus", str(corpus), "--out-dir", str(out),
                 "--epochs", "1", "--batch-size", "16", "--max-steps-per-epoch", "2"]) == 0
    card = json.loads((out / "input-gate.json").read_text())
    assert card["labels"] == list(GATE_LABELS) and len(card["sha256"]) == 64
    assert 0.05 <= card["thresholds"]["cxr"] <= 0.95 and "false_refusal_rate_cxr" in card["metrics"]["test"]
    capsys.readouterr()
    metrics = tmp_path / "m.json"
    assert main(["--no-progress", "evaluate", "input-gate", "--data", str(tmp_path), "--corpus", str(corpus),
                 "--weights", str(out / "input-gate.safetensors"), "--out", str(metrics)]) == 0
    result = json.loads(metrics.read_text())
    assert result["task"] == "input-gate" and result["n"] == int(GateCorpus.load(corpus).held_out().sum())
    assert "false_refusal_cxr=" in capsys.readouterr().out
