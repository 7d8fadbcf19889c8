"""QA scoring that is fair to free text.

A model rarely answers "three"; it says "There are 3 circles." or "Yes, I can see one." So the
answer is normalised per question type before it is compared with the world's canonical answer:
numbers as words or digits ("a single" = one, "none" = zero), yes/no variants ("Yes, there is",
"I can't see one"), object synonyms and plurals from the world vocabulary ("puppy" = "dog"),
colour synonyms ("grey"), positions ("upper left" = "top left"). Anything not handled here falls
back to the world's own lenient `answer_correct`.
"""
from __future__ import annotations

import re

from minigpt4.world.metrics import answer_correct as world_answer_correct
from minigpt4.world.textgen import NUMBER_WORDS, canonical_position
from minigpt4.world.vocab import COLOR_SYNONYMS, COLORS, find_mentions

_NUMBERS = {w: i for i, w in enumerate(NUMBER_WORDS)}
_NUMBERS.update({"none": 0, "no": 0, "single": 1, "once": 1, "a": 1, "an": 1, "pair": 2, "couple": 2,
                 "eleven": 11, "twelve": 12, "dozen": 12})
_NEG = re.compile(r"\b(no|not|none|nope|nothing|never|neither|without|cannot|can't|isn't|aren't|doesn't|"
                  r"don't|dont|there's no|n't)\b")
_YES = re.compile(r"\b(yes|yeah|yep|yup|sure|correct|indeed|there is|there are|there's|i see|i can see|"
                  r"it has|it does|it contains|contains|includes|has|does)\b")
_PREAMBLE = re.compile(r"^(the answer is|answer|a)\s*[:\-]?\s+", re.IGNORECASE)


def normalize(text: str) -> str:
    """Lower case, unified apostrophes, words separated by single spaces, no preamble."""
    t = str(text).lower().replace("’", "'").replace("-", " ")
    t = re.sub(r"[^a-z0-9' ]", " ", t)
    t = " ".join(t.split())
    return _PREAMBLE.sub("", t) if t.startswith(("the answer is", "answer")) else t


def parse_yes_no(text: str) -> str | None:
    t = normalize(text)
    if not t:
        return None
    first = t.split()[0]
    if first in ("yes", "yeah", "yep", "yup", "sure", "correct"):
        return "yes"
    if first in ("no", "nope", "none"):
        return "no"
    if _NEG.search(t):
        return "no"
    if _YES.search(t):
        return "yes"
    return None


def parse_count(text: str) -> int | None:
    """The first number in the answer: digits, number words, "a single", "none", "a pair"."""
    words = normalize(text).split()
    for i, w in enumerate(words):
        if w.isdigit():
            return int(w)
        if w in _NUMBERS and w not in ("a", "an", "no"):
            return _NUMBERS[w]
    # "a"/"an"/"no" count only before an object word ("there is a sun", "no circles")
    for i, w in enumerate(words[:-1]):
        if w in ("a", "an", "no") and find_mentions(" ".join(words[i + 1:i + 4])):
            return _NUMBERS[w]
    return None


def parse_color(text: str) -> str | None:
    for w in normalize(text).split():
        w = COLOR_SYNONYMS.get(w, w)
        if w in COLORS:
            return w
    return None


def _names(text: str) -> set[str]:
    ms = find_mentions(normalize(text))
    return set().union(*[n for _, n in ms]) if ms else set()


def answer_correct(pred: str, answer: str, qtype: str | None = None) -> bool:
    """Is the free-text `pred` a correct answer to a question with canonical `answer`?"""
    p, a = normalize(pred), normalize(answer)
    if not p:
        return False
    if a in ("yes", "no"):
        return parse_yes_no(p) == a
    if qtype == "position" or canonical_position(a) == a:
        got = canonical_position(p)
        return got is not None and got == canonical_position(a)
    if qtype == "count" or a in _NUMBERS or a.isdigit():
        want = int(a) if a.isdigit() else _NUMBERS.get(a)
        return want is not None and parse_count(p) == want
    if qtype == "color" or a in COLORS:
        return parse_color(p) == COLOR_SYNONYMS.get(a, a)
    want = _names(a)
    if want and want & _names(p):  # same object by synonym / plural ("puppies" = "dog")
        return True
    return world_answer_correct(pred, answer, qtype)


# The attribute questions the issue names: presence of an object, its color, count and position.
ATTRIBUTE_TYPES = ("presence", "object", "color", "count", "position")


def qa_scores(preds: list[str], qa: list[dict], heldout: set[str] | frozenset = frozenset()) -> dict[str, float]:
    """Accuracy overall ("all"), over attribute questions ("attribute") and per question type; with `heldout` (object
    kinds no training image shows), attribute accuracy on questions about those kinds ("attribute:heldout") and the
    rest ("attribute:seen"): a model can only name what it was shown."""
    if len(preds) != len(qa):
        raise ValueError(f"{len(preds)} answers for {len(qa)} questions")
    hits: dict[str, list[int]] = {}
    for p, q in zip(preds, qa):
        ok = int(answer_correct(p, q["answer"], q.get("type")))
        keys = ["all", q.get("type", "other")] + (["attribute"] if q.get("type") in ATTRIBUTE_TYPES else [])
        if heldout and q.get("type") in ATTRIBUTE_TYPES:
            keys.append("attribute:heldout" if q.get("target") in heldout else "attribute:seen")
        for k in keys:
            hits.setdefault(k, []).append(ok)
    return {k: sum(v) / len(v) for k, v in hits.items()}
