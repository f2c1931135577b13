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
