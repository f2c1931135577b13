"""The same contract for every registered model: forward, backward, shape, finite, save/load round trip."""

from __future__ import annotations

import pytest
import torch

from pulmo.errors import ConfigError, WeightsError
from pulmo.models import create_model, list_models
from pulmo.weights import load_into, resolve_card, save_weights

KWARGS = {"segmentation": {"in_channels": 1, "out_channels": 2, "features": 4},
          "classification": {"in_channels": 1, "num_classes": 2}}
# detectors (task "detection", "nodule") return structured outputs: tests/models/test_detectors.py
NAMES = [m["name"] for m in list_models() if m["task"] in KWARGS]
TASKS = {m["name"]: m["task"] for m in list_models()}


@pytest.mark.parametrize("name", NAMES)
def test_contract(name, tmp_path):
    torch.manual_seed(0)
    kwargs = KWARGS[TASKS[name]]
    model = create_model(name, **kwargs)
    x = torch.rand(2, 1, 64, 64)
    y = model(x)
    assert y.shape == ((2, 2, 64, 64) if TASKS[name] == "segmentation" else (2, 2))
    assert torch.isfinite(y).all()
    y.mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    card = save_weights(model, tmp_path / "w.safetensors", {"name": "w", "architecture": name,
                                                            "model_kwargs": kwargs, "task": "test"})
    assert len(card["sha256"]) == 64
    model.eval()
    loaded = create_model(name, weights=str(tmp_path / "w.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model.half().float()(x), atol=2e-2, rtol=2e-2)


def test_unknown_model_and_bad_kwargs():
    with pytest.raises(ConfigError, match="unknown model"):
        create_model("no-such-net")
    with pytest.raises(ConfigError, match="bad arguments"):
        create_model("unet-rsna", colour=3)


def test_tampered_weights_rejected(tmp_path):
    model = create_model("unet-rsna", features=4)
    save_weights(model, tmp_path / "w.safetensors", {"name": "w", "architecture": "unet-rsna",
                                                     "model_kwargs": {"features": 4}, "task": "test"})
    data = bytearray((tmp_path / "w.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (tmp_path / "w.safetensors").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        load_into(create_model("unet-rsna", features=4), resolve_card(tmp_path / "w.safetensors"))


def test_weights_for_other_architecture_rejected(tmp_path):
    model = create_model("unet-rsna", features=4)
    save_weights(model, tmp_path / "w.safetensors", {"name": "w", "architecture": "unet-rsna",
                                                     "model_kwargs": {"features": 4}, "task": "test"})
    with pytest.raises(ConfigError, match="not 'monai-unet'"):
        create_model("monai-unet", weights=str(tmp_path / "w.safetensors"))
    with pytest.raises(WeightsError, match="not found"):
        create_model("unet-rsna", weights="no-such-weights")
