"""Server settings: one dataclass, filled from CLI flags (see cli.py) or built directly in code."""
from __future__ import annotations

import os
from dataclasses import dataclass, field


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    model_name: str = "minigpt4"      # the id clients put in "model"; presets are "<name>:<preset>"
    api_key: str | None = field(default_factory=lambda: os.environ.get("MINIGPT4_API_KEY") or None)
    cors_origins: tuple[str, ...] = ()  # empty = CORS off (browsers on other origins are refused)

    # Continuous batching: up to `max_batch_size` requests decode together; a new request joins the
    # running batch at the next decode step. `batch_wait_ms`: how long an idle server lets the first
    # request wait for company (0: start at once - later arrivals join one step later anyway).
    max_batch_size: int = 16
    batch_wait_ms: float = 0.0
    max_queue: int = 64                # waiting requests beyond this are answered 429
    request_timeout_s: float = 120.0   # per request, queue wait included -> 504

    # Input limits (each violation is a 4xx that names the limit and its flag).
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_images: int = 8
    max_n: int = 8
    max_body_bytes: int | None = None  # default: derived from the image limits

    # Remote image URLs (SSRF-guarded); off unless asked for.
    allow_remote_images: bool = False
    # Answers about the picture name only objects the word readout read (minigpt4.chat.grounding); None: the model's
    # own setting. Free chat and the describe/alt-text/ask presets; never recipes, prompts or pages.
    ground: bool | None = None
    remote_timeout_s: float = 10.0
    remote_max_redirects: int = 3

    def body_limit(self) -> int:
        if self.max_body_bytes is not None:
            return self.max_body_bytes
        # base64 grows data by 4/3; leave 1 MiB for the text of the conversation.
        return self.max_images * self.max_image_bytes * 4 // 3 + (1 << 20)
