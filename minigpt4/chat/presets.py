"""Task presets: the article's use cases as one-word tasks with prompts that work.

Each `TaskPreset` is a prompt (the first two follow the original's stage-2 instructions), a few
generation overrides, and a post-processing step that turns the raw answer into what the task
promises: one short sentence for alt text, a single-line prompt for text-to-image models, a
complete HTML document for `website` (written atomically by `write_website`).
"""
from __future__ import annotations

import dataclasses
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from minigpt4.config import GenerationConfig
from minigpt4.utils import atomic_write_text

ALT_TEXT_MAX = 125  # screen readers commonly cut alt text around 125 characters
# Appended to a short factual question (the eval and the default model's training data use it).
SHORT_ANSWER = "Answer with one word or a short phrase."


@dataclass(frozen=True)
class TaskPreset:
    name: str
    prompt: str                                    # "{question}" is filled in for `ask`
    gen: dict[str, Any] = field(default_factory=dict)  # GenerationConfig overrides
    help: str = ""
    postprocess: Callable[[str], str] = staticmethod(lambda text: text.strip())  # type: ignore[assignment]
    needs_question: bool = False
    groundable: bool = False  # an answer about what the picture shows (minigpt4.chat.grounding applies)

    def build_prompt(self, question: str | None = None) -> str:
        if self.needs_question:
            if not question or not question.strip():
                raise ValueError(f"preset '{self.name}' needs a question: pass --question TEXT")
            return self.prompt.format(question=question.strip())
        return self.prompt

    def generation(self, base: GenerationConfig) -> GenerationConfig:
        """`base` with this task's overrides (explicit user flags are applied after this)."""
        return dataclasses.replace(base, **self.gen)


# --- post-processing --------------------------------------------------------------------------
_ALT_PREFIX = re.compile(r"^(alt[- ]?text\s*:\s*|(this|the)\s+(image|picture|photo)\s+(shows|depicts)\s+|"
                         r"(an?\s+)?(image|picture|photo)\s+of\s+)", re.IGNORECASE)


def shorten_alt_text(text: str, limit: int = ALT_TEXT_MAX) -> str:
    """One sentence, no "Image of" preamble (screen readers already say "image"), at most `limit`
    characters cut at a word boundary, ending with a period."""
    text = " ".join(text.replace('"', "").split())
    text = _ALT_PREFIX.sub("", text).strip()
    m = re.search(r"[.!?](\s|$)", text)
    if m:
        text = text[: m.start()]
    text = text.strip(" .,;:-")
    if len(text) > limit - 1:
        cut = text[: limit - 1]
        text = cut[: cut.rfind(" ")] if " " in cut else cut
        text = text.rstrip(" ,;:-")
    if not text:
        return ""
    return text[0].upper() + text[1:] + "."


def one_line_prompt(text: str) -> str:
    """A text-to-image prompt on one line: no "Prompt:" label, quotes or code fences."""
    text = re.sub(r"```\w*", " ", text)
    text = re.sub(r"^\s*(prompt|midjourney prompt|/imagine prompt)\s*:\s*", "", text.strip(), flags=re.IGNORECASE)
    return " ".join(text.strip().strip('"').split())


_FENCE = re.compile(r"```(?:html|HTML)?\s*\n(.*?)(?:```|$)", re.DOTALL)
_DOC = re.compile(r"<!DOCTYPE html.*?</html\s*>|<html.*?</html\s*>", re.DOTALL | re.IGNORECASE)
_TAG = re.compile(r"<\s*[a-zA-Z][^>]*>")


def extract_html(answer: str, title: str = "Page") -> str:
    """A complete HTML document from the model's answer: the ```html block or <html> document it
    wrote, a fragment wrapped in a full document, or (no markup at all) its text as paragraphs."""
    m = _FENCE.search(answer)
    body = m.group(1).strip() if m else answer.strip()
    doc = _DOC.search(body)
    if doc:
        page = doc.group(0)
        if not page.lower().startswith("<!doctype"):
            page = "<!DOCTYPE html>\n" + page
        return page + "\n"
    if not _TAG.search(body):
        paras = [p.strip() for p in body.split("\n\n") if p.strip()] or ["(the model wrote no HTML)"]
        body = "\n".join(f"<p>{html.escape(p)}</p>" for p in paras)
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(title)}</title>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def write_website(answer: str, path: str | Path, title: str | None = None) -> Path:
    """Write the page from `answer` to `path` atomically; returns the path."""
    path = Path(path)
    atomic_write_text(path, extract_html(answer, title or path.stem))
    return path


# --- the presets ------------------------------------------------------------------------------
PRESETS: dict[str, TaskPreset] = {p.name: p for p in [
    TaskPreset("describe",
               "Describe this image in detail. Give as many details as possible. Say everything you see.",
               groundable=True, help="a detailed description of the image"),
    TaskPreset("ask", "{question}", needs_question=True, groundable=True, help="answer a free question about the image"),
    TaskPreset("alt-text",
               "Write alt text for this image for a blind reader: one short sentence, under 20 words, "
               "that says what the image shows. Do not start with 'Image of'.",
               gen={"max_new_tokens": 48, "do_sample": False}, postprocess=shorten_alt_text, groundable=True,
               help=f"one short sentence (<= {ALT_TEXT_MAX} characters) for screen readers"),
    TaskPreset("recipe",
               "This is a photo of a prepared dish. Write a recipe for it. Start with the name of the "
               "dish as a title, then list the ingredients with amounts under 'Ingredients:', then give "
               "numbered cooking steps under 'Steps:'.",
               gen={"max_new_tokens": 400}, help="a recipe (title, ingredients, steps) from a dish photo"),
    TaskPreset("prompt",
               "Write a prompt for a text-to-image model (like Midjourney's /describe) that would recreate "
               "this image: one line of comma-separated phrases naming the subject, setting, style, "
               "lighting, colors and composition.",
               gen={"max_new_tokens": 96}, postprocess=one_line_prompt,
               help="a text-to-image prompt that would recreate the image"),
    TaskPreset("website",
               "This is a hand-drawn sketch of a web page. Write the complete HTML code of this web page, "
               "with inline CSS, in one ```html code block. Use the texts written in the sketch.",
               gen={"max_new_tokens": 800, "temperature": 0.7, "repetition_penalty": 1.0},
               postprocess=lambda t: extract_html(t),
               help="a complete HTML file from a hand-drawn page sketch"),
]}


def get_preset(name: str) -> TaskPreset:
    if name not in PRESETS:
        raise ValueError(f"unknown task preset '{name}'; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]
