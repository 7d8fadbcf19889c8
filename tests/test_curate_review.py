"""The review page in a real headless Chromium (Playwright) against the real FastAPI app on uvicorn.

Approve with the keyboard, edit and save with Ctrl+Enter, reject: every decision must be in the
store at once and in the exported filter_cap.json. Screenshots go to the test's artifacts folder.
"""
from __future__ import annotations

import io
import json
import socket
import threading
import time
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from minigpt4.curate.export import export
from minigpt4.curate.filters import apply_filters
from minigpt4.curate.store import Store

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
TEXTS = [
    "A red apple lies on a wooden table next to a glass of water, with soft light coming from a window on "
    "the left side of the room.",
    "A small sailing boat floats on a calm blue lake, with green hills and a few white clouds in the sky "
    "behind it on a sunny afternoon.",
    "A black cat sleeps curled up on a striped sofa, beside a knitted blanket and a pile of colourful "
    "cushions in a cosy living room.",
]
COLORS = [(200, 40, 40), (40, 90, 200), (30, 30, 30)]


def make_run(out: Path) -> None:
    """A run whose three items were described, fixed and kept, as `curate run` leaves it."""
    with Store(out) as st:
        st.add_items([(f"item{i}", {"kind": "file", "path": f"/src/{i}.jpg"}) for i in range(3)] +
                     [("dropped", {"kind": "file", "path": "/src/d.jpg"})])
        for i, (text, color) in enumerate(zip(TEXTS, COLORS)):
            img = Image.new("RGB", (320, 240), (235, 235, 225))
            ImageDraw.Draw(img).ellipse((80, 40, 240, 200), fill=color)
            buf = io.BytesIO()
            img.save(buf, format="JPEG")
            (out / "image").mkdir(exist_ok=True)
            (out / "image" / f"item{i}.jpg").write_bytes(buf.getvalue())
            raw = text + " " + text.split(",")[0] + ". ###"
            st.set_described(f"item{i}", raw, raw, 40, True, f"image/item{i}.jpg")
            res = apply_filters(f"Here is the corrected paragraph: {text}")
            st.set_fixed(f"item{i}", "openai", f"Here is the corrected paragraph: {text}", None, 1, 50, 30, 0.0,
                         [], "kept", res.applied, res.text)
        st.set_described("dropped", "junk", "junk", 3, True, "image/item0.jpg")
        res = apply_filters("I apologize, I cannot do that.")
        st.set_fixed("dropped", "openai", "I apologize, I cannot do that.", None, 1, 5, 5, 0.0, [], "dropped",
                     res.applied, res.text)


class ReviewServer:
    def __init__(self, out: Path):
        import uvicorn

        from minigpt4.curate.review import create_app
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.app = create_app(out)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "uvicorn did not start within 30 s"
            time.sleep(0.02)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.app.state.store.close()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (apt-get install chromium)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def test_review_page_shows_why_an_automatic_reviewer_decided(browser, tmp_path):
    out = tmp_path / "run"
    make_run(out)
    with Store(out) as st:
        st.set_review("item0", "rejected", reviewer="truth-check",
                      reason={"rule": "low_recall", "recall": 0.333, "missed": ["sailboat", "hill"],
                              "hallucinated": ["zebra"], "dropped": ["A zebra watches."]})
    with ReviewServer(out) as url:
        page = browser.new_page()
        page.goto(url)
        page.wait_for_selector("#item-id:has-text('item0')")
        line = page.inner_text("#reviewer")
        assert line.startswith("decided by truth-check: low_recall")
        assert "recall 33%" in line and "missed: sailboat, hill" in line and "not in the image: zebra" in line
        page.keyboard.press("u")  # a person undoes it: the line goes with the decision
        page.wait_for_selector("#status:has-text('pending')")
        assert page.inner_text("#reviewer") == ""
        page.close()


def test_review_page_keyboard_decisions_are_saved_at_once(browser, tmp_path, artifacts):
    out = tmp_path / "run"
    make_run(out)
    with ReviewServer(out) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 720})
        page.goto(url)
        page.wait_for_selector("#item-id:has-text('item0')")
        page.wait_for_function("document.getElementById('image').naturalWidth > 0")
        assert page.inner_text("#fixed") == TEXTS[0]  # the preamble was cut by the filter rule
        assert "###" in page.inner_text("#raw")
        assert "0 / 3 reviewed" in page.inner_text("#progress-text")  # the dropped item is not up for review
        assert "fixer_preamble" in page.inner_text("#rules")
        page.screenshot(path=str(artifacts / "review-1-start.png"))

        # a = approve: saved before the page moves on.
        page.keyboard.press("a")
        page.wait_for_selector("#item-id:has-text('item1')")
        with Store(out, create=False) as st:
            assert st.get("item0").review == "approved"

        # e = edit, type, Ctrl+Enter = save. Shortcut letters typed into the editor must not fire.
        page.keyboard.press("e")
        page.wait_for_selector("#editor:visible")
        page.fill("#editor", "")
        page.keyboard.type("A sailing boat on a calm lake, hills and clouds behind it: a quiet sunny afternoon.")
        page.screenshot(path=str(artifacts / "review-2-editing.png"))
        page.keyboard.press("Control+Enter")
        page.wait_for_selector("#item-id:has-text('item2')")
        with Store(out, create=False) as st:
            item1 = st.get("item1")
        assert item1.review == "edited" and item1.review_text.startswith("A sailing boat on a calm lake")

        # r = reject; then k goes back, and a reload shows the stored decisions.
        page.keyboard.press("r")
        page.wait_for_selector("#status.rejected")
        page.keyboard.press("u")  # undo: pending again, then reject for good
        page.wait_for_selector("#progress-text:has-text('2 / 3 reviewed')")
        with Store(out, create=False) as st:
            assert st.get("item2").review is None
        page.keyboard.press("r")
        page.wait_for_selector("#status.rejected")
        page.wait_for_selector("#progress-text:has-text('3 / 3 reviewed')")
        page.keyboard.press("k")
        page.wait_for_selector("#item-id:has-text('item1')")
        assert page.inner_text("#fixed").startswith("A sailing boat on a calm lake")
        page.reload()
        page.wait_for_selector("#item-id:has-text('item0')")
        assert page.text_content("#status") == "approved"
        page.keyboard.press("j")
        page.wait_for_selector("#item-id:has-text('item1')")
        assert page.text_content("#status") == "edited"
        page.screenshot(path=str(artifacts / "review-3-done.png"))

        # Pending-only filter: nothing left.
        page.check("#pending-only")
        page.wait_for_selector("#empty:visible")
        page.close()

        # The API refuses nonsense with a clear message.
        import httpx
        r = httpx.post(f"{url}/api/items/item0/decision", json={"action": "maybe"})
        assert r.status_code == 400 and "action must be one of" in r.json()["detail"]
        r = httpx.post(f"{url}/api/items/dropped/decision", json={"action": "approve"})
        assert r.status_code == 400 and "not up for review" in r.json()["detail"]

    with Store(out, create=False) as st:
        assert [i.review for i in st.items()] == ["approved", "edited", "rejected", None]
        assert [i.reviewer for i in st.items()] == ["human", "human", "human", None]
        report = export(st, require_review=True)
    cap = json.loads((out / "filter_cap.json").read_text())
    assert cap["annotations"] == [
        {"image_id": "item0", "caption": TEXTS[0]},
        {"image_id": "item1", "caption": "A sailing boat on a calm lake, hills and clouds behind it: a quiet sunny afternoon."}]
    assert report["review"] == {"approved": 1, "edited": 1, "rejected": 1, "pending": 0, "by_reviewer": {
        "human": {"approved": 1, "edited": 1, "rejected": 1, "rules": {}}}}
    assert report["funnel"] == ("4 images -> 4 described -> 4 fixed -> 3 kept by the rules -> 2 passed review "
                                "(1 approved, 1 edited, 1 rejected) -> 2 exported (approved in review)")
