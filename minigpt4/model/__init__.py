from minigpt4.model.minigpt4 import IGNORE_INDEX, IMAGE_TOKEN_ID, MiniGPT4

__all__ = ["MiniGPT4", "IMAGE_TOKEN_ID", "IGNORE_INDEX"]
