"""Config loading, the training loop with checkpoint/resume, and DDP with torchrun (2 CPU processes, gloo)."""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import subprocess
import sys

import pytest

from pulmo.engine import load_config
from pulmo.errors import ConfigError
from pulmo.tasks.lung_seg import LungSegConfig, train


def test_config_yaml_and_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("epochs: 3\nbf16: true\nvisible_data: [a, b]\nlr: 0.01\n")
    cfg = load_config(LungSegConfig, tmp_path / "c.yaml", {"epochs": "5", "lr": None})
    assert cfg.epochs == 5 and cfg.bf16 is True and cfg.visible_data == ["a", "b"] and cfg.lr == 0.01
    (tmp_path / "bad.yaml").write_text("epochz: 3\n")
    with pytest.raises(ConfigError, match="epochz"):
        load_config(LungSegConfig, tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="epochs"):
        load_config(LungSegConfig, None, {"epochs": "many"})


def _tiny_config(data, out, **kw):
    return LungSegConfig(visible_data=[str(data)], size=32, features=4, epochs=2, batch_size=4, patience=5,
                         out_dir=str(out), progress=False, val_fraction=0.3, **kw)


def test_fit_checkpoint_and_resume(tiny_lung_dataset, tmp_path):
    out = tmp_path / "run"
    card = train(_tiny_config(tiny_lung_dataset, out))
    assert (out / "best.safetensors").is_file() and (out / "last.pt").is_file() and (out / "config.yaml").is_file()
    assert (out / "lung-seg-unet.safetensors").is_file() and card["sha256"]
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2]
    assert all(0.0 <= h["dice"] <= 1.0 for h in history)
    # resume continues at epoch 3 instead of starting over
    train(dataclasses.replace(_tiny_config(tiny_lung_dataset, out), epochs=3, resume=True))
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert card["metrics"]["shenzhen/visible_channel"]["n"] >= 1  # validation Dice at the original size


@pytest.mark.parametrize("bf16, channels_last", [(True, True), (False, False)])
def test_bf16_and_channels_last_reach_the_training_steps(tmp_path, bf16, channels_last):
    """--bf16 runs each training forward under CPU bfloat16 autocast (a conv then outputs bf16) and
    --channels-last hands the model channels-last batches and weights; without them, neither happens."""
    import torch
    from torch.utils.data import Dataset

    from pulmo.engine import TrainConfig, fit

    class _Images(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"image": torch.rand(2, 8, 8), "label": torch.rand(1, 8, 8)}  # 2 channels: C=1 is both layouts

    model = torch.nn.Conv2d(2, 1, 3, padding=1)
    seen = []

    def loss_fn(m, batch):
        out = m(batch["image"])
        seen.append((out.dtype, batch["image"].is_contiguous(memory_format=torch.channels_last),
                     model.weight.is_contiguous(memory_format=torch.channels_last)))
        return torch.nn.functional.mse_loss(out.float(), batch["label"])

    config = TrainConfig(epochs=1, batch_size=2, out_dir=str(tmp_path / "run"), progress=False, bf16=bf16,
                         channels_last=channels_last)
    fit(model, _Images(), loss_fn, lambda m: {"score": 0.0}, config, monitor="score")
    assert len(seen) == 2
    expected = (torch.bfloat16 if bf16 else torch.float32, channels_last, channels_last)
    assert all(s == expected for s in seen), seen


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_cpu_processes(tiny_lung_dataset, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    (tmp_path / "c.yaml").write_text("val_fraction: 0.3\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", "-m", "pulmo", "--no-progress", "train", "lung-seg",
           "--config", str(tmp_path / "c.yaml"), "--visible-data", str(tiny_lung_dataset), "--size", "32", "--features", "4", "--epochs", "2",
           "--batch-size", "2", "--out-dir", str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    card = json.loads((out / "lung-seg-unet.json").read_text())
    assert card["training"]["world_size"] == 2
    assert len((out / "history.jsonl").read_text().splitlines()) == 2  # only rank 0 writes


def test_a_diverging_run_stops_with_a_training_error_naming_step_and_learning_rate(tmp_path):
    """A non-finite loss is a setting to change, not a bug: TrainingDivergedError names the epoch, the step and the
    learning rate, and the CLI maps it to one line and exit code 1."""
    import torch
    from torch.utils.data import Dataset

    from pulmo.engine import TrainConfig, fit
    from pulmo.errors import PulmoError, TrainingDivergedError

    class _Data(Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"x": torch.ones(3)}

    model = torch.nn.Linear(3, 1)
    calls = []

    def loss_fn(m, batch):
        calls.append(1)
        out = m(batch["x"]).mean()
        return out * (float("nan") if len(calls) == 2 else 1.0)  # the second step diverges

    config = TrainConfig(epochs=1, batch_size=2, lr=0.05, schedule="constant", out_dir=str(tmp_path / "run"),
                         progress=False)
    with pytest.raises(TrainingDivergedError, match=r"diverged: loss nan at epoch 1 step 1 \(learning rate 0.05\)"):
        fit(model, _Data(), loss_fn, lambda m: {"score": 0.0}, config, monitor="score")
    assert issubclass(TrainingDivergedError, PulmoError) and TrainingDivergedError.exit_code == 1
