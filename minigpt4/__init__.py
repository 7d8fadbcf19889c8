"""minigpt4: MiniGPT-4 as real software - a chatbot that sees images."""
__version__ = "0.1.0"
