"""Serving: an OpenAI-compatible HTTP API with dynamic batching, and a web chat page.

    from minigpt4.serve import create_app, ServeConfig
    app = create_app(ChatEngine(model), ServeConfig(api_key="secret"))   # then run with uvicorn
"""
from minigpt4.serve.config import ServeConfig

__all__ = ["ServeConfig", "create_app"]


def __getattr__(name):
    if name == "create_app":  # lazily: importing the package should not pull in FastAPI
        from minigpt4.serve.app import create_app
        return create_app
    raise AttributeError(name)
