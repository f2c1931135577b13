import numpy as np
import pytest
import torch

from pulmo.explain import class_activation_map, restrict_to_lungs
from pulmo.models import create_model
from pulmo.models.classifiers import GRADCAM_LAYERS


def test_restrict_to_lungs_energy_and_normalisation():
    heat = np.zeros((4, 4))
    heat[0, 0], heat[2, 2] = 3.0, 1.0
    lungs = np.zeros((4, 4), bool)
    lungs[2:, 2:] = True
    out, energy = restrict_to_lungs(heat, lungs)
    assert energy == pytest.approx(0.25)
    assert out[0, 0] == 0 and out[2, 2] == pytest.approx(1.0) and out.max() <= 1.0


@pytest.mark.parametrize("name", sorted(GRADCAM_LAYERS))
@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_cam_on_every_classifier(name, method):
    torch.manual_seed(0)
    model = create_model(name).eval()
    heat = class_activation_map(model, GRADCAM_LAYERS[name], torch.rand(1, 1, 64, 64), 1, method)
    assert heat.shape == (64, 64) and np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1 + 1e-6
    with pytest.raises(ValueError, match="unknown CAM"):
        class_activation_map(model, GRADCAM_LAYERS[name], torch.rand(1, 1, 64, 64), 1, "cam")
