"""Hand-drawn web page sketches -> the HTML they stand for, and an HTML structure metric."""

from __future__ import annotations

import html as _html
import random
import re
from difflib import SequenceMatcher
from html.parser import HTMLParser

from PIL import Image, ImageDraw

from . import render
from .textgen import NUMBER_WORDS, a, join_list, pick

TITLES = ["My Blog", "Pet Shop", "Travel Notes", "Coffee House", "Portfolio", "Recipes", "Green Garden",
          "Bike Club", "Music Fest", "Photo Gallery", "Book Club", "Yoga Studio", "Bakery", "Tech News",
          "Hiking Trips", "Art School", "Game Night", "Fresh Market", "City Tours", "Dog Walkers"]
LINKS = ["Home", "About", "Blog", "Shop", "Contact", "News", "Menu", "Login", "Help", "Events", "Gallery", "FAQ"]
BUTTONS = ["Sign up", "Buy now", "Send", "Learn more", "Subscribe", "Go", "Book now", "Read more", "Join",
           "Order", "Search", "Start"]
LABELS = ["Name", "Email", "Password", "Phone", "City", "Message"]
HEADINGS = ["News", "Prices", "Team", "Photos", "Events", "Offers", "Ideas", "Tips", "Plans", "Reviews"]
# Scribbled lines stand for text the sketch cannot show. Their HTML text is a fixed function of what is
# drawn (a paragraph: one sentence per scribbled line), so a reader of the sketch can write it exactly
# and knows where it ends. (A random window of a running lorem text, as before, can only be ended by
# counting words: the model looped it until the token budget cut the page.)
FILLER = ["Lorem ipsum dolor sit amet.", "Consectetur adipiscing elit.", "Sed do eiusmod tempor.",
          "Ut labore et dolore magna aliqua."]
SUBTITLE_TEXT = "Ut enim ad minim veniam."
COLUMN_TEXT = "Quis nostrud exercitation."

INK = [(40, 40, 45), (30, 45, 110), (60, 60, 60), (25, 25, 25)]
PAPER = [(252, 251, 245), (248, 248, 248), (250, 246, 232), (244, 247, 252)]


def make_truth(rng: random.Random) -> dict:
    blocks = []
    if rng.random() < 0.8:
        blocks.append({"type": "nav", "logo": rng.random() < 0.5,
                       "links": rng.sample(LINKS, rng.randint(2, 4))})
    blocks.append({"type": "header", "title": pick(rng, TITLES), "subtitle": rng.random() < 0.5})
    body = rng.sample(["image", "paragraph", "columns", "form", "buttons", "paragraph", "columns"],
                      rng.randint(1, 3))
    seen = set()
    for b in body:
        if b in seen and b != "paragraph":
            continue
        seen.add(b)
        if b == "image":
            blocks.append({"type": "image"})
        elif b == "paragraph":
            blocks.append({"type": "paragraph", "lines": rng.randint(2, 4)})
        elif b == "columns":
            n = rng.randint(2, 3)
            has_img, has_btn = rng.random() < 0.6, rng.random() < 0.4
            blocks.append({"type": "columns", "columns": [
                {"image": has_img, "heading": hd, "button": pick(rng, BUTTONS) if has_btn else None}
                for hd in rng.sample(HEADINGS, n)]})
        elif b == "form":
            blocks.append({"type": "form", "fields": rng.sample(LABELS[:5], rng.randint(1, 3)),
                           "textarea": rng.random() < 0.3, "button": pick(rng, ["Send", "Submit", "Sign up", "Login"])})
        elif b == "buttons":
            blocks.append({"type": "buttons", "buttons": rng.sample(BUTTONS, rng.randint(1, 2))})
    if rng.random() < 0.75:
        blocks.append({"type": "footer"})
    for b in blocks:  # placeholder texts used in the HTML (drawn as squiggles)
        if b["type"] == "paragraph":
            b["text"] = " ".join(FILLER[:b["lines"]])
        if b["type"] == "header" and b["subtitle"]:
            b["subtitle_text"] = SUBTITLE_TEXT
        if b["type"] == "columns":
            for c in b["columns"]:
                c["text"] = COLUMN_TEXT
        if b["type"] == "footer":
            b["text"] = "© 2024 " + pick(rng, TITLES)
    return {"kind": "sketch", "blocks": blocks}


# ----------------------------------------------------------------------------- drawing

_HEIGHTS = {"nav": 0.09, "header": 0.16, "image": 0.26, "paragraph": 0.05, "columns": 0.33, "form": 0.08,
            "buttons": 0.1, "footer": 0.08}


def _block_height(b) -> float:
    if b["type"] == "paragraph":
        return 0.04 + 0.035 * b["lines"]
    if b["type"] == "form":
        return 0.06 + 0.075 * (len(b["fields"]) + (1.5 if b["textarea"] else 0)) + 0.08
    if b["type"] == "header":
        return 0.13 + (0.05 if b["subtitle"] else 0)
    if b["type"] == "columns":
        c = b["columns"][0]
        return 0.12 + (0.13 if c["image"] else 0) + (0.07 if c["button"] else 0)
    return _HEIGHTS[b["type"]]


def render_sketch(t: dict, S: int, rng: random.Random) -> Image.Image:
    paper = pick(rng, PAPER)
    ink = pick(rng, INK)
    im = Image.new("RGB", (S, S), paper)
    d = ImageDraw.Draw(im)
    if rng.random() < 0.4:  # ruled notebook paper
        for y in range(int(S * 0.06), S, max(6, S // 18)):
            d.line((0, y, S, y), fill=render.mix(paper, (150, 180, 220), 0.35))
    lw = max(1, round(S / 140))
    m = S * 0.05
    x0, x1 = m, S - m
    wants = [_block_height(b) for b in t["blocks"]]
    gap = 0.025
    scale = min(1.0, (0.9 - gap * (len(wants) - 1)) / sum(wants))
    y = S * 0.05
    render.wobbly_rect(d, (m * 0.5, m * 0.5, S - m * 0.5, S - m * 0.5), rng, ink, lw, amp=1.0)
    for b, h in zip(t["blocks"], wants):
        h = h * scale * S
        _draw_block(im, d, b, (x0, y, x1, y + h), rng, ink, lw, S)
        b["box"] = [int(x0), int(y), int(x1), int(y + h)]
        y += h + gap * scale * S
    return im


def _xbox(d, box, rng, ink, lw):
    render.wobbly_rect(d, box, rng, ink, lw)
    x0, y0, x1, y1 = box
    render.wobbly_line(d, (x0, y0), (x1, y1), rng, ink, lw)
    render.wobbly_line(d, (x1, y0), (x0, y1), rng, ink, lw)


def _button(im, d, box, label, rng, ink, lw, S):
    render.wobbly_rect(d, box, rng, ink, lw)
    x0, y0, x1, y1 = box
    fs = max(7, int((y1 - y0) * 0.55))
    tw, th = render.text_size(label, fs)
    while tw > (x1 - x0) * 0.9 and fs > 6:
        fs -= 1
        tw, th = render.text_size(label, fs)
    render.handwritten_text(im, ((x0 + x1 - tw) / 2, (y0 + y1) / 2 - fs * 0.6), label, fs, rng, ink)


def _draw_block(im, d, b, box, rng, ink, lw, S):
    x0, y0, x1, y1 = box
    h = y1 - y0
    typ = b["type"]
    if typ == "nav":
        render.wobbly_rect(d, box, rng, ink, lw)
        x = x0 + S * 0.02
        fs = max(7, int(h * 0.45))
        if b["logo"]:
            r = h * 0.32
            d.ellipse((x, (y0 + y1) / 2 - r, x + 2 * r, (y0 + y1) / 2 + r), outline=ink, width=lw)
            x += 2 * r + S * 0.03
        xr = x1 - S * 0.02
        for link in reversed(b["links"]):
            tw, _ = render.text_size(link, fs)
            xr -= tw
            if xr < x:
                break
            render.handwritten_text(im, (xr, (y0 + y1) / 2 - fs * 0.6), link, fs, rng, ink)
            xr -= S * 0.035
    elif typ == "header":
        fs = max(9, int(min(h * 0.5 if b["subtitle"] else h * 0.6, S * 0.09)))
        tw, _ = render.text_size(b["title"], fs)
        tx = pick(rng, [x0 + S * 0.01, (x0 + x1 - tw) / 2])
        render.handwritten_text(im, (tx, y0 + h * 0.05), b["title"], fs, rng, ink)
        render.wobbly_line(d, (tx, y0 + h * 0.05 + fs * 1.15), (tx + tw, y0 + h * 0.05 + fs * 1.15), rng, ink, lw)
        if b["subtitle"]:
            yy = y0 + h * 0.82
            render.squiggle(d, x0 + S * 0.01, yy, x0 + (x1 - x0) * rng.uniform(0.5, 0.8), rng, ink, lw, S / 110)
    elif typ == "image":
        _xbox(d, (x0 + S * 0.01, y0, x1 - S * 0.01, y1), rng, ink, lw)
    elif typ == "paragraph":
        n = b["lines"]
        for i in range(n):
            yy = y0 + h * (i + 0.7) / (n + 0.4)
            end = x1 - S * 0.01 - (rng.uniform(0.1, 0.4) * (x1 - x0) if i == n - 1 else rng.uniform(0, S * 0.03))
            render.squiggle(d, x0 + S * 0.01, yy, end, rng, ink, lw, S / 120)
    elif typ == "columns":
        cols = b["columns"]
        n = len(cols)
        g = S * 0.03
        w = (x1 - x0 - g * (n - 1)) / n
        for i, c in enumerate(cols):
            cx0 = x0 + i * (w + g)
            cx1 = cx0 + w
            render.wobbly_rect(d, (cx0, y0, cx1, y1), rng, ink, lw, amp=0.8)
            yy = y0 + S * 0.015
            if c["image"]:
                ih = S * 0.11
                _xbox(d, (cx0 + S * 0.015, yy, cx1 - S * 0.015, yy + ih), rng, ink, lw)
                yy += ih + S * 0.015
            fs = max(7, int(S * 0.045))
            while render.text_size(c["heading"], fs)[0] > w * 0.85 and fs > 6:
                fs -= 1
            render.handwritten_text(im, (cx0 + S * 0.015, yy), c["heading"], fs, rng, ink)
            yy += fs * 1.4
            for k in range(2):
                render.squiggle(d, cx0 + S * 0.015, yy + k * S * 0.03, cx1 - S * 0.015 - k * w * 0.3, rng, ink, 1, S / 140)
            yy += S * 0.065
            if c["button"]:
                bh = min(S * 0.055, y1 - yy - S * 0.01)
                if bh > 6:
                    _button(im, d, (cx0 + S * 0.015, yy, cx0 + w * 0.8, yy + bh), c["button"], rng, ink, lw, S)
    elif typ == "form":
        yy = y0
        fs = max(7, int(S * 0.038))
        for lab in b["fields"]:
            render.handwritten_text(im, (x0 + S * 0.01, yy + S * 0.012), lab, fs, rng, ink)
            render.wobbly_rect(d, (x0 + S * 0.25, yy + S * 0.005, x0 + (x1 - x0) * 0.85, yy + S * 0.06), rng, ink, lw)
            yy += S * 0.075
        if b["textarea"]:
            render.handwritten_text(im, (x0 + S * 0.01, yy + S * 0.012), "Message", fs, rng, ink)
            render.wobbly_rect(d, (x0 + S * 0.25, yy + S * 0.005, x0 + (x1 - x0) * 0.85, yy + S * 0.1), rng, ink, lw)
            yy += S * 0.112
        _button(im, d, (x0 + S * 0.25, yy + S * 0.005, x0 + S * 0.48, yy + S * 0.065), b["button"], rng, ink, lw, S)
    elif typ == "buttons":
        x = x0 + S * 0.01
        for lab in b["buttons"]:
            bw = S * 0.3
            _button(im, d, (x, y0 + h * 0.1, x + bw, y0 + h * 0.9), lab, rng, ink, lw, S)
            x += bw + S * 0.05
    elif typ == "footer":
        render.wobbly_line(d, (x0, y0), (x1, y0), rng, ink, lw)
        render.squiggle(d, (x0 + x1) / 2 - S * 0.15, y0 + h * 0.55, (x0 + x1) / 2 + S * 0.15, rng, ink, 1, S / 140)


# ----------------------------------------------------------------------------- HTML

_CSS = ("body{font-family:sans-serif;margin:0 auto;max-width:960px;padding:16px}"
        "nav{display:flex;justify-content:space-between;align-items:center;border:1px solid #ccc;padding:8px}"
        "nav a{margin-left:16px}.row{display:flex;gap:16px}.col{flex:1;border:1px solid #ccc;padding:8px}"
        "img{max-width:100%;background:#ddd}form label{display:block;margin-top:8px}"
        "footer{border-top:1px solid #ccc;margin-top:16px;text-align:center}")


def to_html(t: dict) -> str:
    e = _html.escape
    title = next(b["title"] for b in t["blocks"] if b["type"] == "header")
    out = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{e(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>"]
    main_open = False
    for b in t["blocks"]:
        typ = b["type"]
        if typ not in ("nav", "header", "footer") and not main_open:
            out.append("<main>")
            main_open = True
        if typ == "footer" and main_open:
            out.append("</main>")
            main_open = False
        if typ == "nav":
            out.append("<nav>")
            if b["logo"]:
                out.append('  <img src="logo.png" alt="Logo" width="40" height="40">')
            out.append("  " + " ".join(f'<a href="#{e(l.lower())}">{e(l)}</a>' for l in b["links"]))
            out.append("</nav>")
        elif typ == "header":
            out.append("<header>")
            out.append(f"  <h1>{e(b['title'])}</h1>")
            if b["subtitle"]:
                out.append(f"  <p>{e(b['subtitle_text'])}</p>")
            out.append("</header>")
        elif typ == "image":
            out.append('<img src="hero.jpg" alt="Banner image" width="900" height="300">')
        elif typ == "paragraph":
            out.append(f"<p>{e(b['text'])}</p>")
        elif typ == "columns":
            out.append('<div class="row">')
            for c in b["columns"]:
                out.append('  <div class="col">')
                if c["image"]:
                    out.append(f'    <img src="{e(c["heading"].lower())}.jpg" alt="{e(c["heading"])}">')
                out.append(f"    <h2>{e(c['heading'])}</h2>")
                out.append(f"    <p>{e(c['text'])}</p>")
                if c["button"]:
                    out.append(f"    <button>{e(c['button'])}</button>")
                out.append("  </div>")
            out.append("</div>")
        elif typ == "form":
            out.append("<form>")
            for lab in b["fields"]:
                fid = lab.lower()
                typ_ = {"Email": "email", "Password": "password", "Phone": "tel"}.get(lab, "text")
                out.append(f'  <label for="{fid}">{lab}</label>')
                out.append(f'  <input id="{fid}" name="{fid}" type="{typ_}">')
            if b["textarea"]:
                out.append('  <label for="message">Message</label>')
                out.append('  <textarea id="message" name="message"></textarea>')
            out.append(f'  <button type="submit">{e(b["button"])}</button>')
            out.append("</form>")
        elif typ == "buttons":
            out.append("<div>")
            out.append("  " + " ".join(f"<button>{e(x)}</button>" for x in b["buttons"]))
            out.append("</div>")
        elif typ == "footer":
            out.append("<footer>")
            out.append(f"  <p>{e(b['text'])}</p>")
            out.append("</footer>")
    if main_open:
        out.append("</main>")
    out += ["</body>", "</html>"]
    return "\n".join(out) + "\n"


SEMANTIC = {"nav", "header", "main", "footer", "section", "article", "aside", "h1", "h2", "h3", "h4", "p",
            "img", "button", "form", "input", "textarea", "select", "label", "a", "ul", "ol", "li", "table"}
_VOID = {"img", "input", "br", "hr", "meta", "link", "source", "area", "base", "col", "embed", "wbr"}


class _SigParser(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, str | None]] = []  # (tag, semantic token or None)
        self.tokens: list[str] = []
        self.errors = 0

    def _token(self, tag, attrs):
        if tag in ("div", "section"):
            cls = " ".join((v or "") for k, v in attrs if k == "class").lower().split()
            if any(c in ("row", "columns", "grid", "cols", "flex") for c in cls):
                return "row"
            if any(c.startswith("col") for c in cls):
                return "col"
            return "section" if tag == "section" else None
        if tag in ("h3", "h4"):
            return "h2"
        if tag in ("ul", "ol", "li", "label", "main"):
            return None  # presentational wrappers vary a lot between authors
        if tag == "input" and dict(attrs).get("type") in ("submit", "button"):
            return "button"
        return tag if tag in SEMANTIC else None

    def handle_starttag(self, tag, attrs):
        tok = self._token(tag, attrs)
        if tok:
            parent = next((t for _, t in reversed(self.stack) if t), "body")
            self.tokens.append(f"{parent}>{tok}")
        if tag not in _VOID:
            self.stack.append((tag, tok))

    def handle_startendtag(self, tag, attrs):
        tok = self._token(tag, attrs)
        if tok:
            parent = next((t for _, t in reversed(self.stack) if t), "body")
            self.tokens.append(f"{parent}>{tok}")

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                if i != len(self.stack) - 1:
                    self.errors += 1
                del self.stack[i:]
                return
        self.errors += 1


def html_structure(html: str) -> list[str]:
    """Structure signature of an HTML string: semantic elements in document order, each as
    "parent>element" (e.g. "nav>a", "header>h1", "row>col", "col>img", "form>input")."""
    p = _SigParser()
    try:
        p.feed(html or "")
        p.close()
    except Exception:
        return []
    return p.tokens


def structure_match(pred_html: str, true_html: str) -> float:
    """Similarity in [0, 1] of the two pages' structure signatures (difflib ratio; 1 = same)."""
    a_, b_ = html_structure(pred_html), html_structure(true_html)
    if not a_ and not b_:
        return 1.0
    return SequenceMatcher(None, a_, b_, autojunk=False).ratio()


def html_is_valid(html: str) -> bool:
    """Balanced tags, one html/head/body and a doctype (stdlib parser, lenient HTML5 rules)."""
    p = _SigParser()
    p.feed(html)
    p.close()
    low = html.lower()
    return (p.errors == 0 and not p.stack and low.lstrip().startswith("<!doctype html>")
            and len(re.findall(r"<body[\s>]", low)) == 1 and len(re.findall(r"<head[\s>]", low)) == 1
            and len(re.findall(r"<html[\s>]", low)) == 1)


# ----------------------------------------------------------------------------- texts

def _parts(t) -> list[str]:
    out = []
    for b in t["blocks"]:
        typ = b["type"]
        if typ == "nav":
            out.append(f"a navigation bar with {NUMBER_WORDS[len(b['links'])]} links"
                       + (" and a round logo" if b["logo"] else ""))
        elif typ == "header":
            out.append(f'a large title that reads "{b["title"]}"' + (" with a subtitle" if b["subtitle"] else ""))
        elif typ == "image":
            out.append("a big image placeholder drawn as a box with an X")
        elif typ == "paragraph":
            out.append(f"a paragraph of {NUMBER_WORDS[b['lines']]} lines of scribbled text")
        elif typ == "columns":
            c = b["columns"][0]
            extra = [x for x, f in (("an image", c["image"]), ("a heading", True), ("some text", True),
                                    ("a button", c["button"])) if f]
            out.append(f"{NUMBER_WORDS[len(b['columns'])]} columns, each with {join_list(extra)}")
        elif typ == "form":
            out.append(f"a form with {join_list([f.lower().replace('phone', 'phone number') for f in b['fields']])} fields"
                       + (", a message box" if b["textarea"] else "") + f' and a "{b["button"]}" button')
        elif typ == "buttons":
            out.append(join_list([f'a "{x}" button' for x in b["buttons"]]))
        elif typ == "footer":
            out.append("a footer at the bottom")
    return out


def caption(t, rng) -> str:
    parts = _parts(t)
    short = [p.split(",")[0].split(" with ")[0] if rng.random() < 0.6 else p for p in parts]
    lead = pick(rng, ["a hand-drawn sketch of a web page with ", "a pencil wireframe of a website: ",
                      "a rough drawing of a website layout with ", "hand-drawn mockup of a web page showing "])
    return " ".join((lead + join_list(short)).lower().split()[:50])


def description(t, rng) -> str:
    parts = _parts(t)
    s = [pick(rng, ["This is a hand-drawn sketch of a web page on paper.",
                    "The image is a rough pencil wireframe of a website.",
                    "Someone has sketched the layout of a web page by hand."])]
    order = ["At the top there is", "Below it is", "Next comes", "Under that there is", "Then there is",
             "Further down is"]
    for i, p in enumerate(parts):
        lead = order[0] if i == 0 else (pick(rng, order[1:]) if i < len(parts) - 1 else "Finally, there is")
        s.append(f"{lead} {p}.")
    s.append(pick(rng, ["The lines are wobbly and the body text is drawn as squiggles.",
                        "Text blocks are scribbled as wavy lines, and image areas are boxes with an X.",
                        "It is a simple layout drawn with a dark pen."]))
    return " ".join(s)


def qa(t, rng) -> list[dict]:
    types = {b["type"] for b in t["blocks"]}
    out = []
    for name, key in (("a navigation bar", "nav"), ("a footer", "footer"), ("a form", "form"),
                      ("columns", "columns"), ("a large image", "image")):
        out.append({"question": f"Does the page have {name}?", "answer": "yes" if key in types else "no",
                    "type": "element", "target": key})
    title = next(b["title"] for b in t["blocks"] if b["type"] == "header")
    out.append({"question": "What is the title of the page?", "answer": title.lower(), "type": "text",
                "target": "h1"})
    for b in t["blocks"]:
        if b["type"] == "columns":
            out.append({"question": "How many columns are there?", "answer": NUMBER_WORDS[len(b["columns"])],
                        "type": "count", "target": "col"})
        if b["type"] == "nav":
            out.append({"question": "How many links are in the navigation bar?",
                        "answer": NUMBER_WORDS[len(b["links"])], "type": "count", "target": "nav>a"})
    rng.shuffle(out)
    return out


def alt_text(t, rng, limit=125) -> str:
    title = next(b["title"] for b in t["blocks"] if b["type"] == "header")
    kinds = []
    for b in t["blocks"]:
        k = {"nav": "nav bar", "image": "image", "paragraph": "text", "columns": f"{len(b.get('columns', []))} columns",
             "form": "form", "buttons": "buttons", "footer": "footer"}.get(b["type"])
        if k and k not in kinds:
            kinds.append(k)
    for k in range(len(kinds), -1, -1):
        s = f'Hand-drawn web page sketch titled "{title}"' + (f" with {join_list(kinds[:k])}." if k else ".")
        if len(s) <= limit:
            return s
    return s[:limit]


def sample(seed: int, split: str, S: int):
    from .core import Sample, rng_for
    rng = rng_for("sketch", split, seed)
    t = make_truth(rng)
    image = render_sketch(t, S, rng)
    html = to_html(t)
    t.update(split=split, seed=seed, size=S, structure=html_structure(html))
    trng = rng_for("sketch", split, seed, "text")
    return Sample(kind="sketch", seed=seed, split=split, image=image, truth=t, caption=caption(t, trng),
                  description=description(t, trng), qa=qa(t, trng), alt_text=alt_text(t, trng), html=html)
