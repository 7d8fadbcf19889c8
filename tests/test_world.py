"""Tests for minigpt4.world: the procedural image world with ground truth."""

import json
import os

import pytest

from minigpt4 import world
from minigpt4.world import (KINDS, chair_i, export, generate, heldout_names, ingredient_recall, mixture,
                            object_kinds, prompt_similarity, qa_accuracy, render_prompt, structure_match)
from minigpt4.world.export import atomic_write_bytes
from minigpt4.world.metrics import answer_correct
from minigpt4.world.sketch import html_is_valid, html_structure
from minigpt4.world.vocab import find_mentions, objects

SEEDS = range(12)


@pytest.mark.parametrize("kind", KINDS)
def test_deterministic_same_seed(kind):
    a, b = generate(kind, 7), generate(kind, 7)
    assert a.image.tobytes() == b.image.tobytes()
    assert a.texts() == b.texts()
    assert a.image.size == (224, 224) and a.image.mode == "RGB"
    json.dumps(a.truth)  # JSON-serialisable


@pytest.mark.parametrize("kind", KINDS)
def test_different_seeds_and_splits_differ(kind):
    imgs = {generate(kind, s).image.tobytes() for s in range(6)}
    assert len(imgs) >= 5
    assert generate(kind, 3, "train").texts()["description"] != generate(kind, 3, "val").texts()["description"] \
        or generate(kind, 3, "train").image.tobytes() != generate(kind, 3, "val").image.tobytes()


def test_size_parameter():
    assert generate("scene", 1, size=128).image.size == (128, 128)


def test_heldout_split_of_kinds():
    held = heldout_names()
    assert 0.05 * len(objects()) < len(held) < 0.2 * len(objects())
    train_names = {k.name for k in object_kinds("train")}
    assert not (held & train_names)
    seen = set()
    for kind in ("scene", "dish", "prompt"):
        for s in range(40):
            t = generate(kind, s, "train").truth
            names = {o["name"] for o in t.get("objects", [])} | {i["name"] for i in t.get("ingredients", [])} \
                | {x["noun"] for x in t.get("subjects", [])}
            seen |= names
            assert not (names & held), (kind, s, names & held)
    assert len(seen) > 60
    # the test split shows held-out kinds
    n_test_held = sum(any(o["heldout"] for o in generate("scene", s, "test").truth["objects"]) for s in range(10))
    assert n_test_held >= 8


@pytest.mark.parametrize("kind", KINDS)
def test_ground_truth_texts_do_not_hallucinate(kind):
    for s in SEEDS:
        smp = generate(kind, s)
        for text in (smp.description, smp.caption, smp.alt_text):
            assert chair_i(text, smp.truth) == 0.0, (kind, s, text)
        assert len(smp.alt_text) <= 125
        assert len(smp.caption.split()) <= 50
        assert qa_accuracy([q["answer"] for q in smp.qa], smp.qa) == 1.0
        assert all(set(q) >= {"question", "answer", "type"} for q in smp.qa)


def test_scene_description_mentions_every_object_with_count_and_position():
    for s in SEEDS:
        smp = generate("scene", s)
        said = set().union(*[n for _, n in find_mentions(smp.description)] or [set()])
        for o in smp.truth["objects"]:
            if o["type"] == "text":
                assert o["text"] in smp.description
                continue
            assert o["name"] in said, (o["name"], smp.description)
        types = {q["type"] for q in smp.qa}
        assert {"presence", "count", "position"} <= types


def test_chair_detects_hallucination():
    smp = generate("scene", 0)
    present = {o["name"] for o in smp.truth["objects"]}
    absent = next(k.name for k in object_kinds("train") if k.name not in present and " " not in k.name)
    assert chair_i(f"There is a {absent} here.", smp.truth) == 1.0
    name = next(iter(present))
    assert chair_i(f"I see a {name} and a {absent}.", smp.truth) == 0.5


def test_counts_match_rendered_instances():
    import numpy as np
    for s in SEEDS:
        smp = generate("scene", s)
        arr = np.asarray(smp.image)
        for o in smp.truth["objects"]:
            assert len(o["instances"]) == o["count"] >= 1
            for inst in o["instances"]:
                x0, y0, x1, y1 = inst["bbox"]
                assert 0 <= x0 < x1 <= 224 and 0 <= y0 < y1 <= 224
                assert inst["occlusion"] < 1.0
                assert arr[y0:y1, x0:x1].std() > 5  # something is drawn there
            ans = {q["answer"] for q in smp.qa if q["type"] == "count" and q["target"] == o["name"]}
            if o["type"] != "text":
                assert ans == {["zero", "one", "two", "three", "four"][o["count"]]}


def test_qa_scoring_is_lenient_but_strict():
    assert answer_correct("Yes, there is.", "yes") and not answer_correct("No.", "yes")
    assert answer_correct("There are 3 of them", "three", "count")
    assert not answer_correct("two", "three", "count")
    assert answer_correct("It is in the upper left corner.", "top left", "position")
    assert not answer_correct("bottom right", "top left", "position")
    assert answer_correct("It's grey.", "gray", "color")
    qa = [{"question": "q", "answer": "yes", "type": "presence"}, {"question": "q", "answer": "red", "type": "color"}]
    assert qa_accuracy(["yes", "blue"], qa, by_type=True) == {"all": 0.5, "presence": 1.0, "color": 0.0}


def test_dish_recipe_and_ingredient_recall():
    for s in SEEDS:
        smp = generate("dish", s)
        assert smp.recipe and "Ingredients:" in smp.recipe and "Steps:" in smp.recipe
        assert ingredient_recall(smp.recipe, smp.truth) == 1.0
        assert ingredient_recall("Boil water.", smp.truth) < 0.5
        assert smp.truth["dish"] and smp.truth["ingredients"]


def test_sketch_html_and_structure_match():
    a, b = generate("sketch", 0), generate("sketch", 1)
    assert html_is_valid(a.html) and html_is_valid(b.html)
    assert structure_match(a.html, a.html) == 1.0
    assert structure_match(a.html, b.html) < 1.0
    assert structure_match("", a.html) == 0.0
    assert a.truth["structure"] == html_structure(a.html)
    # text content does not matter, structure does
    renamed = a.html.replace("<h1>", "<h1>X ")
    assert structure_match(renamed, a.html) == 1.0
    assert "header>h1" in html_structure(a.html)


def test_sketch_filler_text_follows_the_drawing():
    """Scribbled lines carry no readable text, so the HTML text behind them must follow from what is
    drawn (one fixed sentence per paragraph line) and end on its own, never a random window of lorem."""
    import re
    from minigpt4.world.sketch import FILLER
    paragraphs = [b for s in range(40) for b in generate("sketch", s).truth["blocks"] if b["type"] == "paragraph"]
    assert {b["lines"] for b in paragraphs} == {2, 3, 4}
    for b in paragraphs:
        assert b["text"] == " ".join(FILLER[:b["lines"]])
        assert len(re.findall(r"[.!?](?:\s|$)", b["text"])) == b["lines"]


def test_prompt_render_and_similarity():
    p = "a red cat and two blue cars on a sunset beach, flat illustration"
    assert render_prompt(p, 3).tobytes() == render_prompt(p, 3).tobytes()
    assert prompt_similarity(p, p) == 1.0
    near = prompt_similarity("a red cat on a sunset beach, flat illustration", p)
    far = prompt_similarity("three green stars in outer space, pixel art", p)
    assert 0.0 <= far < near < 1.0
    smp = generate("prompt", 2)
    assert smp.prompt and prompt_similarity(smp.prompt, smp.prompt) == 1.0
    assert render_prompt(smp.prompt, 2).tobytes() == smp.image.tobytes()


def test_mixture_deterministic_and_mixed():
    a = [s.image_id for s in mixture(5, 12)]
    b = [s.image_id for s in mixture(5, 12)]
    assert a == b and len({x.split("_")[0] for x in a}) >= 3
    assert [s.kind for s in mixture(1, 5, kinds=["dish"])] == ["dish"] * 5


def test_export_roundtrip(tmp_path):
    out = tmp_path / "ds"
    r = export(str(out), 6, "train", seed=0)
    assert r["n"] == 6
    recs = [json.loads(l) for l in open(out / "data.jsonl")]
    assert len(recs) == 6
    fc = json.load(open(out / "cc_sbu_align" / "filter_cap.json"))
    anns = fc["annotations"]
    assert [a["image_id"] for a in anns] == [r["image_id"] for r in recs]
    for rec, ann in zip(recs, anns):
        assert (out / rec["image"]).is_file()
        assert (out / "cc_sbu_align" / "image" / f"{ann['image_id']}.jpg").is_file()
        assert ann["caption"] == rec["description"]
        kind, split, seed = rec["kind"], rec["split"], rec["seed"]
        again = generate(kind, seed, split).texts()
        assert json.loads(json.dumps(again, sort_keys=True)) == {k: rec[k] for k in again}
    assert not [p for p in os.listdir(out) if p.startswith(".tmp")]


def test_export_writes_instruction_conversations_from_the_ground_truth(tmp_path):
    from minigpt4.chat.presets import SHORT_ANSWER, get_preset
    from minigpt4.world.instruct import EXISTENCE_TYPES
    from minigpt4.data.datasets import LlavaSource
    out = tmp_path / "ds"
    export(str(out), 24, "train", seed=3, size=96)
    recs = {r["image_id"]: r for r in map(json.loads, open(out / "data.jsonl"))}
    convs = [json.loads(l) for l in open(out / "instructions.jsonl")]
    assert [c["id"] for c in convs] == list(recs) and len({c["task"] for c in convs}) >= 3
    for c in convs:
        rec, turns = recs[c["id"]], c["conversations"]
        assert c["image"] == rec["image"] and turns[0]["value"].startswith("<image>\n")
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
        asked = [t["value"].replace("<image>\n", "") for t in turns[0::2]]
        answers = [t["value"] for t in turns[1::2]]
        if c["task"] == "qa":  # the world's own questions, with the eval's short-answer instruction
            truth = {f"{q['question']} {SHORT_ANSWER}": q["answer"] for q in rec["qa"]}
            assert 1 <= len(asked) <= 6 and all(truth[q] == a for q, a in zip(asked, answers))
        else:  # one turn: the product's preset prompt, the ground-truth text as the answer
            field = {"describe": "description", "alt-text": "alt_text", "recipe": "recipe",
                     "prompt": "prompt", "website": "html"}[c["task"]]
            assert asked == [get_preset(c["task"]).build_prompt()] and rec[field] in answers[0]
    again = tmp_path / "again"
    export(str(again), 24, "train", seed=3, size=96)
    assert (again / "instructions.jsonl").read_bytes() == (out / "instructions.jsonl").read_bytes()
    records = list(LlavaSource("world", out / "instructions.jsonl").epoch(0))
    assert len(records) == 24 and all(r.turns and len(r.images) == 1 for r in records)
    # qa.jsonl: every image's questions (up to 12) in one conversation, first turns varied
    drills = [json.loads(l) for l in open(out / "qa.jsonl")]
    assert [d["id"] for d in drills] == [i for i, r in recs.items() if r["qa"]]
    firsts = set()
    for d in drills:
        rec, turns = recs[d["id"]], d["conversations"]
        truth = {f"{q['question']} {SHORT_ANSWER}": q["answer"] for q in rec["qa"]}
        asked = [t["value"].replace("<image>\n", "") for t in turns[0::2]]
        assert turns[0]["value"].startswith("<image>\n") and sum("<image>" in t["value"] for t in turns) == 1
        assert len(asked) <= min(12, len(rec["qa"])) and len(asked) == len(set(asked))
        if len(rec["qa"]) <= 12:  # every question asked, but existence questions about the first turn's target
            by_text = {f"{q['question']} {SHORT_ANSWER}": q for q in rec["qa"]}
            first = by_text[asked[0]]
            missing = [by_text[q] for q in set(by_text) - set(asked)]
            assert all(q["type"] in EXISTENCE_TYPES and q["target"] == first["target"] for q in missing), missing
        assert all(truth[q] == t["value"] for q, t in zip(asked, turns[1::2]))
        firsts.add(rec["qa"].index(next(q for q in rec["qa"] if f"{q['question']} {SHORT_ANSWER}" == asked[0])))
    assert len(firsts) > 1  # shuffled: the first question asked is not always the world's first
    assert (again / "qa.jsonl").read_bytes() == (out / "qa.jsonl").read_bytes()


def test_existence_questions_come_before_any_question_that_names_their_target(tmp_path):
    """"Is there a tulip?" after "What color is the tulip?" is answered by the conversation, not the
    image; the eval asks it without history. Drills and qa conversations ask it first."""
    from minigpt4.chat.presets import SHORT_ANSWER
    from minigpt4.world.instruct import EXISTENCE_TYPES, presence_before_mentions
    q = lambda t, target: {"type": t, "target": target, "question": f"{t} {target}", "answer": "x"}
    shuffled = [q("color", "tulip"), q("presence", "axe"), q("count", "cat"), q("presence", "tulip"), q("presence", "cat")]
    assert [(x["type"], x["target"]) for x in presence_before_mentions(shuffled)] == [
        ("presence", "tulip"), ("color", "tulip"), ("presence", "axe"), ("presence", "cat"), ("count", "cat")]
    out = tmp_path / "ds"
    export(str(out), 48, "train", seed=5, size=96)
    recs = {r["image_id"]: r for r in map(json.loads, open(out / "data.jsonl"))}
    checked = 0
    for name in ("qa.jsonl", "instructions.jsonl"):
        for d in map(json.loads, open(out / name)):
            if d["task"] != "qa":
                continue
            truth = {f"{x['question']} {SHORT_ANSWER}": x for x in recs[d["id"]]["qa"]}
            asked = [truth[t["value"].replace("<image>\n", "")] for t in d["conversations"][0::2]]
            for i, x in enumerate(asked):
                if x["type"] in EXISTENCE_TYPES:
                    named_before = [y for y in asked[:i] if y.get("target") == x["target"]]
                    assert not named_before, (d["id"], x, named_before)
                    checked += x["answer"] == "yes"
    assert checked >= 20  # "yes" existence questions were checked, and all came first


def test_attribute_drills_from_an_export_keep_only_the_asked_types(tmp_path):
    from minigpt4.chat.presets import SHORT_ANSWER
    from minigpt4.data.datasets import LlavaSource
    from minigpt4.world.__main__ import main
    from minigpt4.world.export import drills
    out = tmp_path / "ds"
    export(str(out), 24, "train", seed=3, size=96, kinds=["scene", "dish"])
    recs = {r["image_id"]: r for r in map(json.loads, open(out / "data.jsonl"))}
    dest = tmp_path / "elsewhere" / "attr.jsonl"
    dest.parent.mkdir()
    assert main(["drill", str(out / "data.jsonl"), "--out", str(dest), "--types", "color,position"]) == 0
    rows = [json.loads(l) for l in open(dest)]
    keep = {i for i, r in recs.items() if r["kind"] == "scene" and any(q["type"] in ("color", "position") for q in r["qa"])}
    assert {d["id"] for d in rows} == keep and len(keep) >= 3
    for d in rows:
        truth = {f"{q['question']} {SHORT_ANSWER}": q for q in recs[d["id"]]["qa"]}
        turns = d["conversations"]
        asked = [truth[t["value"].replace("<image>\n", "")] for t in turns[0::2]]
        assert {q["type"] for q in asked} <= {"color", "position"}
        assert len(asked) == sum(q["type"] in ("color", "position") for q in truth.values())
        assert all(q["answer"] == t["value"] for q, t in zip(asked, turns[1::2]))
    # Paths are relative to the drill file, so the training loader finds the images.
    records = list(LlavaSource("attr", dest).epoch(0))
    assert len(records) == len(rows) and all(r.turns and len(r.images) == 1 for r in records)
    assert all(os.path.exists(dest.parent / d["image"]) for d in rows)
    assert drills(str(out / "data.jsonl"), str(tmp_path / "again.jsonl"), ["color", "position"], ["scene"]) == len(rows)
    assert main(["drill", str(out / "data.jsonl"), "--out", str(tmp_path / "default.jsonl")]) == 0  # default types
    asked = {t["value"] for l in open(tmp_path / "default.jsonl") for t in json.loads(l)["conversations"][0::2]}
    assert any("small, medium or large?" in q for q in asked) and not any("sign" in q for q in asked)
    assert [json.loads(l)["conversations"] for l in open(tmp_path / "again.jsonl")] == [d["conversations"] for d in rows]
    with pytest.raises(ValueError, match="no image .* has questions of types"):
        drills(str(out / "data.jsonl"), str(tmp_path / "none.jsonl"), ["html-tag"])
    (tmp_path / "bad.jsonl").write_text('{"kind": "scene"\n')
    with pytest.raises(ValueError, match="bad.jsonl:1 is not valid JSON"):
        drills(str(tmp_path / "bad.jsonl"), str(tmp_path / "x.jsonl"))


def test_unnamed_kinds_read_thing_in_the_answers_and_their_regions_are_recorded(tmp_path):
    """`python -m minigpt4.world unname`: a kind the readout will read as "thing" is "thing(s)" in every answer (number
    and article kept right, quotes untouched), the question still names it, and the record lists its regions."""
    from minigpt4.data.datasets import LlavaSource
    from minigpt4.world.__main__ import main
    from minigpt4.world.regions import region_groups, unname_text
    text = 'An eggplant, two sheep, a sheep, 3 eggplants, 2 heads of broccoli and the "eggplant" sign. Eggplants!'
    assert unname_text(text, {"eggplant", "sheep", "broccoli"}) == \
        'A thing, two things, a thing, 3 things, 2 things and the "eggplant" sign. Things!'
    assert unname_text(text, set()) == text and unname_text("An apple.", {"eggplant"}) == "An apple."
    out = tmp_path / "ds"
    export(str(out), 30, "train", seed=5, size=96, kinds=["scene", "dish", "sketch"])
    truth = {r["image_id"]: r["truth"] for r in map(json.loads, open(out / "data.jsonl"))}
    source = [json.loads(l) for l in open(out / "instructions.jsonl")]
    dest = tmp_path / "elsewhere" / "unnamed.jsonl"
    dest.parent.mkdir()
    assert main(["unname", str(out / "instructions.jsonl"), "--truth", str(out / "data.jsonl"), "--out", str(dest),
                 "--share", "1"]) == 0
    rows = [json.loads(l) for l in open(dest)]
    assert [r["id"] for r in rows] == [r["id"] for r in source]
    unnamed_any = 0
    for before, after in zip(source, rows):
        t = truth[before["id"]]
        emoji = {o["name"] for o in t.get("objects", []) if o["type"] == "object"} | \
                {i["name"] for i in t.get("ingredients", [])}
        if before["task"] not in ("describe", "alt-text", "qa"):  # recipes, prompts, pages: as they were
            assert "unnamed" not in after and after["conversations"] == before["conversations"]
            continue
        groups = region_groups(t)
        emoji &= {g["name"] for g in groups if g}  # a dish's ingredient no region is mostly of keeps its name
        assert after["unnamed"] == [i for i, g in enumerate(groups) if g and g["name"] in emoji]
        unnamed_any += bool(after["unnamed"])
        for b, a in zip(before["conversations"], after["conversations"]):
            if b["from"] == "human":
                assert a == b
            else:
                assert not {n for _, names in find_mentions(a["value"]) for n in names} & emoji
                if {n for _, names in find_mentions(b["value"]) for n in names} & emoji:
                    assert "thing" in a["value"].lower()
    assert unnamed_any >= 5
    # The loader reads the regions; paths were rewritten for the new folder
    records = list(LlavaSource("u", dest).epoch(0))
    assert [r.unnamed for r in records] == [r.get("unnamed") for r in rows]
    assert all((dest.parent / r["image"]).is_file() for r in rows)
    # the curated descriptions' folder (cc_sbu_align): every caption, a folder beside its images
    from minigpt4.data.datasets import CCSBUAlignSource
    assert main(["unname", str(out / "cc_sbu_align"), "--truth", str(out / "data.jsonl"), "--out",
                 str(tmp_path / "curated"), "--share", "1"]) == 0
    curated = list(CCSBUAlignSource("c", tmp_path / "curated").epoch(0))
    assert len(curated) == 30 and sum(bool(r.unnamed) for r in curated) >= 5
    for r in curated:
        groups = region_groups(truth[r.key])
        named = {n for _, names in find_mentions(r.caption) for n in names}
        assert not named & {groups[i]["name"] for i in r.unnamed} and r.images[0]()
    # share 0: nothing unnamed, answers unchanged
    assert main(["unname", str(out / "instructions.jsonl"), "--truth", str(out / "data.jsonl"), "--out",
                 str(tmp_path / "none.jsonl"), "--share", "0"]) == 0
    for before, after in zip(source, map(json.loads, open(tmp_path / "none.jsonl"))):
        assert after.get("unnamed", []) == [] and after["conversations"] == before["conversations"]
    # --always: those kinds in every image they are in (wherever a region shows them), no other kind
    kinds = sorted({g["name"] for t in truth.values() if t["kind"] == "scene" for g in region_groups(t) if g
                    and g["name"] in {o["name"] for o in t["objects"] if o["type"] == "object"}})
    always = kinds[:3]
    assert main(["unname", str(out / "instructions.jsonl"), "--truth", str(out / "data.jsonl"), "--out",
                 str(tmp_path / "always.jsonl"), "--share", "0", "--always", ",".join(always)]) == 0
    hit = 0
    for before, after in zip(source, map(json.loads, open(tmp_path / "always.jsonl"))):
        if before["task"] not in ("describe", "alt-text", "qa"):
            continue
        groups = region_groups(truth[before["id"]])
        assert after["unnamed"] == [i for i, g in enumerate(groups) if g and g["name"] in always]
        hit += bool(after["unnamed"])
    assert hit >= 3
    with pytest.raises(SystemExit):
        main(["unname", str(out / "instructions.jsonl"), "--truth", str(out / "data.jsonl"), "--out",
              str(tmp_path / "x.jsonl"), "--always", "unicorn-bike"])
    # a record of another export is refused by name; a bad 'unnamed' field is refused by the loader
    stray = tmp_path / "stray.jsonl"
    stray.write_text(json.dumps(dict(source[0], id="scene_train_77")) + "\n")
    with pytest.raises(ValueError, match="'scene_train_77' is not an image of"):
        main(["unname", str(stray), "--truth", str(out / "data.jsonl"), "--out", str(tmp_path / "x.jsonl")])
    stray.write_text(json.dumps(dict(source[0], unnamed=["top left"])) + "\n")
    with pytest.raises(ValueError, match="'unnamed' must be a list of region indices"):
        list(LlavaSource("bad", stray).epoch(0))


def test_atomic_write_leaves_no_partial_file(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write_bytes(str(target), b"old")
    real = os.fdopen

    def failing_fdopen(fd, mode):
        f = real(fd, mode)
        f.write(b"partial")
        f.close()
        raise OSError("disk full")

    monkeypatch.setattr(os, "fdopen", failing_fdopen)
    with pytest.raises(OSError):
        atomic_write_bytes(str(target), b"new content")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["f.bin"]


def test_cli_export(tmp_path):
    from minigpt4.world.__main__ import main
    assert main(["export", "--out", str(tmp_path / "c"), "--n", "3", "--split", "val", "--seed", "1"]) == 0
    assert len(open(tmp_path / "c" / "data.jsonl").read().splitlines()) == 3


def test_public_api_is_documented():
    for name in world.__all__:
        obj = getattr(world, name)
        if callable(obj):
            assert obj.__doc__, name


def test_first_turns_are_drawn_like_any_question_not_mostly_yes(tmp_path):
    """The first turn is what the eval and a chat ask without history. Moving every existence question ahead of the
    questions naming its target made most first turns "yes, it is there" (78% on the 224 px drills), and a model
    trained on them says "yes" to any first presence question; first turns now answer like the question pool."""
    from minigpt4.world.export import drills
    out = tmp_path / "ds"
    export(str(out), 60, "train", seed=7, size=96, kinds=("scene",))
    drills(str(out / "data.jsonl"), str(out / "qa-attr.jsonl"),
           types=["presence", "object", "color", "count", "position"])
    firsts, pool = [], []
    for d in map(json.loads, open(out / "qa-attr.jsonl")):
        answers = [t["value"] for t in d["conversations"][1::2]]
        firsts.append(answers[0] == "yes")
        pool += [a == "yes" for a in answers]
    first_yes, pool_yes = sum(firsts) / len(firsts), sum(pool) / len(pool)
    assert first_yes < pool_yes + 0.15, (first_yes, pool_yes)
    assert 0 < first_yes  # presence questions still come first sometimes


def test_stand_in_questions_ask_about_an_unnamed_kind_by_a_noun_no_kind_is_called(tmp_path):
    """`unname --stand-in 1`: every unnamed kind of a drill is asked about by a stand-in noun (plural kept), its yes/no
    questions are gone with their answers, the image stays on the first question, the answers of the kept questions
    are unchanged, and the unnaming itself is the same as without stand-ins."""
    from minigpt4.world.__main__ import main
    from minigpt4.world.export import drills
    from minigpt4.world.regions import STAND_INS, region_groups
    from minigpt4.world.vocab import mention_table
    words = {w for form in mention_table() for w in form.split()}
    assert len(set(STAND_INS)) == len(STAND_INS) >= 50
    assert not [n for n in STAND_INS if n in words or n + "s" in words]  # "paddle" is in "ping pong paddle": not one
    out = tmp_path / "ds"
    export(str(out), 40, "train", seed=7, size=96, kinds=["scene"])
    drills(str(out / "data.jsonl"), str(out / "qa.jsonl"))
    truth = {r["image_id"]: r["truth"] for r in map(json.loads, open(out / "data.jsonl"))}
    args = ["unname", str(out / "qa.jsonl"), "--truth", str(out / "data.jsonl"), "--share", "0.5"]
    assert main(args + ["--out", str(tmp_path / "plain.jsonl")]) == 0
    assert main(args + ["--out", str(tmp_path / "stand.jsonl"), "--stand-in", "1"]) == 0
    plain = [json.loads(l) for l in open(tmp_path / "plain.jsonl")]
    stand = [json.loads(l) for l in open(tmp_path / "stand.jsonl")]
    assert [r["unnamed"] for r in plain] == [r["unnamed"] for r in stand]
    nouns = set(STAND_INS) | {n + "s" for n in STAND_INS} | {n + "es" for n in STAND_INS}
    rewritten = 0
    for p, s in zip(plain, stand):
        if p["conversations"] == s["conversations"]:
            continue
        gone = {region_groups(truth[p["id"]])[i]["name"] for i in p["unnamed"]}
        about_gone = [bool({n for _, names in find_mentions(q["value"]) for n in names} & gone)
                      for q in p["conversations"][0::2]]
        answers = [t["value"] for t in p["conversations"][1::2]]
        dropped = [g and a in ("yes", "no") for g, a in zip(about_gone, answers)]
        # the kept pairs are the plain record's minus the yes/no questions about unnamed kinds, answers unchanged
        assert [t["value"] for t in s["conversations"][1::2]] == [a for a, d in zip(answers, dropped) if not d]
        asked = [t["value"] for t in s["conversations"][0::2]]
        assert asked[0].startswith("<image>\n") and not any("<image>" in q for q in asked[1:])
        kept_gone = [g for g, d in zip(about_gone, dropped) if not d]
        for q, was_gone in zip(asked, kept_gone):
            used = {w.strip("?,.") for w in q.split()} & nouns
            assert bool(used) == was_gone and not {n for _, names in find_mentions(q) for n in names} & gone
            rewritten += was_gone
    assert rewritten >= 10
    with pytest.raises(SystemExit):
        main(args + ["--out", str(tmp_path / "bad.jsonl"), "--stand-in", "2"])
