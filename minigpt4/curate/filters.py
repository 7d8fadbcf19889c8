"""The paper's post-fix rules: each rule has a name, repairs or drops, and is counted in the report.

After ChatGPT fixed the descriptions, the MiniGPT-4 authors removed what the fixer left behind:
apologies ("I'm sorry I made a mistake...", "I apologize..."), the fixer talking about itself
("Here is the corrected paragraph:"), and results that are empty or too short. Repair rules
cut the offending sentences; drop rules remove the item. Rules run in order and stop at the
first drop, so every dropped item has exactly one reason.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

from minigpt4.curate.clean import normalize_whitespace, split_sentences


@dataclass
class FilterConfig:
    min_words: int = 20      # the paper's kept descriptions are long paragraphs; fewer words is a failure
    min_chars: int = 80


@dataclass
class FilterResult:
    kept: bool
    text: str
    applied: list[dict[str, str]] = field(default_factory=list)  # [{"rule": name, "action": "repair"|"drop"}]

    @property
    def dropped_by(self) -> str | None:
        return next((a["rule"] for a in self.applied if a["action"] == "drop"), None)


def _rx(*patterns: str) -> re.Pattern:
    return re.compile("|".join(patterns), re.IGNORECASE)


# The model's or fixer's apologies (the paper's examples, plus the usual variants).
APOLOGY = _rx(r"\bI'?\s?a?m sorry\b", r"\bI apologi[sz]e\b", r"\bmy apologies\b", r"\bI made a mistake\b",
              r"\bsorry for (the|any) (confusion|mistake|error)")
# The fixer refusing, or answering about the task instead of fixing the paragraph.
REFUSAL = _rx(r"\bas an ai\b", r"\bI (can ?not|can't|am unable to|'m unable to) (fix|help|see|view|provide|assist)",
              r"\bthere is no (given )?paragraph\b", r"\bplease provide (the|a) paragraph\b",
              r"\bno errors? (were|was) found\b")
# A leading line where the fixer introduces its answer.
PREAMBLE = re.compile(r"^\s*(sure[!,.]?\s*)?(here(?:'s| is) (?:the |a |your )?(?:corrected|fixed|revised|rewritten|"
                      r"cleaned|edited)(?: version of the)?(?: paragraph| text| version| description)?"
                      r"|(?:corrected|fixed|revised) (?:paragraph|text|version))\s*[:\-]\s*", re.IGNORECASE)
# Sentences where the fixer describes its own edits.
SELF_TALK = _rx(r"^\s*\(?(note|explanation|changes( made)?)\s*:", r"\bI (have |'ve )?(removed|corrected|fixed|rewrote|"
                r"rewritten|edited|deleted|changed)\b", r"\bthe (input |given |original )?paragraph (is|was) already "
                r"correct\b", r"\b(the )?(corrected|revised|fixed) (paragraph|version|text)\b")


def _drop_sentences(text: str, pattern: re.Pattern) -> str:
    return " ".join(s for s in split_sentences(text) if not pattern.search(s))


def unquote(text: str) -> str:
    """A fixer that quotes its answer: "..." around the whole text."""
    text = text.strip()
    if len(text) > 1 and text[0] in "\"“" and text[-1] in "\"”" and text.count('"') <= 2:
        text = text[1:-1].strip()
    return text


def strip_preamble(text: str) -> str:
    return unquote(PREAMBLE.sub("", text, count=1))


@dataclass(frozen=True)
class Rule:
    name: str
    action: str  # "repair": returns the new text; "drop": returns True to drop
    fn: Callable[[str, FilterConfig], object]
    doc: str


RULES: tuple[Rule, ...] = (
    Rule("fixer_preamble", "repair", lambda t, c: strip_preamble(t),
         'the fixer introduced its answer ("Here is the corrected paragraph:")'),
    Rule("fixer_self_talk", "repair", lambda t, c: unquote(_drop_sentences(t, SELF_TALK)),
         'the fixer talked about its edits ("I removed the repeated sentences.")'),
    Rule("fixer_refusal", "drop", lambda t, c: bool(REFUSAL.search(t)),
         "the fixer refused or answered about the task instead of fixing it"),
    Rule("apology", "drop", lambda t, c: bool(APOLOGY.search(t)),
         'an apology is left ("I\'m sorry I made a mistake...", "I apologize...")'),
    Rule("empty", "drop", lambda t, c: not t.strip(), "nothing is left"),
    Rule("too_short", "drop", lambda t, c: len(t.split()) < c.min_words or len(t) < c.min_chars,
         "fewer than min_words words or min_chars characters"),
)
RULE_NAMES = tuple(r.name for r in RULES)


def apply_filters(text: str | None, cfg: FilterConfig | None = None) -> FilterResult:
    cfg = cfg or FilterConfig()
    text = normalize_whitespace(text or "")
    applied: list[dict[str, str]] = []
    for rule in RULES:
        if rule.action == "repair":
            new = normalize_whitespace(rule.fn(text, cfg))
            if new != text:
                applied.append({"rule": rule.name, "action": "repair"})
                text = new
        elif rule.fn(text, cfg):
            applied.append({"rule": rule.name, "action": "drop"})
            return FilterResult(False, text, applied)
    return FilterResult(True, text, applied)
