"""Training engine: config dataclasses, the generic loop, DDP helpers."""

from pulmo.engine.config import TrainConfig, load_config, save_config
from pulmo.engine.predict import batched_logits
from pulmo.engine.trainer import fit

__all__ = ["TrainConfig", "batched_logits", "fit", "load_config", "save_config"]
