"""Word lists for the gibberish check: common English (shipped) plus the image world's own vocabulary.

`english_words.txt` is built once by `build_english_words()` from the bundled SmolLM2 tokenizer: its
whole-word tokens ("Ġword") in merge order are roughly the most frequent English words of its
training text. Short merge fragments ("con", "pro") are kept out by allowing 1-3 letter words
only from a hand-written list. The world vocabulary is read from the world package's own sources
and assets, so every word the world can write is known (ground truth never looks like gibberish).
"""
from __future__ import annotations

import json
import re
from functools import lru_cache
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENGLISH_WORDS = HERE / "english_words.txt"
WORLD_DIR = HERE.parent / "world"

# 1-3 letter words: merge fragments of that length are common, so these are listed by hand.
SHORT_WORDS = """a i an as at be by do go he if in is it me my no of oh ok on or so to up us we ya ye
add ado age ago aid aim air all and ant any ape apt arc are ark arm art ash ask ate awe axe bad bag ban
bar bat bay bed bee beg bet bid big bin bit bow box boy bud bug bun bus but buy bye cab can cap car cat
cow cry cub cup cut dad day den dew did die dig dim dip dog dot dry due dug dye ear eat egg ego elf elk
end era eve eye fan far fat fax fed fee few fig fin fir fit fix fly foe fog for fox fry fun fur gap gas
gel gem get god got gum gun gut guy gym had ham has hat hay her hey hid him hip his hit hog hop hot how
hub hue hug hum hut ice icy ill ink inn ion its jam jar jaw jet job jog joy jug key kid kin kit lab lad
lap law lay led leg let lid lie lip lit log lot low mad man map mat may men met mid mix mob mom mop mud
mug nap net new nod nor not now nut oak oar oat odd off oil old one our out owe owl own pad pal pan par
paw pay pea pen pet pie pig pin pit pod pop pot pub pun pup put rag ram ran rap rat raw ray red rib rid
rim rip rob rod rot row rub rug rum run rye sad sag sat saw say sea see set sew she shy sin sip sir sit
six ski sky sly sob son soy spa spy sub sue sum sun tab tag tan tap tar tax tea ten the tie tin tip toe
ton too top toy try tub tug two use van vet via vow wag war was wax way web wet who why wig win wit
woe wok won wow yak yam yes yet you zip zoo""".split()


def build_english_words(tokenizer_json: str | Path, n: int = 16000) -> list[str]:
    """The `n` earliest whole-word lowercase tokens of a BPE tokenizer (4+ letters), plus SHORT_WORDS."""
    vocab = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))["model"]["vocab"]
    words = sorted((i, t[1:]) for t, i in vocab.items()
                   if t.startswith("\u0120") and re.fullmatch(r"[a-z]{4,}", t[1:]))
    return sorted(set(SHORT_WORDS) | {w for _, w in words[:n] if re.search(r"[aeiouy]", w)})


@lru_cache(maxsize=None)
def english_words() -> frozenset[str]:
    return frozenset(ENGLISH_WORDS.read_text(encoding="utf-8").split())


@lru_cache(maxsize=None)
def world_words() -> frozenset[str]:
    """Every lowercase word in the world generator's sources and assets (names, phrases, titles)."""
    words: set[str] = set()
    files = list(WORLD_DIR.glob("*.py")) + [p for p in (WORLD_DIR / "assets").glob("*")
                                             if p.suffix in (".tsv", ".txt")]
    for p in files:
        words.update(w.lower() for w in re.findall(r"[A-Za-z]{2,}", p.read_text(encoding="utf-8", errors="ignore")))
    from minigpt4.world.vocab import mention_table
    for form in mention_table():
        words.update(re.findall(r"[a-z]+", form))
    return frozenset(words)


@lru_cache(maxsize=None)
def known_words() -> frozenset[str]:
    return english_words() | world_words()


_SUFFIXES = ("'s", "s", "es", "ed", "d", "ing", "ly", "er", "est", "ies", "ied", "ness", "ful")


def is_word(word: str) -> bool:
    """True for a known English or world word, also inflected ("tomatoes", "sliced", "quickly")."""
    w = word.lower().strip("'")
    known = known_words()
    if w in known or len(w) == 1:
        return True
    for suf in _SUFFIXES:
        if w.endswith(suf) and len(w) > len(suf) + 2:
            stem = w[: -len(suf)]
            if stem in known or stem + "e" in known or (suf in ("ies", "ied") and stem + "y" in known):
                return True
            if len(stem) > 3 and stem[-1] == stem[-2] and stem[:-1] in known:  # "chopped", "running"
                return True
    return False
