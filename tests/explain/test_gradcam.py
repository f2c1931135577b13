import numpy as np
import pytest
import torch

from pulmo.explain import class_activation_map, energy_in_mask, normalise_heatmap
from pulmo.models import create_model
from pulmo.models.classifiers import GRADCAM_LAYERS


def test_heatmap_is_normalised_over_the_whole_image_not_inside_the_lungs():
    heat = np.zeros((4, 4))
    heat[0, 0], heat[2, 2], heat[3, 3] = 3.0, 1.0, -2.0
    lungs = np.zeros((4, 4), bool)
    lungs[2:, 2:] = True
    assert energy_in_mask(heat, lungs) == pytest.approx(0.25)  # negatives clipped, 1 of 4 inside
    out = normalise_heatmap(heat)
    # the strongest point is outside the lungs: it stays the maximum, the in-lung point keeps its third
    assert out[0, 0] == pytest.approx(1.0) and out[2, 2] == pytest.approx(1 / 3) and out[3, 3] == 0
    assert np.isnan(energy_in_mask(np.zeros((4, 4)), lungs)) and normalise_heatmap(np.zeros((2, 2))).max() == 0


@pytest.mark.parametrize("name", sorted(GRADCAM_LAYERS))
@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_cam_on_every_classifier(name, method):
    torch.manual_seed(0)
    model = create_model(name).eval()
    heat = class_activation_map(model, GRADCAM_LAYERS[name], torch.rand(1, 1, 64, 64), 1, method)
    assert heat.shape == (64, 64) and np.isfinite(heat).all() and heat.min() >= 0
    with pytest.raises(ValueError, match="unknown CAM"):
        class_activation_map(model, GRADCAM_LAYERS[name], torch.rand(1, 1, 64, 64), 1, "cam")


def test_gradcam_is_high_where_the_class_evidence_is_not_inverted():
    """The map equals Grad-CAM computed by hand (Selvaraju et al. 2017: ReLU of the activations weighted by the
    spatial mean of the class logit's gradient, upsampled bilinearly). MONAI's default post-processing maps
    (min, max) to (1, 0); used as is, it showed pulmo's heatmaps inverted (correlation -1 with this)."""
    torch.manual_seed(0)
    model = create_model("resnet18", in_channels=1, num_classes=3).eval()
    x = torch.rand(1, 1, 96, 96)
    kept = {}
    hook = model.layer4.register_forward_hook(lambda m, i, o: kept.setdefault("a", o))
    with torch.enable_grad():
        logits = model(x)
        act = kept["a"]
        act.retain_grad()
        logits[0, 2].backward()
    hook.remove()
    weights = act.grad.mean(dim=(2, 3), keepdim=True)
    manual = torch.nn.functional.interpolate(torch.relu((weights * act).sum(1, keepdim=True)), size=(96, 96),
                                             mode="bilinear", align_corners=False)[0, 0].detach().numpy()
    heat = class_activation_map(model, "layer4", x, 2, "gradcam")
    assert manual.max() > 0
    np.testing.assert_allclose(heat, manual, rtol=1e-4, atol=1e-6 * manual.max())
    assert np.unravel_index(heat.argmax(), heat.shape) == np.unravel_index(manual.argmax(), manual.shape)
