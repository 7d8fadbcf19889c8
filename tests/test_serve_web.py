"""The web chat page, driven by a real headless Chromium (Playwright) against a real server.

What is real: the uvicorn server, the FastAPI app, the batcher and the ChatEngine running a tiny
LlamaForCausalLM. The model is the forced-output tiny model of test_serve_support (weights set
so it always writes FORCED_HTML), which makes the streamed answer and the website preview
checkable. Screenshots are saved in the test's artifacts folder."""
from __future__ import annotations

import json

import pytest

from test_serve_support import FORCED_HTML, LiveServer, forced_output_model, png_bytes

playwright_sync = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def web_server(tiny_model):
    from minigpt4.chat.engine import ChatEngine
    from minigpt4.serve.app import create_app
    from minigpt4.serve.config import ServeConfig
    app = create_app(ChatEngine(forced_output_model(tiny_model)), ServeConfig(model_name="minigpt4-tiny"))
    with LiveServer(app) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser():
    import os
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _count_text_updates(page) -> None:
    """Count DOM changes in the chat: the answer is painted delta by delta, not once at the end."""
    page.evaluate("""() => {
        window.__updates = 0;
        new MutationObserver((records) => { window.__updates += records.length; })
            .observe(document.getElementById('chat'), {subtree: true, childList: true, characterData: true});
    }""")


def test_web_chat_website_preset_streams_and_previews(web_server, browser, artifacts):
    page = browser.new_page(viewport={"width": 1100, "height": 900}, accept_downloads=True)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    external = []
    page.on("request", lambda r: None if r.url.startswith(web_server.url) else external.append(r.url))
    bodies = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data)) if r.url.endswith("/chat/completions") else None)
    page.goto(web_server.url + "/")
    page.wait_for_selector("#preset option[value=website]", state="attached")
    assert page.inner_text("#model-name") == "minigpt4-tiny"

    sketch = artifacts / "sketch.png"
    sketch.write_bytes(png_bytes((240, 240, 240), (120, 90)))
    page.select_option("#preset", "website")
    page.set_input_files("#file-input", str(sketch))
    page.wait_for_selector("#attachments .thumb img")
    page.screenshot(path=str(artifacts / "1-attached.png"))

    _count_text_updates(page)
    page.fill("#prompt", "Use a teal heading.")
    page.press("#prompt", "Enter")
    page.wait_for_selector(".msg.assistant .preview iframe", timeout=60_000)
    answer = page.inner_text(".msg.assistant .text")
    assert answer == FORCED_HTML
    # Tokens arrived one delta at a time: many DOM updates, not one final paint.
    assert page.evaluate("window.__updates") > 5

    # The request the page sent: OpenAI vision format, the preset as an extra field, streaming.
    sent = bodies[-1]
    assert sent["stream"] is True and sent["preset"] == "website"
    parts = sent["messages"][-1]["content"]
    assert parts[0]["type"] == "image_url" and parts[0]["image_url"]["url"].startswith("data:image/png;base64,")
    assert parts[1] == {"type": "text", "text": "Use a teal heading."}

    # The preview: a sandboxed iframe (no scripts, no same origin) rendering the generated page.
    frame_el = page.query_selector(".preview iframe")
    assert frame_el.get_attribute("sandbox") == ""
    h1 = page.frame_locator(".preview iframe").locator("h1")
    assert h1.inner_text() == "Hello world"
    assert h1.evaluate("e => getComputedStyle(e).color") == "rgb(0, 128, 128)"
    page.screenshot(path=str(artifacts / "2-website-preview.png"))

    with page.expect_download() as dl:
        page.click(".preview .download-html")
    saved = artifacts / "page.html"
    dl.value.save_as(str(saved))
    assert FORCED_HTML in saved.read_text() and "<!DOCTYPE html>" in saved.read_text()
    page.click(".preview .copy-html")
    page.wait_for_function("document.querySelector('.preview .copy-html').textContent === 'Copied'")

    # Regenerate replaces the answer instead of adding one.
    page.click("#regenerate")
    page.wait_for_function("document.querySelectorAll('.msg.assistant .preview').length === 1 && "
                           "!document.querySelector('.msg.streaming')")
    assert page.locator(".msg.assistant").count() == 1
    assert len(bodies) == 2 and bodies[-1]["messages"] == sent["messages"]

    # Multi-turn in plain chat: the history goes with the new question.
    page.select_option("#preset", "")
    page.fill("#prompt", "And in blue?")
    page.click("#send")
    page.wait_for_function("document.querySelectorAll('.msg.assistant').length === 2 && "
                           "!document.querySelector('.msg.streaming')")
    roles = [m["role"] for m in bodies[-1]["messages"]]
    assert roles == ["user", "assistant", "user"] and "preset" not in bodies[-1]
    assert bodies[-1]["messages"][1]["content"] == FORCED_HTML
    page.screenshot(path=str(artifacts / "3-multi-turn.png"), full_page=True)

    page.click("#clear")
    assert page.locator(".msg").count() == 0
    assert errors == [] and external == []
    page.close()


def test_web_chat_drop_image_and_error_message(web_server, browser, artifacts):
    page = browser.new_page(viewport={"width": 900, "height": 700})
    page.goto(web_server.url + "/")
    page.wait_for_selector("#preset option[value=describe]", state="attached")
    # Drag and drop a real PNG (built in the page from bytes) onto the page.
    b64 = __import__("base64").b64encode(png_bytes((20, 120, 220))).decode()
    page.evaluate("""(b64) => {
        const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
        const dt = new DataTransfer();
        dt.items.add(new File([bytes], 'drop.png', {type: 'image/png'}));
        document.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true}));
    }""", b64)
    page.wait_for_selector("#attachments .thumb img")
    page.click("#attachments .thumb button")  # remove it again
    assert page.locator("#attachments .thumb").count() == 0

    # A file that claims to be a PNG but is not: the server's 400 message is shown to the user.
    fake = artifacts / "fake.png"
    fake.write_bytes(b"this is not an image")
    page.set_input_files("#file-input", str(fake))
    page.wait_for_selector("#attachments .thumb img")
    page.fill("#prompt", "What is this?")
    page.click("#send")
    page.wait_for_selector("#error:not([hidden])")
    assert "not an image" in page.inner_text("#error")
    assert page.locator(".msg.assistant").count() == 0
    page.screenshot(path=str(artifacts / "error.png"))
    page.close()
