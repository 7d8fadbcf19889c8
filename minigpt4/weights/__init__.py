"""Weight loading: original MiniGPT-4 / BLIP-2 / EVA checkpoints (one small key map per format),
our own self-describing folder format, and `load_model`, the one entry point every CLI verb uses."""
from minigpt4.weights.common import CheckpointError
from minigpt4.weights.pretrained import convert, from_pretrained, load_model, save_pretrained

__all__ = ["CheckpointError", "convert", "from_pretrained", "load_model", "save_pretrained"]
