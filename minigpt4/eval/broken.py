"""Broken-output detector: the failures the original MiniGPT-4 fixed with stage 2 (35% -> 2%).

`broken_reasons(text, finish_reason)` names every problem it finds:
  * "empty"       - nothing (or only punctuation / whitespace) was written;
  * "repetition"  - a sentence said twice, a phrase looping ("the the the", "a cat a cat a cat"),
                    or most 4-grams being repeats;
  * "gibberish"   - too many non-words (against common English + the world's vocabulary);
  * "non_ascii"   - junk characters: replacement characters, control characters, other scripts;
  * "cut_off"     - the answer stops mid-sentence (hit the token limit, or prose without an end).

Quoted strings, code blocks and HTML tags are left out of the word checks: titles and sign texts
may be made-up words, and markup is not prose.
"""
from __future__ import annotations

import re
import unicodedata
from collections import Counter
from dataclasses import dataclass

from minigpt4.eval.words import is_word

REASONS = ("empty", "repetition", "gibberish", "non_ascii", "cut_off")


@dataclass(frozen=True)
class BrokenConfig:
    max_nonword_ratio: float = 0.35      # gibberish above this share of unknown words ...
    min_words_for_ratio: int = 4         # ... among at least this many words
    max_repeated_4gram_ratio: float = 0.3
    max_repeated_sentence_share: float = 0.25  # words in extra copies of sentences / all words
    min_sentence_words: int = 4          # shorter sentences may repeat ("Serve.")
    max_junk_ratio: float = 0.02         # non-ASCII junk characters per character
    prose: bool = True                   # False (prompts, one-line lists): only a token-limit stop is a cut


_SENT_END = re.compile(r"[.!?][\"'”’)\]*_]*$")
_OK_END = re.compile(r"([.!?:;][\"'”’)\]*_]*|```|</\w+>|[)\]])$")
_LIST_LINE = re.compile(r"^\s*([-*•+]|\d+[.)]|#+)\s")
_WORD = re.compile(r"[A-Za-z]+(?:'[a-z]+)?")
# typographic characters that are fine in English text
_TYPO_OK = set("‘’“”–—…°×½¼¾·•€£é")


def _strip_non_prose(text: str) -> str:
    text = re.sub(r"```.*?(```|$)", " ", text, flags=re.DOTALL)   # code blocks
    text = re.sub(r"<[^>]{0,200}>", " ", text)                    # tags
    text = re.sub(r"\"[^\"\n]{0,80}\"|“[^”\n]{0,80}”", " ", text)  # quoted titles / sign texts
    return re.sub(r"https?://\S+", " ", text)


def sentences(text: str) -> list[str]:
    parts = re.split(r"(?<=[.!?])\s+|\n+", text)
    return [p.strip() for p in parts if p.strip()]


def _norm_words(s: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(s)]


def is_repetitive(text: str, cfg: BrokenConfig = BrokenConfig()) -> bool:
    # the same sentence twice (original MiniGPT-4's typical loop)
    # the same sentence three times, or repeated sentences making up much of the text (original
    # MiniGPT-4's typical loop); one repeated sentence in a long text is fine ("There are two.")
    words = _norm_words(text)
    seen = Counter(" ".join(w) for s in sentences(text)
                   if len(w := _norm_words(s)) >= cfg.min_sentence_words)
    extra = sum((c - 1) * len(s.split()) for s, c in seen.items() if c > 1)
    if any(c >= 3 for c in seen.values()) or (words and extra / len(words) > cfg.max_repeated_sentence_share):
        return True
    # a word or a short phrase looping back-to-back: "very very very very", "a cat a cat a cat"
    for n in (1, 2, 3, 4):
        need = 4 if n == 1 else 3
        for i in range(len(words) - n * need + 1):
            unit = words[i:i + n]
            if all(words[i + k * n:i + (k + 1) * n] == unit for k in range(1, need)):
                return True
    # character loops without spaces ("hahahahahaha", "!!!!!!!!!!!!", "abcabcabcabc")
    if re.search(r"(\S{1,12}?)\1{5,}", text.replace(" ", "")) and re.search(r"(\S{2,12}?)\1{3,}|(\S)\2{9,}", text):
        return True
    # most 4-grams are repeats (long looping text whose sentences differ slightly)
    grams = [tuple(words[i:i + 4]) for i in range(len(words) - 3)]
    if len(grams) >= 12:
        repeats = sum(c - 1 for c in Counter(grams).values() if c > 1)
        if repeats / len(grams) > cfg.max_repeated_4gram_ratio:
            return True
    return False


def nonword_ratio(text: str) -> tuple[float, int]:
    """(share of unknown words, number of words) in the prose part of `text`."""
    words = _WORD.findall(_strip_non_prose(text))
    if not words:
        return 0.0, 0
    # a capitalised unknown word mid-sentence may be a name: count it as half unknown
    bad = 0.0
    for i, w in enumerate(words):
        if not is_word(w):
            bad += 0.5 if (w[0].isupper() and not w.isupper() and i > 0) else 1.0
    return bad / len(words), len(words)


def is_gibberish(text: str, cfg: BrokenConfig = BrokenConfig()) -> bool:
    ratio, n = nonword_ratio(text)
    if n >= cfg.min_words_for_ratio:
        return ratio > cfg.max_nonword_ratio
    # very short answers: gibberish when no word at all is known (e.g. "xqzt vrrk")
    return n > 0 and ratio >= 1.0 and len(text.strip()) > 3


def junk_ratio(text: str) -> float:
    if not text:
        return 0.0
    bad = 0
    for ch in text:
        if ch.isascii():
            bad += ch not in "\n\t\r" and not ch.isprintable()
        elif ch == "\ufffd" or ch not in _TYPO_OK and not _latin_letter(ch):
            bad += 1
    return bad / len(text)


def _latin_letter(ch: str) -> bool:
    try:
        return "LATIN" in unicodedata.name(ch)
    except ValueError:
        return False


def is_cut_off(text: str, finish_reason: str | None = None, cfg: BrokenConfig = BrokenConfig()) -> bool:
    text = text.rstrip()
    if not text:
        return False
    if finish_reason == "length" and not _SENT_END.search(text):
        return True
    if not cfg.prose:
        return False
    last = text.splitlines()[-1].strip()
    if _LIST_LINE.match(last) or last.startswith("```"):
        return False  # a list item or code may end without a period
    if len(_norm_words(last)) < 3 and "\n" in text:
        return False  # a short heading line ("Enjoy!", "Serves 2")
    return not _OK_END.search(last)


def broken_reasons(text: str, finish_reason: str | None = None, cfg: BrokenConfig = BrokenConfig()) -> list[str]:
    """The names (see REASONS) of everything wrong with `text`; [] for a clean answer."""
    if not re.search(r"[^\W_]", text or ""):
        return ["empty"]
    reasons = []
    if is_repetitive(text, cfg):
        reasons.append("repetition")
    if is_gibberish(text, cfg):
        reasons.append("gibberish")
    if junk_ratio(text) > cfg.max_junk_ratio or "\ufffd" in text:
        reasons.append("non_ascii")
    if is_cut_off(text, finish_reason, cfg):
        reasons.append("cut_off")
    return reasons


def is_broken(text: str, finish_reason: str | None = None, cfg: BrokenConfig = BrokenConfig()) -> bool:
    return bool(broken_reasons(text, finish_reason, cfg))
