"""Stage 1 and stage 2 training: `load_config(recipe, overrides)` then `train(cfg)`."""
from minigpt4.train.config import ConfigError, DataConfig, OptimConfig, TrainConfig, load_config
from minigpt4.train.loop import Trainer, train

__all__ = ["ConfigError", "DataConfig", "OptimConfig", "TrainConfig", "Trainer", "load_config", "train"]
