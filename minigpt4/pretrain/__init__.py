"""Stage 0: pretrain the default model's small ViT + Q-Former on the procedural image world.

BLIP-2-style objectives adapted to a CPU (see model.py): image-text contrastive, image-grounded
text generation with a tiny text tower, plus auxiliary ground-truth attribute heads. Training
runs in resumable time-boxed chunks (`minigpt4 pretrain-vision RECIPE --minutes 20`); the frozen
vision side is exported in `MiniGPT4` key names for stage 1 (`load_vision`).
"""
from minigpt4.pretrain.config import Stage0Config, Stage0ConfigError, TextTowerConfig, load_recipe
from minigpt4.pretrain.export import export, load_vision
from minigpt4.pretrain.loop import Run, train

__all__ = ["Stage0Config", "Stage0ConfigError", "TextTowerConfig", "load_recipe", "train", "Run",
           "export", "load_vision"]
