"""Evaluation helpers that score model text against world ground truth (stdlib + numpy only)."""

from __future__ import annotations

import re

from .prompt import prompt_similarity  # noqa: F401  (re-export)
from .sketch import html_structure, structure_match  # noqa: F401  (re-export)
from .textgen import NUMBER_WORDS, canonical_position
from .vocab import COLOR_SYNONYMS, COLORS, find_mentions, mention_table


def truth_names(truth: dict) -> set[str]:
    """Canonical object/shape names present in an image's truth (any kind)."""
    if "objects" in truth:
        return {o["name"] for o in truth["objects"] if o.get("type") != "text"}
    if "ingredients" in truth:
        return {i["name"] for i in truth["ingredients"]} | {truth.get("dish", "")}
    if "subjects" in truth:
        return {s["noun"] for s in truth["subjects"]}
    return set()


def mentioned_objects(text: str) -> list[tuple[str, frozenset[str]]]:
    """Vocabulary object mentions found in ``text`` (surface form, candidate names)."""
    return find_mentions(text)


def object_mentions(description: str, truth: dict) -> tuple[int, int]:
    """(mentioned object words that refer to nothing in the image, all mentioned object words): vocabulary names,
    plurals, synonyms."""
    present = truth_names(truth)
    ms = find_mentions(description)
    return sum(1 for _, names in ms if not (names & present)), len(ms)


def pooled_chair_i(counts) -> float:
    """CHAIR_i over texts from their object_mentions counts: all hallucinated mentions over all mentions (Rohrbach et
    al. 2018), 0.0 when none names an object; a text that names nothing adds nothing."""
    counts = list(counts)
    total = sum(n for _, n in counts)
    return sum(bad for bad, _ in counts) / total if total else 0.0


def chair_i(description: str, truth: dict) -> float:
    """CHAIR_i of one text: the fraction of its mentioned object words that refer to nothing in the image, 0.0 when
    it mentions none."""
    return pooled_chair_i([object_mentions(description, truth)])


def chair_s(description: str, truth: dict) -> float:
    """CHAIR_s: 1.0 if the text hallucinates at least one object, else 0.0."""
    return 1.0 if chair_i(description, truth) > 0 else 0.0


def object_recall(description: str, truth: dict) -> float:
    """Fraction of present object kinds that the text mentions (coverage)."""
    present = truth_names(truth)
    if not present:
        return 1.0
    said = set().union(*[n for _, n in find_mentions(description)]) if find_mentions(description) else set()
    return len(present & said) / len(present)


_WORD_NUM = {w: i for i, w in enumerate(NUMBER_WORDS)}


def _norm(s: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", str(s).lower()).split())


def answer_correct(pred: str, answer: str, qtype: str | None = None) -> bool:
    """Lenient match of a free-text answer against a canonical one, per question type."""
    p, a = _norm(pred), _norm(answer)
    if not p:
        return False
    if qtype == "position":
        return canonical_position(p) == canonical_position(a)
    if a in ("yes", "no"):
        first = p.split()[0]
        return first == a or (first not in ("yes", "no") and f" {a} " in f" {p} ")
    if a in _WORD_NUM or a.isdigit():
        target = _WORD_NUM.get(a, int(a) if a.isdigit() else -1)
        nums = [_WORD_NUM[w] if w in _WORD_NUM else int(w) for w in p.split() if w in _WORD_NUM or w.isdigit()]
        return bool(nums) and nums[0] == target
    if qtype == "color" or a in COLORS:
        cols = [COLOR_SYNONYMS.get(w, w) for w in p.split() if w in COLORS or w in COLOR_SYNONYMS]
        return bool(cols) and cols[0] == a
    return p == a or f" {a} " in f" {p} "


def qa_accuracy(preds: list[str], qa: list[dict], by_type: bool = False):
    """Accuracy of predicted answers ``preds`` against a Sample's ``qa`` list (same order).

    With ``by_type=True`` returns {"all": acc, "<type>": acc, ...}."""
    if len(preds) != len(qa):
        raise ValueError("preds and qa must have the same length")
    tot: dict[str, list[int]] = {"all": [0, 0]}
    for p, q in zip(preds, qa):
        ok = int(answer_correct(p, q["answer"], q.get("type")))
        for k in ("all", q.get("type", "other")):
            t = tot.setdefault(k, [0, 0])
            t[0] += ok
            t[1] += 1
    acc = {k: (v[0] / v[1] if v[1] else 0.0) for k, v in tot.items()}
    return acc if by_type else acc["all"]


def ingredient_recall(recipe_text: str, truth: dict) -> float:
    """Fraction of the dish's visible ingredients that the recipe text mentions
    (names, plurals and synonyms; drawn ingredients like "pasta" by name)."""
    hits = ingredient_hits(recipe_text, truth)
    return sum(hit for _, _, hit in hits) / len(hits) if hits else 1.0


def ingredient_hits(recipe_text: str, truth: dict) -> list[tuple[str, bool, bool]]:
    """(ingredient, held out, mentioned by the recipe) for each of the dish's visible ingredients."""
    ings = truth.get("ingredients", [])
    low = " " + _norm(recipe_text) + " "
    said = set().union(*[n for _, n in find_mentions(recipe_text)]) if find_mentions(recipe_text) else set()
    table = mention_table()
    out = []
    for ing in ings:
        name = ing["name"]
        forms = {name} | {f for f, ns in table.items() if name in ns}
        hit = name in said or any(f" {_norm(f)} " in low for f in forms) or \
            (" " in name and f" {_norm(name.split()[-1])} " in low)  # "tomato sauce" -> "sauce"
        out.append((name, bool(ing.get("heldout")), bool(hit)))
    return out
