"""Helpers shared by the serving tests (no tests here): a real uvicorn server on a free
localhost port in a background thread, image data URLs, and a "forced-output" tiny model.

The forced-output model is a real LlamaForCausalLM run by the real engine, with weights set so
that greedy AND sampled decoding both write one known answer: every transformer layer adds
nothing to the residual stream (o_proj/down_proj are zero), so the logits depend only on the
current token, and the LM head maps each answer token to the next one with a huge margin. It
lets tests check exact text (stop strings, the website preview) without hard-coding what a
random model happens to say."""
from __future__ import annotations

import base64
import copy
import io
import socket
import threading
import time

import torch
from PIL import Image

FORCED_HTML = '<h1 style="color:teal">Hello world'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """`with LiveServer(app) as srv:` serves `app` on http://127.0.0.1:<free port>."""

    def __init__(self, app):
        import uvicorn
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    timeout_graceful_shutdown=2))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start within 30 s")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(15)


def png_bytes(color=(200, 30, 30), size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def image_part(data: bytes | None = None) -> dict:
    return {"type": "image_url", "image_url": {"url": data_url(data or png_bytes())}}


def forced_output_model(base_model, answer: str = FORCED_HTML):
    """A copy of `base_model` whose LLM always answers `answer` followed by the template end symbol."""
    model = copy.deepcopy(base_model)
    llm, tok = model.llm, model.tokenizer
    from minigpt4.chat.templates import get_template
    end = get_template(model.cfg.template).end.strip()
    chain = tok(answer, add_special_tokens=False).input_ids + tok(end, add_special_tokens=False).input_ids
    hidden = llm.get_input_embeddings().weight.shape[1]
    assert len(set(chain)) == len(chain) and len(chain) < hidden, "answer tokens must be distinct and few"
    with torch.no_grad():
        for layer in llm.model.layers:  # every block adds zero: the residual stream is the token embedding
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        emb = torch.zeros_like(llm.get_input_embeddings().weight)
        emb[:, 0] = 1.0                              # any other token -> direction 0
        for i, t in enumerate(chain):
            emb[t] = 0.0
            emb[t, i + 1] = 1.0                      # answer token i -> direction i+1
        head = torch.zeros_like(emb)
        head[chain[0], 0] = 100.0                    # from anywhere: start the answer
        for i in range(len(chain) - 1):
            head[chain[i + 1], i + 1] = 100.0        # token i -> token i+1
        llm.get_input_embeddings().weight.copy_(emb)
        llm.config.tie_word_embeddings = False
        llm.lm_head.weight = torch.nn.Parameter(head)
    model.clear_cache()
    return model
