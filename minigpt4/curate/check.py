"""Step 4 without a person: check each kept description against its image's ground truth.

The paper's last curation step is a person reading every description next to its image. For data
that carries ground truth - the procedural image world (`python -m minigpt4.world export`), or any
JSONL whose records hold a world-style "truth" - `check()` plays that person, the way a careful one
would:

- a sentence that names an object the image does not hold is a hallucination: cut the sentence,
  keep every other sentence word for word (decision "edited");
- if nothing is left, or what is left is too short, or it names too few of the objects that *are*
  in the image (object recall below the limit), the item goes (decision "rejected");
- otherwise the text is right as it is (decision "approved").

Decisions go through `Store.set_review` - the call the review page makes - with the reviewer's name
and the reason (rule, sentences dropped, hallucinated words, recall), one commit per item as it is
made, and only onto items that have no decision yet (checked in the write's transaction): a
person's decision is never overwritten, an interrupted check resumes where it stopped, and a
re-run repeats nothing.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from minigpt4.curate.filters import FilterConfig
from minigpt4.curate.sources import JSONL_ID_KEYS, JSONL_IMAGE_KEYS, read_jsonl, safe_id
from minigpt4.curate.store import Item, Store

REVIEWER = "truth-check"
# Truth layouts the object check understands (world kinds: scene, prompt, dish, sketch); a sketch's
# "blocks" hold no nameable objects, so any object it is said to contain is a hallucination.
_INVENTORY_KEYS = ("objects", "subjects", "ingredients", "blocks")
# The rules a decision can carry in review_reason["rule"], in the report's order.
RULES = {
    "approved": ("clean", "tolerated"),
    "edited": ("hallucination",),
    "rejected": ("nothing_left", "too_short", "low_recall"),
}


@dataclass
class CheckConfig:
    max_hallucinated: int = 0        # hallucinated object mentions a text may keep (0: cut every one)
    min_recall: float = 0.5          # fraction of the image's object kinds the kept text must name
    min_words: int = FilterConfig().min_words  # same "too short" as the filter rules by default
    reviewer: str = REVIEWER

    def validate(self) -> None:
        if self.max_hallucinated < 0:
            raise ValueError(f"--max-hallucinated must be 0 or more, not {self.max_hallucinated}")
        if not 0.0 <= self.min_recall <= 1.0:
            raise ValueError(f"--min-recall is a fraction between 0 and 1, not {self.min_recall}")
        if self.min_words < 0:
            raise ValueError(f"--min-words must be 0 or more, not {self.min_words}")
        if not self.reviewer.strip() or self.reviewer == "human":
            raise ValueError(f"--reviewer {self.reviewer!r}: name the automatic reviewer (not empty, not 'human', "
                             "which marks decisions made on the review page)")


@dataclass
class Verdict:
    decision: str                  # approved | edited | rejected
    text: str | None               # the edited text (decision "edited" only)
    reason: dict[str, Any]


# A sentence ends at . ! ? (and any closing quotes/brackets) followed by white space or the end.
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")
# "pumpkin in color", "peach-colored", "cherry red": a colour, not the object.
_COLOUR_USE = re.compile(r"\b[a-z]+(?:\s+in\s+colou?r\b|-colou?red\b|[\s-]+(?=(?:red|orange|yellow|green|blue|purple|"
                         r"pink|brown|black|white|gray|grey)\b))")


def split_sentences(text: str) -> list[str]:
    """The text's sentences, each exactly as written (surrounding white space stripped)."""
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        out.append(text[start:m.end()].strip())
        start = m.end()
    out.append(text[start:].strip())
    return [s for s in out if s]


def _mentions(text: str) -> list[tuple[str, frozenset[str]]]:
    from minigpt4.world.metrics import mentioned_objects
    return mentioned_objects(_COLOUR_USE.sub(" ", text.lower()))


# People are not in the image world's vocabulary, so the object check alone cannot see them; a
# careful reader still strikes "a woman holding a flower" from a picture of a flower.
_PEOPLE = re.compile(r"\b(?:person|people|persons|man|men|woman|women|boy|boys|girl|girls|child|children|kid|kids|"
                     r"baby|human|humans|face|faces|selfie|selfies|lady|ladies|guy|guys|someone|he|she|his|her)\b")


def hallucinated(text: str, present: set[str]) -> list[str]:
    """Object words in `text` that can mean nothing in the image (surface forms, in order)."""
    found = [form for form, names in _mentions(text) if not (names & present)]
    people = _PEOPLE.findall(_COLOUR_USE.sub(" ", text.lower()))
    return found + [m for m in people if not any(re.search(rf"\b{m}\b", n) for n in present)]


# A page sketch's parts and the words that name them; a description of a sketch must say it is a
# page and name its parts (recall over the parts, like object recall for scenes).
_PAGE_WORDS = re.compile(r"\b(?:web ?page|website|web site|page|wireframe|mock-?up|layout|site|landing page)\b")
_SKETCH_PARTS = {
    "header": r"title|heading|headline|header",
    "nav": r"navigation|nav bar|navbar|menu|links",
    "image": r"image|picture|photo|placeholder",
    "columns": r"columns?",
    "form": r"form|fields?|inputs?",
    "paragraph": r"paragraph|text|lines",
    "footer": r"footer",
    "buttons": r"buttons?",
}


def sketch_recall(text: str, truth: dict[str, Any]) -> tuple[float, list[str]]:
    """(fraction of the sketch's parts the text names, the parts it misses); 0 when the text does
    not even say it shows a page."""
    parts = sorted({b.get("type") for b in truth.get("blocks", []) if b.get("type") in _SKETCH_PARTS})
    low = text.lower()
    if not _PAGE_WORDS.search(low):
        return 0.0, parts or ["page"]
    missed = [p for p in parts if not re.search(rf"\b(?:{_SKETCH_PARTS[p]})\b", low)]
    return (len(parts) - len(missed)) / max(len(parts), 1), missed


def _norm(s: str) -> str:
    return " " + " ".join(re.sub(r"[^a-z0-9 ]", " ", s.lower()).split()) + " "


def recall(text: str, truth: dict[str, Any]) -> tuple[float, list[str]]:
    """(fraction of the image's object kinds the text names, the kinds it misses). Like
    world.metrics.object_recall, plus a plain-text match of each name, because a dish's name
    ("fruit salad") and drawn ingredients are not vocabulary words but are named all the same."""
    from minigpt4.world.metrics import truth_names
    present = {n for n in truth_names(truth) if n}
    # A sign's words are there to be read: a scene with only a sign is not a free pass.
    present |= {o["text"].lower() for o in truth.get("objects", []) if o.get("type") == "text" and o.get("text")}
    if not present:
        return 1.0, []
    said = set().union(*(names for _, names in _mentions(text)))
    low = _norm(text)
    missed = sorted(n for n in present if n not in said and _norm(n) not in low and _norm(n + "s") not in low)
    return (len(present) - len(missed)) / len(present), missed


def judge(text: str, truth: dict[str, Any], cfg: CheckConfig) -> Verdict:
    """The decision a careful person would make about `text` for an image with this truth."""
    from minigpt4.world.metrics import truth_names
    present = truth_names(truth)
    sentences = split_sentences(text)
    bad = [(s, hallucinated(s, present)) for s in sentences]
    words_bad = [w for _, ws in bad for w in ws]
    reason: dict[str, Any] = {"hallucinated": words_bad, "dropped": []}
    if len(words_bad) <= cfg.max_hallucinated:
        kept, edited = text.strip(), False
    else:
        reason["dropped"] = [s for s, ws in bad if ws]
        kept, edited = " ".join(s for s, ws in bad if not ws), True
    words = len(kept.split())
    r, missed = sketch_recall(kept, truth) if "blocks" in truth else recall(kept, truth)
    reason.update(words=words, recall=round(r, 3), missed=missed,
                  limits={"max_hallucinated": cfg.max_hallucinated, "min_recall": cfg.min_recall,
                          "min_words": cfg.min_words})
    if not kept:
        return Verdict("rejected", None, {"rule": "nothing_left", **reason})
    if words < cfg.min_words:
        return Verdict("rejected", None, {"rule": "too_short", **reason})
    if r < cfg.min_recall:
        return Verdict("rejected", None, {"rule": "low_recall", **reason})
    if edited:
        return Verdict("edited", kept, {"rule": "hallucination", **reason})
    return Verdict("approved", None, {"rule": "tolerated" if words_bad else "clean", **reason})


# --- matching items to truth records -----------------------------------------------------------
def _item_keys(item: Item) -> list[tuple[str, str]]:
    """Ways an item can be found in the truth file, most specific first."""
    src = item.source
    keys = []
    if src.get("kind") == "file" and src.get("path"):
        keys += [("path", str(Path(src["path"]).resolve())), ("id", item.id), ("stem", safe_id(Path(src["path"]).stem))]
    elif src.get("kind") == "tar" and src.get("member"):
        keys += [("id", item.id), ("stem", safe_id(Path(src["member"]).name.split(".")[0]))]
    else:
        keys.append(("id", item.id))
    return keys


def load_truths(path: str | Path, items: list[Item]) -> dict[str, dict[str, Any]]:
    """{item id: truth} for the items found in the JSONL at `path`, matched by the image's path
    (resolved as `curate run --images data.jsonl` resolves it), else by image_id, else by the image
    file's name. Reads the file once, keeping only the truths asked for."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"truth file '{path}' does not exist; give a world export's data.jsonl "
                                "(python -m minigpt4.world export --out DIR ... writes DIR/data.jsonl)")
    wanted: dict[tuple[str, str], list[str]] = {}
    for it in items:
        for key in _item_keys(it):
            wanted.setdefault(key, []).append(it.id)
    found: dict[str, tuple[int, dict[str, Any]]] = {}  # id -> (rank of the key that matched, truth)
    records = with_truth = 0
    for lineno, rec in read_jsonl(path):
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{lineno} is not a JSON object")
        records += 1
        truth = rec.get("truth")
        if not isinstance(truth, dict):
            continue
        with_truth += 1
        rec_keys = []
        img_key = next((k for k in JSONL_IMAGE_KEYS if k in rec), None)
        if img_key is not None:
            img = Path(rec[img_key])
            rec_keys.append(("path", str((img if img.is_absolute() else path.parent / img).resolve())))
        rid = next((str(rec[k]) for k in JSONL_ID_KEYS if k in rec), None)
        if rid is not None:
            rec_keys.append(("id", safe_id(rid)))
        if img_key is not None:
            rec_keys.append(("stem", safe_id(Path(rec[img_key]).stem)))
        for key in rec_keys:
            for item_id in wanted.get(key, ()):
                rank = ("path", "id", "stem").index(key[0])
                if item_id not in found or rank < found[item_id][0]:
                    found[item_id] = (rank, truth)
    if records and not with_truth:
        raise ValueError(f"'{path}' has {records} record(s) but none with a \"truth\" object; the check needs "
                         "ground truth, as in a world export's data.jsonl")
    return {item_id: truth for item_id, (_, truth) in found.items()}


def undo_decisions(store: Store, reviewer: str) -> int:
    """Clear the decisions `reviewer` made (never a person's), so a re-run decides those items again."""
    if reviewer == "human":
        raise ValueError("the review page's decisions are a person's; they are never undone automatically")
    mine = store.items("filter_status='kept' AND review IS NOT NULL AND reviewer=?", (reviewer,))
    for it in mine:
        store.set_review(it.id, None)
    return len(mine)


def _checkable(truth: dict[str, Any]) -> bool:
    return any(k in truth for k in _INVENTORY_KEYS)


def check(store: Store, truth_path: str | Path, cfg: CheckConfig | None = None, progress: bool = False) -> dict[str, Any]:
    """Decide every kept, undecided item that has ground truth; returns this call's counts.
    Safe to interrupt and re-run at any point (see the module docstring)."""
    from tqdm import tqdm

    cfg = cfg or CheckConfig()
    cfg.validate()
    todo = store.items("filter_status='kept' AND review IS NULL")
    summary: dict[str, Any] = {"checked": 0, "approved": 0, "edited": 0, "rejected": 0, "rules": {},
                               "no_truth": [], "unknown_truth": [], "decided_meanwhile": 0,
                               "already_decided": store.count("filter_status='kept' AND review IS NOT NULL")}
    if not todo:
        return summary
    truths = load_truths(truth_path, todo)
    if not truths:
        raise ValueError(f"none of the {len(todo)} item(s) to check matched a record of '{truth_path}' (by image "
                         "path, image_id or file name); pass the data.jsonl the images came from")
    store.set_meta("auto_review", {**asdict(cfg), "truth": str(Path(truth_path).resolve())})
    for item in tqdm(todo, desc=cfg.reviewer, unit="item", disable=not progress):
        truth = truths.get(item.id)
        if truth is None:
            summary["no_truth"].append(item.id)
            continue
        if not _checkable(truth):
            summary["unknown_truth"].append(item.id)
            continue
        v = judge(item.final_text or "", truth, cfg)
        after = store.set_review(item.id, v.decision, v.text, reviewer=cfg.reviewer, reason=v.reason, if_pending=True)
        if after.reviewer != cfg.reviewer or after.reviewed_at is None or after.review != v.decision:
            summary["decided_meanwhile"] += 1  # a person decided between our read and our write: theirs stands
            continue
        summary["checked"] += 1
        summary[v.decision] += 1
        summary["rules"][v.reason["rule"]] = summary["rules"].get(v.reason["rule"], 0) + 1
    return summary
