"""Training engine: config dataclasses, the generic loop, DDP helpers."""

from pulmo.engine.config import TrainConfig, load_config, save_config
from pulmo.engine.predict import batched_logits
from pulmo.engine.run import fit_best, provenance, save_run
from pulmo.engine.trainer import fit

__all__ = ["TrainConfig", "batched_logits", "fit", "fit_best", "load_config", "provenance", "save_config",
           "save_run"]
