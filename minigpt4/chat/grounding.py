"""Grounded answers: an object the vision side did not read is not named.

A model with a word readout tells the LLM each region's object name ("top left: two small red apple"); the LLM still
invents names, mostly where a region reads "thing" (a kind the readout never learned: session 27 counted 118 of 127
invented objects there). Grounding rewrites every object word of the readout's vocabulary that the readout did not
read in the answer's images to "thing(s)" ("an apple" -> "a thing"), the post-hoc correction of Woodpecker (Yin et
al. 2023) with the model's own readout as the detector. Words outside the readout's vocabulary are left alone: the
model cannot have read them either way. Only for answers about what is in the picture (describe, alt text, questions);
a recipe names pantry items no picture shows.
"""
from __future__ import annotations

import re
from functools import lru_cache

from minigpt4.world.regions import unname_text
from minigpt4.world.vocab import find_mentions, mention_table


@lru_cache(maxsize=None)
def _hold_words() -> int:
    """Words of an unfinished answer that later tokens can still rewrite: the longest object name ("ice cream cone")
    and the article before it ("an" -> "a")."""
    return 1 + max(len(form.split()) for form in mention_table())


def ground_text(text: str, read: frozenset[str] | set[str], vocab: frozenset[str] | set[str],
                word: str = "thing") -> str:
    """`text` with each mention of a `vocab` name that is not in `read` as `word` (numbers and articles kept right)."""
    gone = {n for _, names in find_mentions(text) if names & vocab and not names & read for n in names} - set(read)
    return unname_text(text, gone, word) if gone else text


# What a question asks for that names things no picture shows (the presets recipe, website and prompt are never
# grounded; a free question asking for the same is not either): a recipe's pantry items, a page's markup, a style.
_UNGROUNDED_ASKS = re.compile(
    r"\brecipes?\b|\bhow (?:do|can|would|should) (?:i|you|we) (?:make|prepare)\b|\b(?:cook|bake)\b"
    r"|\bhtml\b|\bcss\b|\bweb ?pages?\b|\bwebsites?\b"
    r"|\bprompts?\b|\btext-to-image\b|\bmidjourney\b|\bstable diffusion\b", re.IGNORECASE)


def asks_for_ungrounded(question: str) -> bool:
    """Whether a free question asks for a recipe, a web page or a text-to-image prompt, answers that name things
    no picture shows ("salt", "button") and so are not grounded even when the model grounds by default."""
    return bool(_UNGROUNDED_ASKS.search(question))


def stable_prefix(text: str) -> str:
    """The part of an unfinished grounded answer that the next tokens cannot change (for streaming): all but its
    last few words."""
    starts = [m.start() for m in re.finditer(r"\S+", text)]
    hold = _hold_words()
    return text[:starts[-hold]].rstrip() if len(starts) > hold else ""
