"""The RSNA pneumonia report's U-Net (``unet-rsna-pneumonia``) layer by layer, and its ``unet-rsna`` variant
(formerly ``unet-seed1``, still accepted as a deprecated alias)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pulmo.errors import ConfigError
from pulmo.models import create_model, list_models


def _layers(model: nn.Module, kind: type) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, kind)]


def test_rsna_unet_is_the_printed_network():
    model = create_model("unet-rsna-pneumonia", in_channels=1, out_channels=2, features=4)
    bns = _layers(model, nn.BatchNorm2d)
    assert len(bns) == 2 * (5 + 4)  # two per block: five encoder scales, four decoder blocks
    assert all(bn.momentum == 0.9 for bn in bns)  # as the report prints it, PyTorch semantics
    acts = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.PReLU, nn.LeakyReLU, nn.ELU, nn.GELU, nn.SiLU))]
    assert len(acts) == len(bns) and all(type(a) is nn.LeakyReLU and a.negative_slope == 0.03 for a in acts)
    assert len(model.down) == 5  # five scales: 4, 8, 16, 32, 64 channels
    assert [b[0].out_channels for b in model.down] == [4, 8, 16, 32, 64]
    convs = [c for c in _layers(model, nn.Conv2d) if c is not model.head]
    assert len(convs) == len(bns) and all(c.kernel_size == (3, 3) for c in convs)
    ups = _layers(model, nn.ConvTranspose2d)
    assert len(ups) == 4 and all(u.stride == (2, 2) for u in ups)
    assert [u.out_channels for u in ups] == [32, 16, 8, 4]
    assert [d[0].in_channels for d in model.dec] == [64, 32, 16, 8]  # upsampled + skip concatenated
    assert model.head.kernel_size == (1, 1) and model.head.out_channels == 2
    y = model(torch.rand(2, 1, 64, 48))
    assert y.shape == (2, 2, 64, 48)
    with pytest.raises(ValueError, match="divisible by 16"):
        model(torch.rand(1, 1, 40, 40))


def test_bn_momentum_0_9_weights_the_new_batch_by_0_9():
    model = create_model("unet-rsna-pneumonia", features=2).train()
    bn = model.down[0][1]
    x = torch.randn(4, 1, 32, 32) * 3 + 5
    with torch.no_grad():
        pre = model.down[0][0](x)
        model(x)
    np_mean = pre.mean(dim=(0, 2, 3))
    torch.testing.assert_close(bn.running_mean, 0.9 * np_mean, rtol=1e-4, atol=1e-5)


def test_unet_rsna_is_the_same_layout_with_pytorch_default_momentum():
    variant = create_model("unet-rsna", features=4)
    rsna = create_model("unet-rsna-pneumonia", features=4)
    assert all(bn.momentum == 0.1 for bn in _layers(variant, nn.BatchNorm2d))
    shapes = {k: v.shape for k, v in variant.state_dict().items()}
    assert shapes == {k: v.shape for k, v in rsna.state_dict().items()}
    rsna.load_state_dict(variant.state_dict())  # weight files of either load into the other


def test_unet_seed1_is_a_deprecated_alias_of_unet_rsna():
    with pytest.warns(DeprecationWarning, match="'unet-seed1' is deprecated; use 'unet-rsna'"):
        old = create_model("unet-seed1", features=4)
    new = create_model("unet-rsna", features=4)
    shapes = lambda m: [(k, tuple(v.shape)) for k, v in m.state_dict().items()]
    assert shapes(old) == shapes(new)
    assert [n for n, _ in old.named_parameters()] == [n for n, _ in new.named_parameters()]
    assert all(bn.momentum == 0.1 for bn in _layers(old, nn.BatchNorm2d))
    names = {m["name"] for m in list_models()}
    assert "unet-rsna" in names and "unet-seed1" not in names
    alias = [m for m in list_models(include_aliases=True) if m["name"] == "unet-seed1"]
    assert alias == [{"name": "unet-seed1", "task": "segmentation", "alias_of": "unet-rsna",
                      "description": "deprecated alias of unet-rsna"}]


def test_cards_saved_under_unet_seed1_still_load(tmp_path):
    from pulmo.weights import save_weights

    model = create_model("unet-rsna", features=4)
    with torch.no_grad():
        model.head.bias.fill_(0.25)
    save_weights(model, tmp_path / "old.safetensors", {"name": "old", "architecture": "unet-seed1",
                                                       "model_kwargs": {"features": 4}, "task": "lung-seg"})
    weights = str(tmp_path / "old.safetensors")
    # analyze --weights lung-seg=FILE: the old name counts as a registered architecture
    from pulmo.cli import _weight_overrides

    assert _weight_overrides([f"lung-seg={weights}"]) == {"lung-seg": str(Path(weights).resolve())}
    with pytest.warns(DeprecationWarning):
        by_old_name = create_model("unet-seed1", weights=weights)  # as Predictors do: the card's architecture
    by_new_name = create_model("unet-rsna", weights=weights)
    for loaded in (by_old_name, by_new_name):
        assert isinstance(loaded, type(model)) and not loaded.training
        torch.testing.assert_close(loaded.head.bias, torch.full_like(loaded.head.bias, 0.25))
    with pytest.raises(ConfigError, match="not 'monai-unet'"):
        create_model("monai-unet", weights=weights)
