"""The OpenAI-compatible API, called with the official `openai` client (and raw httpx for bodies
the client would never send) against real uvicorn servers on localhost running the real engine
on tiny models: a random one, and the forced-output one whose answer is known."""
from __future__ import annotations

import concurrent.futures as cf
import io
import json

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from test_serve_support import FORCED_HTML, LiveServer, data_url, forced_output_model, image_part, png_bytes

MODEL = "minigpt4-tiny"
KEY = "sekrit"


def _serve(model, **cfg):
    from minigpt4.chat.engine import ChatEngine
    from minigpt4.serve.app import create_app
    from minigpt4.serve.config import ServeConfig
    return LiveServer(create_app(ChatEngine(model), ServeConfig(model_name=MODEL, **cfg)))


@pytest.fixture(scope="module")
def server(tiny_model):
    """Random tiny model, small image limits so the limit errors are cheap to trigger."""
    with _serve(tiny_model, max_image_bytes=200_000, max_image_pixels=1_000_000, max_images=4) as srv:
        yield srv


@pytest.fixture(scope="module")
def forced(tiny_model):
    """Forced-output model behind an API key."""
    with _serve(forced_output_model(tiny_model), api_key=KEY) as srv:
        yield srv


def client(srv, key="none") -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url + "/v1", api_key=key, max_retries=0, timeout=60)


def ask(text="What is in the image?", n_images=1):
    return [{"role": "user", "content": [*[image_part(png_bytes((40 * i, 90, 200))) for i in range(n_images)],
                                         {"type": "text", "text": text}]}]


# --- happy paths --------------------------------------------------------------------------------
def test_models_health_and_page(server):
    ids = [m.id for m in client(server).models.list()]
    assert ids[0] == MODEL and f"{MODEL}:website" in ids and f"{MODEL}:describe" in ids
    assert client(server).models.retrieve(f"{MODEL}:recipe").id == f"{MODEL}:recipe"
    h = httpx.get(server.url + "/health").json()
    assert h["status"] == "ok" and h["model"] == MODEL
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and "MiniGPT-4" in page.text
    assert "http" not in page.text.replace("http-equiv", "")  # nothing external is loaded


def test_plain_completion_with_image(server, tiny_model):
    r = client(server).chat.completions.create(model=MODEL, messages=ask(), max_tokens=8, temperature=0)
    assert r.object == "chat.completion" and r.model == MODEL and r.id.startswith("chatcmpl-")
    (choice,) = r.choices
    assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
    assert choice.finish_reason in ("stop", "length")
    u = r.usage
    assert u.prompt_tokens > tiny_model.cfg.num_image_tokens and 1 <= u.completion_tokens <= 8
    assert u.total_tokens == u.prompt_tokens + u.completion_tokens
    # Greedy decoding is deterministic: the same request gives the same answer.
    again = client(server).chat.completions.create(model=MODEL, messages=ask(), max_tokens=8, temperature=0)
    assert again.choices[0].message.content == choice.message.content


def test_several_images_count_in_the_prompt(server, tiny_model):
    one = client(server).chat.completions.create(model=MODEL, messages=ask(n_images=1), max_tokens=2)
    three = client(server).chat.completions.create(model=MODEL, messages=ask(n_images=3), max_tokens=2)
    # Each extra image adds its slots plus the <Img></Img> tag tokens.
    extra = three.usage.prompt_tokens - one.usage.prompt_tokens
    assert extra > 2 * tiny_model.cfg.num_image_tokens and extra % 2 == 0


def test_seed_n_and_multi_turn(server):
    kw = dict(model=MODEL, messages=ask(), max_tokens=6, temperature=1.0, top_p=1.0, seed=1234)
    a = client(server).chat.completions.create(n=2, **kw)
    b = client(server).chat.completions.create(n=2, **kw)
    assert [c.index for c in a.choices] == [0, 1]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert a.usage.completion_tokens >= 2
    history = ask() + [{"role": "assistant", "content": "A red square."}, {"role": "user", "content": "And the color?"}]
    first = client(server).chat.completions.create(model=MODEL, messages=ask(), max_tokens=2)
    turn2 = client(server).chat.completions.create(model=MODEL, messages=history, max_tokens=2)
    assert turn2.usage.prompt_tokens > first.usage.prompt_tokens


def test_concurrent_requests_answer_as_when_alone(server):
    """Continuous batching: requests arriving while others decode join the running batch; each
    still gets exactly the answer it gets alone (seeded sampling, different prompts and lengths)."""
    kws = [dict(model=MODEL, messages=ask(f"Question {i}: what is it?", n_images=i % 3), max_tokens=3 + 4 * i,
                seed=i, extra_body={"top_k": 20}) for i in range(6)]
    alone = [client(server).chat.completions.create(**kw) for kw in kws]
    with cf.ThreadPoolExecutor(6) as pool:
        together = list(pool.map(lambda kw: client(server).chat.completions.create(**kw), kws))
    assert [(r.choices[0].message.content, r.usage.completion_tokens) for r in together] == \
        [(r.choices[0].message.content, r.usage.completion_tokens) for r in alone]
    assert sum(bool(r.choices[0].message.content) for r in alone) >= 3  # real answers were compared


def test_exact_answer_stop_and_length(forced):
    c = client(forced, KEY)
    r = c.chat.completions.create(model=MODEL, messages=ask(), max_tokens=50)
    assert r.choices[0].message.content == FORCED_HTML and r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 13  # 12 answer tokens + the end symbol
    r = c.chat.completions.create(model=MODEL, messages=ask(), max_tokens=50, stop=["Hello"])
    assert r.choices[0].message.content == '<h1 style="color:teal">' and r.choices[0].finish_reason == "stop"
    r = c.chat.completions.create(model=MODEL, messages=ask(), max_tokens=3)
    assert r.choices[0].message.content == "<h1" and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 3


def test_streaming_chunks(forced):
    stream = client(forced, KEY).chat.completions.create(
        model=MODEL, messages=ask(), max_tokens=50, n=2, stream=True, stream_options={"include_usage": True})
    text, finish, usage, deltas = {0: "", 1: ""}, {}, None, 0
    for chunk in stream:
        assert chunk.object == "chat.completion.chunk"
        if chunk.usage is not None:
            usage = chunk.usage
        for ch in chunk.choices:
            if ch.delta.content:
                text[ch.index] += ch.delta.content
                deltas += 1
            if ch.finish_reason:
                finish[ch.index] = ch.finish_reason
    assert text == {0: FORCED_HTML, 1: FORCED_HTML} and finish == {0: "stop", 1: "stop"}
    assert deltas >= 2 * 10  # token by token, not one blob
    assert usage.completion_tokens == 26 and usage.prompt_tokens > 0


def test_presets_by_model_suffix_and_extra_field(forced):
    c = client(forced, KEY)
    plain = c.chat.completions.create(model=MODEL, messages=ask(""), max_tokens=50)
    site = c.chat.completions.create(model=f"{MODEL}:website", messages=ask(""))
    html = site.choices[0].message.content
    assert html.startswith("<!DOCTYPE html>") and FORCED_HTML in html  # the preset's post-processing
    assert site.usage.prompt_tokens > plain.usage.prompt_tokens        # its instruction is in the prompt
    same = c.chat.completions.create(model=MODEL, messages=ask(""), extra_body={"preset": "website"})
    assert same.choices[0].message.content == html and same.usage.prompt_tokens == site.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError, match="conflicting|give one"):
        c.chat.completions.create(model=f"{MODEL}:describe", messages=ask(), extra_body={"preset": "website"})
    with pytest.raises(openai.BadRequestError, match="unknown preset"):
        c.chat.completions.create(model=MODEL, messages=ask(), extra_body={"preset": "poem"})
    with pytest.raises(openai.NotFoundError, match="model_not_found|does not exist"):
        c.chat.completions.create(model=f"{MODEL}:poem", messages=ask())


# --- auth and CORS --------------------------------------------------------------------------------
def test_api_key_and_cors_off(forced):
    with pytest.raises(openai.AuthenticationError, match="API key is wrong"):
        client(forced, "wrong").models.list()
    r = httpx.post(forced.url + "/v1/chat/completions", json={"model": MODEL, "messages": ask()})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(forced.url + "/health").status_code == 200  # health and the page stay open
    pre = httpx.options(forced.url + "/v1/chat/completions",
                        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in pre.headers


# --- bad input: a clear 4xx each, and the server keeps serving ---------------------------------
def _noise_png(w, h) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _body(**over):
    b = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    b.update(over)
    return json.dumps(b)


def _img_body(url):
    return _body(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}])


BAD = {
    "malformed json": ('{"model": "x", "messages": [', 400, "invalid_json", "not valid JSON"),
    "not an object": ("[1, 2]", 400, "invalid_json", "JSON object"),
    "wrong type": (_body(temperature="hot"), 400, "invalid_value", "temperature"),
    "out of range": (_body(top_p=1.5), 400, "invalid_value", "top_p"),
    "unknown field": (_body(max_token=5), 400, "unknown_field", "max_token"),
    "wrong role": (_body(messages=[{"role": "tool", "content": "x"}]), 400, "invalid_value", "role"),
    "last not user": (_body(messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]),
                      400, "invalid_role", "last message"),
    "image in assistant": (_body(messages=[{"role": "assistant", "content": [image_part()]},
                                           {"role": "user", "content": "x"}]), 400, "invalid_role", "only user"),
    "bad part type": (_body(messages=[{"role": "user", "content": [{"type": "audio", "x": 1}]}]), 400,
                      "invalid_value", "messages.0.content.0: Input tag 'audio'"),
    "invalid base64": (_img_body("data:image/png;base64,@@@not base64@@@"), 400, "invalid_base64", "base64"),
    "not base64 data url": (_img_body("data:image/png,rawbytes"), 400, "invalid_image_url", "base64"),
    "not an image": (_img_body(data_url(b"hello, I am text")), 400, "invalid_image", "not an image"),
    "too many bytes": (_img_body(data_url(_noise_png(300, 300))), 413, "image_too_large", "--max-image-bytes"),
    "too many pixels": (_img_body(data_url(png_bytes(size=(1200, 1000)))), 413, "image_too_large",
                        "--max-image-pixels"),
    "too many images": (_body(messages=[{"role": "user", "content": [image_part()] * 5}]), 400,
                        "too_many_images", "limit of 4"),
    "remote url off": (_img_body("http://127.0.0.1:1/x.png"), 400, "remote_images_disabled", "disabled"),
    "context too long": (_body(messages=[{"role": "user", "content": "word " * 2500}]), 400,
                         "context_length_exceeded", "context"),
    "max_tokens too big": (_body(max_tokens=5000), 400, "context_length_exceeded", "max_tokens"),
    "unknown model": (_body(model="gpt-4o"), 404, "model_not_found", "gpt-4o"),
    "too many n": (_body(n=99), 400, "invalid_value", "n=99"),
    "empty stop": (_body(stop=[""]), 400, "invalid_value", "stop"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_clear_4xx(server, case):
    body, status, code, words = BAD[case]
    r = httpx.post(server.url + "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and words.lower() in err["message"].lower(), err
    assert err["type"] in ("invalid_request_error",)


def test_server_keeps_serving_after_bad_input(server):
    with cf.ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(lambda b: httpx.post(server.url + "/v1/chat/completions", content=b[0],
                                                   timeout=60).status_code, BAD.values()))
    assert all(400 <= c < 500 for c in codes)
    r = client(server).chat.completions.create(model=MODEL, messages=ask(), max_tokens=3)
    assert r.choices[0].finish_reason in ("stop", "length")
    with pytest.raises(openai.NotFoundError):
        client(server).chat.completions.create(model="nope", messages=ask())
    assert httpx.post(server.url + "/v1/nothing-here").json()["error"]["code"] == "not_found"


def test_timeout_is_504_and_queue_full_is_429(tiny_model):
    with _serve(tiny_model, request_timeout_s=0.05) as srv:
        r = httpx.post(srv.url + "/v1/chat/completions", content=_body(max_tokens=300, temperature=0), timeout=60)
        assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    with _serve(tiny_model, max_queue=1, max_batch_size=1, batch_wait_ms=0) as srv:
        def post(_):
            return httpx.post(srv.url + "/v1/chat/completions", content=_body(max_tokens=60, temperature=0),
                              timeout=60)
        with cf.ThreadPoolExecutor(8) as pool:
            rs = list(pool.map(post, range(8)))
        codes = sorted(r.status_code for r in rs)
        assert set(codes) == {200, 429} and codes.count(200) >= 2, codes
        refused = next(r for r in rs if r.status_code == 429)
        assert refused.headers["retry-after"] == "1" and refused.json()["error"]["code"] == "queue_full"
