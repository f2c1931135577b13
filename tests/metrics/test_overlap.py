import numpy as np
import pytest

from pulmo.metrics import dice, iou


def test_dice_iou_hand_worked():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    a[0, :4] = True        # 4 px
    b[0, 2:4] = True       # 2 px, 2 overlap
    b[1, 0] = True         # +1 px
    assert dice(a, b) == pytest.approx(2 * 2 / (4 + 3))
    assert iou(a, b) == pytest.approx(2 / 5)
    assert dice(np.zeros((2, 2)), np.zeros((2, 2))) == 1.0
    with pytest.raises(ValueError, match="shapes differ"):
        dice(a, b[:2])


def test_confusion_metrics_standard_formulas():
    from pulmo.metrics import binary_metrics, confusion_counts

    pred = np.array([1, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    ref = np.array([1, 1, 0, 1, 0, 0, 0, 0, 0, 0])
    c = confusion_counts(pred, ref)
    assert c == {"tp": 2, "fp": 1, "fn": 1, "tn": 6}
    m = binary_metrics(c)
    assert m["accuracy"] == pytest.approx(0.8)
    assert m["precision"] == pytest.approx(2 / 3) and m["sensitivity"] == pytest.approx(2 / 3)
    assert m["specificity"] == pytest.approx(6 / 7)  # TN / (TN + FP)
    assert m["f1"] == pytest.approx(2 * (2 / 3) * (2 / 3) / (4 / 3))
