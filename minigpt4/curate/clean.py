"""A rule-based cleaner: the offline stand-in for the ChatGPT fixer.

It does, by rules, what the paper's fix prompt asks of ChatGPT: remove repeated sentences and
repetition loops, meaningless characters, non-English sentences, and an unfinished last
sentence. Each step is a small function; `clean()` runs them in order and reports which ones
changed the text (stored as the item's `fix_edits` for provenance).
"""
from __future__ import annotations

import re
import unicodedata

# Template pieces a stage-1 model leaks into its answer (vicuna_v0, llama2, chatml).
_TEMPLATE_LEFTOVERS = re.compile(
    r"(###\s*(Human|Assistant)\s*:?|###|\[/?INST\]|<\|im_(start|end)\|>(assistant|user|system)?|</?s>|"
    r"<Img>|</Img>|<ImageHere>)", re.IGNORECASE)
# Runs of symbols that carry no meaning in a description (e.g. "@@@@", "~~~", "|||", "____").
_SYMBOL_RUN = re.compile(r"([^\w\s.,;:!?'\"()\-])\1+|[^\w\s.,;:!?'\"()\-]{3,}")
_REPEATED_PUNCT = re.compile(r"([.,;:!?])(\s*\1)+")
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|(?<=[.!?][\"'”)\]])\s+|(?<=[。！？])\s*")
_ENDS_SENTENCE = re.compile(r"[.!?][\"')\]]*$")
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
# Function words: English ones, and common ones of the languages a model drifts into (French,
# German, Spanish, Italian, Portuguese, Dutch) that are not English words too.
ENGLISH_FUNCTION_WORDS = frozenset(
    "a an the is are was were be been it its this that these those there of in on at to with and or but by "
    "for from as his her their they he she we you i has have had can could will would not no some many "
    "which who while near over under behind next into".split())
FOREIGN_FUNCTION_WORDS = frozenset(
    "le la les un une des du est et dans avec pour sur sont ce cette qui que au aux ou très "
    "der das und ist ein eine einen dem den mit auf sind nicht zu im vom von "
    "el los las y es en una unos con por para del al lo muy está "
    "il di che della nel sono gli dei "
    "os um uma com não são het een van zijn".split())


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_SPLIT.split(text.strip()) if s.strip()]


def normalize_whitespace(text: str) -> str:
    text = re.sub(r"[ \t\r\f\v]+", " ", text)
    text = re.sub(r" ?\n ?", "\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def remove_meaningless_characters(text: str) -> str:
    """Control characters, replacement characters, template leftovers, symbol runs, doubled punctuation."""
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch)[0] != "C")
    text = text.replace("\ufffd", "")
    text = _TEMPLATE_LEFTOVERS.sub(" ", text)
    text = _SYMBOL_RUN.sub(" ", text)
    text = _REPEATED_PUNCT.sub(r"\1", text)
    text = re.sub(r"\s+([.,;:!?])", r"\1", text)
    return normalize_whitespace(text)


def is_english(sentence: str, min_latin: float = 0.9) -> bool:
    """Heuristic without a dictionary: most letters are ASCII Latin letters, and the sentence does not
    hold more foreign function words ("le", "der", "y", ...) than English ones - at least two, so an
    English fragment without any function word ("Bright red flowers.") is kept."""
    words = _WORD.findall(sentence)
    letters = [ch for w in words for ch in w]
    if not letters:
        return False  # digits/punctuation only: not a sentence worth keeping
    if sum(ch.isascii() for ch in letters) / len(letters) < min_latin:
        return False
    lower = [w.lower() for w in words]
    foreign = sum(w in FOREIGN_FUNCTION_WORDS for w in lower)
    english = sum(w in ENGLISH_FUNCTION_WORDS for w in lower)
    return not (foreign >= 2 and foreign > english)


def remove_non_english(text: str) -> str:
    return " ".join(s for s in split_sentences(text) if is_english(s))


def collapse_repeated_words(text: str, max_ngram: int = 8) -> str:
    """'a cat and a cat and a cat and' -> 'a cat and': an n-gram repeated back to back is kept once."""
    words = text.split()
    # Compare without case and edge punctuation: "a bench, a bench, a bench in" is one loop.
    keys = [w.lower().strip(".,;:!?\"'") for w in words]
    out: list[str] = []
    i = 0
    while i < len(words):
        for n in range(max_ngram, 0, -1):
            gram = keys[i:i + n]
            if len(gram) < n:
                continue
            reps = 1
            while keys[i + reps * n:i + (reps + 1) * n] == gram:
                reps += 1
            # One-word repeats must be immediate doubles ("the the"); longer loops at least twice.
            if reps >= 2:
                out.extend(words[i:i + n])
                i += reps * n
                break
        else:
            out.append(words[i])
            i += 1
    return " ".join(out)


def _sentence_key(s: str) -> str:
    return re.sub(r"[^a-z0-9 ]", "", s.lower()).strip()


def remove_repeated_sentences(text: str) -> str:
    seen: set[str] = set()
    kept = []
    for s in split_sentences(text):
        key = _sentence_key(s)
        if key and key in seen:
            continue
        seen.add(key)
        kept.append(s)
    return " ".join(kept)


def fix_unfinished_last_sentence(text: str) -> str:
    """Drop a trailing fragment when complete sentences precede it; else end it with a period."""
    text = text.strip().rstrip(",;:-")
    if not text or _ENDS_SENTENCE.search(text):
        return text
    sentences = split_sentences(text)
    if len(sentences) > 1:
        return " ".join(sentences[:-1])
    return text + "."


def capitalize_sentences(text: str) -> str:
    return " ".join(s[:1].upper() + s[1:] for s in split_sentences(text))


STEPS = (
    ("meaningless_characters", remove_meaningless_characters),
    ("non_english", remove_non_english),
    ("repeated_words", lambda t: " ".join(collapse_repeated_words(s) for s in split_sentences(t))),
    ("repeated_sentences", remove_repeated_sentences),
    ("unfinished_sentence", fix_unfinished_last_sentence),
    ("capitalization", capitalize_sentences),
)


def clean(text: str) -> tuple[str, list[str]]:
    """Run every cleaning step; return the cleaned text and the names of the steps that changed it."""
    text = normalize_whitespace(text)
    edits = []
    for name, step in STEPS:
        new = normalize_whitespace(step(text))
        if new != text:
            edits.append(name)
        text = new
    return text, edits
