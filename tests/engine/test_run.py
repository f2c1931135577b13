"""pulmo.engine.run: fit_best (config.yaml, best epoch loaded back, eval mode), provenance, save_run."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch.utils.data import Dataset

from pulmo.engine import TrainConfig, fit_best, provenance, save_config, save_run


class _Items(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {"x": torch.full((3,), float(i)), "y": torch.tensor([float(i)])}


def _loss(m, batch):
    return torch.nn.functional.mse_loss(m(batch["x"]), batch["y"])


@dataclasses.dataclass
class _Config(TrainConfig):
    name: str = "tiny"


def _config(tmp_path, **kw):
    settings = {"epochs": 3, "batch_size": 2, "patience": 5, "progress": False, "threads": 1}
    return _Config(out_dir=str(tmp_path / "run"), **{**settings, **kw})


def test_fit_best_writes_the_config_and_leaves_the_best_epoch_in_eval_mode(tmp_path):
    config = _config(tmp_path)
    model = torch.nn.Linear(3, 1)
    scores = iter([0.5, 0.9, 0.1])  # epoch 2 is the best; the last epoch is not
    summary = fit_best(model, _Items(), _loss, lambda m: {"score": next(scores)}, config, monitor="score")
    out = tmp_path / "run"
    assert yaml.safe_load((out / "config.yaml").read_text()) == dataclasses.asdict(config)
    assert summary["best_epoch"] == 2 and summary["epochs_run"] == 3 and summary["rank"] == 0
    assert not model.training
    best = load_file(str(out / "best.safetensors"))
    assert all(torch.equal(v, best[k]) for k, v in model.state_dict().items())


def test_fit_best_keeps_a_config_yaml_written_first_and_replaces_a_stale_one(tmp_path):
    config = _config(tmp_path, epochs=1)
    path = save_config(config, tmp_path / "run" / "config.yaml")
    before = path.stat().st_mtime_ns
    fit_best(torch.nn.Linear(3, 1), _Items(), _loss, lambda m: {"score": 0.0}, config, monitor="score")
    assert path.stat().st_mtime_ns == before
    path.write_text("lr: 1.0\n")  # another run's settings
    fit_best(torch.nn.Linear(3, 1), _Items(), _loss, lambda m: {"score": 0.0}, config, monitor="score")
    assert yaml.safe_load(path.read_text()) == dataclasses.asdict(config)


def test_provenance_entries_and_order():
    summary = {"epochs_run": 4, "best_epoch": 3, "seconds": 1.5, "world_size": 2, "rank": 0}
    entry = provenance(TrainConfig(seed=7), summary, "pulmo train x", world_size=summary["world_size"])
    assert list(entry.items()) == [("command", "pulmo train x"), ("seed", 7), ("epochs_run", 4), ("best_epoch", 3),
                                   ("seconds", 1.5), ("world_size", 2)]
    with pytest.raises(ValueError, match="seed"):
        provenance(TrainConfig(), summary, "", seed=1)


def test_save_run_writes_name_safetensors_and_the_card(tmp_path):
    config = _config(tmp_path)
    card = save_run(torch.nn.Linear(3, 1), config, {"name": "tiny", "training": {"seed": 0}})
    weights = tmp_path / "run" / "tiny.safetensors"
    assert weights.is_file() and card["file"] == "tiny.safetensors" and card["dtype"] == "float16"
    assert json.loads(weights.with_suffix(".json").read_text()) == card
