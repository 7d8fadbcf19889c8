"""`minigpt4 curate check`: the automatic reviewer that checks descriptions against world ground truth.

A real 6-image world export, a real `curate run` on its data.jsonl (tiny model, rules fixer), then
item texts crafted from the ground truth with known hallucinations: the check must edit, approve and
reject as a careful person would, store it like the review page does (reviewer + reason in
provenance), leave a person's decisions alone, repeat nothing on a re-run, resume after a kill, and
put the edited text into filter_cap.json.
"""
from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from minigpt4.cli import main
from minigpt4.curate.check import CheckConfig, check, judge, load_truths, split_sentences
from minigpt4.curate.filters import apply_filters
from minigpt4.curate.store import Store
from minigpt4.world.metrics import truth_names

HALLUCINATION = "A giraffe is sleeping right behind them."
ONLY_HALLUCINATIONS = ("A giraffe and a zebra stand together in a wide open field under a bright sky. "
                       "Two elephants walk slowly behind them, one after the other, towards the horizon.")
NO_OBJECTS = ("The picture is bright and clear, with soft light, and everything in it is arranged neatly, "
              "which makes the whole composition look calm, balanced and pleasant to the eye.")
SHORT_AFTER_CUT = ("The sketch shows a simple web page layout. A large giraffe, a small zebra and a tall elephant "
                   "are drawn in the middle of the page, all of them in pencil.")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """The brief's export: 6 images at 128 px as JPEG (2 sketches, 2 prompt images, 2 dishes)."""
    from minigpt4.world.__main__ import main as world_main
    out = tmp_path_factory.mktemp("world")
    assert world_main(["export", "--out", str(out), "--n", "6", "--size", "128", "--format", "jpg"]) == 0
    return out


def records(world: Path) -> dict[str, dict]:
    return {r["image_id"]: r for r in map(json.loads, (world / "data.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def base_run(world, tmp_path_factory) -> Path:
    """`curate run --images world/data.jsonl` with the tiny model and the rules fixer, as a user runs it."""
    out = tmp_path_factory.mktemp("base") / "cur"
    assert main(["curate", "run", "--images", str(world / "data.jsonl"), "--out", str(out), "--model", "tiny",
                 "--device", "cpu", "--max-new-tokens", "4", "--fixer", "rules", "--no-progress"]) == 0
    return out


def crafted_texts(world: Path) -> dict[str, str]:
    recs = records(world)
    assert sorted(recs) == ["dish_train_3", "dish_train_4", "prompt_train_2", "prompt_train_5",
                            "sketch_train_0", "sketch_train_1"], "the world export changed; re-pick the texts"
    for r in recs.values():  # the crafted hallucinations must really be absent from every image
        assert not truth_names(r["truth"]) & {"giraffe", "zebra", "elephant"}
    d2 = recs["prompt_train_2"]["description"]
    first, rest = d2.split(". ", 1)
    return {
        "prompt_train_2": f"{first}. {HALLUCINATION} {rest}",   # -> edited back to the true description
        "prompt_train_5": recs["prompt_train_5"]["description"],  # -> approved
        "dish_train_3": ONLY_HALLUCINATIONS,                      # -> rejected: nothing left
        "dish_train_4": NO_OBJECTS,                               # -> rejected: names none of the dish
        "sketch_train_0": SHORT_AFTER_CUT,                        # -> rejected: too short after the cut
        "sketch_train_1": recs["sketch_train_1"]["description"],  # a person rejects it first
    }


def make_run(base_run: Path, world: Path, dest: Path) -> Path:
    """A copy of the real run whose items carry crafted (fixed, filtered, kept) texts."""
    out = dest / "cur"
    shutil.copytree(base_run, out)
    with Store(out, create=False) as st:
        assert sorted(st.ids()) == sorted(crafted_texts(world))  # the JSONL registered one item per record
        for item_id, text in crafted_texts(world).items():
            res = apply_filters(text)
            assert res.kept, (item_id, res.applied)
            st.set_fixed(item_id, "rules", text, None, 0, 0, 0, 0.0, [], "kept", res.applied, res.text)
    return out


def test_check_decides_like_a_careful_person_and_export_uses_it(world, base_run, tmp_path, capsys):
    out = make_run(base_run, world, tmp_path)
    recs = records(world)
    with Store(out, create=False) as st:
        st.set_review("sketch_train_1", "rejected")  # a person got there first

    assert main(["curate", "check", str(out), "--truth", str(world / "data.jsonl"), "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "truth-check: 5 decided now (1 approved, 1 edited, 3 rejected" in said
    assert "1 decided before" in said

    with Store(out, create=False) as st:
        items = {i.id: i for i in st.items()}
    edited = items["prompt_train_2"]
    assert (edited.review, edited.reviewer) == ("edited", "truth-check")
    assert edited.review_text == recs["prompt_train_2"]["description"]  # the other sentences word for word
    assert edited.review_reason["rule"] == "hallucination"
    assert edited.review_reason["dropped"] == [HALLUCINATION]
    assert edited.review_reason["hallucinated"] == ["giraffe"] and edited.review_reason["recall"] == 1.0
    assert (items["prompt_train_5"].review, items["prompt_train_5"].review_reason["rule"]) == ("approved", "clean")
    assert {k: (items[k].review, items[k].review_reason["rule"]) for k in ("dish_train_3", "dish_train_4",
                                                                          "sketch_train_0")} == {
        "dish_train_3": ("rejected", "nothing_left"), "dish_train_4": ("rejected", "low_recall"),
        "sketch_train_0": ("rejected", "too_short")}
    assert items["dish_train_4"].review_reason["recall"] == 0.0
    assert items["dish_train_4"].review_reason["missed"] == sorted(truth_names(recs["dish_train_4"]["truth"]))
    assert items["sketch_train_0"].review_reason["words"] == 8
    human = items["sketch_train_1"]
    assert (human.review, human.reviewer, human.review_reason) == ("rejected", "human", {})

    cap = json.loads((out / "filter_cap.json").read_text())["annotations"]
    assert cap == [{"image_id": "prompt_train_2", "caption": recs["prompt_train_2"]["description"]},
                   {"image_id": "prompt_train_5", "caption": recs["prompt_train_5"]["description"]}]
    prov = {p["id"]: p for p in map(json.loads, (out / "provenance.jsonl").read_text().splitlines())}
    assert prov["prompt_train_2"]["reviewer"] == "truth-check" and prov["prompt_train_2"]["exported"]
    assert prov["prompt_train_2"]["fix_text"] == crafted_texts(world)["prompt_train_2"]
    assert prov["prompt_train_2"]["review_reason"]["dropped"] == [HALLUCINATION]
    assert prov["dish_train_3"]["review_reason"]["rule"] == "nothing_left" and not prov["dish_train_3"]["exported"]

    report = json.loads((out / "report.json").read_text())
    assert report["funnel"] == ("6 images -> 6 described -> 6 fixed -> 6 kept by the rules -> 2 passed review "
                                "(1 approved, 1 edited, 4 rejected) -> 2 exported (approved in review)")
    assert report["review"]["by_reviewer"]["truth-check"] == {
        "approved": 1, "edited": 1, "rejected": 3,
        "rules": {"approved: clean": 1, "edited: hallucination": 1, "rejected: low_recall": 1,
                  "rejected: nothing_left": 1, "rejected: too_short": 1}}
    assert report["review"]["by_reviewer"]["human"]["rejected"] == 1
    assert "| truth-check | rejected: low_recall | 1 |" in (out / "report.md").read_text()
    assert main(["curate", "report", str(out)]) == 0
    assert "| truth-check | 1 | 1 | 3 |" in capsys.readouterr().out

    # Re-running repeats nothing; a person overruling the check afterwards is left alone too.
    with Store(out, create=False) as st:
        st.set_review("dish_train_4", "approved")
        before = {i.id: (i.review, i.review_text, i.reviewed_at, i.updated_at) for i in st.items()}
    assert main(["curate", "check", str(out), "--truth", str(world / "data.jsonl"), "--no-progress"]) == 0
    assert "truth-check: 0 decided now" in capsys.readouterr().out
    with Store(out, create=False) as st:
        assert {i.id: (i.review, i.review_text, i.reviewed_at, i.updated_at) for i in st.items()} == before
        assert st.get("dish_train_4").reviewer == "human"
    cap = json.loads((out / "filter_cap.json").read_text())["annotations"]
    assert [a["image_id"] for a in cap] == ["prompt_train_2", "dish_train_4", "prompt_train_5"]


def test_check_resumes_after_an_interruption_with_each_decision_kept(world, base_run, tmp_path, monkeypatch):
    out = make_run(base_run, world, tmp_path)
    real = Store.set_review
    calls = []

    def dies_on_the_third(self, *a, **kw):
        calls.append(a[0])
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if Ctrl+C / kill landed mid-check
        return real(self, *a, **kw)

    monkeypatch.setattr(Store, "set_review", dies_on_the_third)
    with Store(out, create=False) as st, pytest.raises(KeyboardInterrupt):
        check(st, world / "data.jsonl")
    monkeypatch.setattr(Store, "set_review", real)
    with Store(out, create=False) as st:
        done = {i.id: i.reviewed_at for i in st.items("review IS NOT NULL")}
        assert sorted(done) == sorted(calls[:2])  # the two made before the kill were committed
        summary = check(st, world / "data.jsonl")
        assert summary["checked"] == 4 and summary["already_decided"] == 2
        assert {i: st.get(i).reviewed_at for i in done} == done  # not decided again
        assert st.count("review IS NULL") == 0


def test_store_if_pending_never_overwrites_and_old_runs_gain_the_columns(tmp_path):
    with Store(tmp_path) as st:
        st.add_items([("a", {"kind": "file", "path": "a.jpg"})])
        st.set_fixed("a", "rules", "x " * 30, None, 0, 0, 0, 0.0, [], "kept", [], "x " * 30)
        st.set_review("a", "approved")
        after = st.set_review("a", "rejected", reviewer="truth-check", reason={"rule": "too_short"}, if_pending=True)
        assert (after.review, after.reviewer, after.review_reason) == ("approved", "human", {})
        st.set_review("a", None)  # undo clears who and why
        assert (st.get("a").reviewer, st.get("a").review_reason) == (None, {})
    # A run folder from before the reviewer columns: opening it adds them, the data stays.
    old = tmp_path / "old"
    old.mkdir()
    with sqlite3.connect(old / "state.sqlite") as c:
        c.execute("CREATE TABLE items (id TEXT PRIMARY KEY, seq INTEGER NOT NULL, source TEXT NOT NULL, "
                  "describe_status TEXT NOT NULL DEFAULT 'pending', error TEXT, image_file TEXT, raw_text TEXT, "
                  "raw_first TEXT, raw_tokens INTEGER, continued INTEGER, described_at REAL, fix_status TEXT NOT "
                  "NULL DEFAULT 'pending', fixer TEXT, fix_text TEXT, fix_error TEXT, fix_attempts INTEGER NOT "
                  "NULL DEFAULT 0, fix_prompt_tokens INTEGER NOT NULL DEFAULT 0, fix_completion_tokens INTEGER NOT "
                  "NULL DEFAULT 0, fix_cost REAL NOT NULL DEFAULT 0, fix_edits TEXT, fixed_at REAL, filter_status "
                  "TEXT NOT NULL DEFAULT 'pending', filter_rules TEXT, final_text TEXT, filtered_at REAL, review "
                  "TEXT, review_text TEXT, reviewed_at REAL, updated_at REAL NOT NULL)")
        c.execute("INSERT INTO items(id, seq, source, filter_status, final_text, review, updated_at) "
                  "VALUES('b', 0, '{}', 'kept', 'text', 'approved', 0)")
    with Store(old, create=False) as st:
        b = st.get("b")
        assert (b.review, b.reviewer, b.review_reason) == ("approved", None, {})


def test_judge_rules():
    prompt = {"subjects": [{"noun": "crocodile", "count": 1}, {"noun": "magnet", "count": 3}]}
    text = ('It shows a blue crocodile and three small magnets. The title reads "Giraffe Park". '
            "The crocodile looks pumpkin in color, almost cherry red.")
    assert split_sentences(text) == ["It shows a blue crocodile and three small magnets.",
                                     'The title reads "Giraffe Park".',
                                     "The crocodile looks pumpkin in color, almost cherry red."]
    cfg = CheckConfig(min_words=5)
    # Quoted text and colour words ("pumpkin in color", "cherry red") are not object mentions.
    assert judge(text, prompt, cfg).decision == "approved"
    bad = text + " A zebra watches."
    v = judge(bad, prompt, cfg)
    assert (v.decision, v.text, v.reason["dropped"]) == ("edited", text, ["A zebra watches."])
    tolerant = judge(bad, prompt, CheckConfig(min_words=5, max_hallucinated=1))
    assert (tolerant.decision, tolerant.reason["rule"], tolerant.reason["hallucinated"]) == ("approved", "tolerated",
                                                                                            ["zebra"])
    # Recall counts names that are not vocabulary words (a dish's name) by their plain text.
    dish = {"dish": "fruit salad", "ingredients": [{"name": "banana"}, {"name": "grapes"}]}
    v = judge("A bowl of fruit salad with bananas, seen from above on a table.", dish, cfg)
    assert (v.decision, v.reason["recall"], v.reason["missed"]) == ("approved", 0.667, ["grapes"])
    assert judge("A bowl of fruit salad with bananas, seen from above on a table.", dish,
                 CheckConfig(min_words=5, min_recall=0.8)).reason["rule"] == "low_recall"
    # A sign's words count as something to name: a scene with only a sign is not a free pass.
    sign = {"objects": [{"type": "text", "name": "sign", "text": "YES"}], "background": "wooden table"}
    assert judge("The image shows a strange poem about horror and laughter.", sign, cfg).reason["rule"] == "low_recall"
    assert judge('A wooden sign on a table reads "YES" in bold paint.', sign, cfg).decision == "approved"
    # A sketch holds no nameable objects: any object it is said to contain is a hallucination.
    sketch = {"blocks": [{"type": "nav"}]}
    v = judge("A web page sketch with a navigation bar. A cat sits in the corner of it.", sketch, cfg)
    assert (v.decision, v.text) == ("edited", "A web page sketch with a navigation bar.")


def test_truth_matching_and_clear_errors(world, tmp_path, capsys):
    # Items from another source (copies elsewhere, other ids) are matched by image_id, then file name.
    with Store(tmp_path / "run") as st:
        st.add_items([("dish_train_3", {"kind": "file", "path": "/elsewhere/x.jpg"}),
                      ("renamed", {"kind": "file", "path": "/copies/prompt_train_5.jpg"}),
                      ("stranger", {"kind": "file", "path": "/copies/unknown.jpg"})])
        truths = load_truths(world / "data.jsonl", st.items())
    recs = records(world)
    assert truths == {"dish_train_3": recs["dish_train_3"]["truth"], "renamed": recs["prompt_train_5"]["truth"]}

    no_truth = tmp_path / "plain.jsonl"
    no_truth.write_text('{"image": "a.jpg"}\n')
    with pytest.raises(ValueError, match="none with a \"truth\""):
        load_truths(no_truth, [])
    with Store(tmp_path / "run") as st:
        for item_id in st.ids():
            st.set_fixed(item_id, "rules", NO_OBJECTS, None, 0, 0, 0, 0.0, [], "kept", [], NO_OBJECTS)
    other = tmp_path / "other.jsonl"
    other.write_text('{"image": "zz.jpg", "truth": {"objects": []}}\n')
    for argv, msg in [(["--truth", str(tmp_path / "missing.jsonl")], "does not exist"),
                      (["--truth", str(other)], "none of the 3 item"),
                      (["--truth", str(other), "--min-recall", "2"], "between 0 and 1"),
                      (["--truth", str(other), "--reviewer", "human"], "not 'human'")]:
        assert main(["curate", "check", str(tmp_path / "run"), *argv, "--no-progress"]) == 2, argv
        assert msg in capsys.readouterr().err, argv
    assert main(["curate", "check", str(tmp_path / "run"), "--truth", str(world / "data.jsonl"), "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert "2 decided now" in said and "1 item(s) have no record" in said and "stranger" in said


def test_people_and_page_sketches_are_checked_like_a_careful_reader():
    from minigpt4.curate.check import CheckConfig, hallucinated, judge, sketch_recall
    assert hallucinated("A woman holds a flower.", {"flower"}) == ["woman"]
    assert hallucinated("A grinning face smiles.", {"grinning face"}) == []
    sketch = {"kind": "sketch", "blocks": [{"type": "header", "title": "Bike Club"}, {"type": "form"},
                                           {"type": "footer"}]}
    assert sketch_recall("This is a photo of a selfie with a person in front of a screen.", sketch)[0] == 0.0
    r, missed = sketch_recall("A hand-drawn web page with a large title and a form for your email.", sketch)
    assert abs(r - 2 / 3) < 1e-9 and missed == ["footer"]
    cfg = CheckConfig(min_words=5)
    assert judge("This is a photo of a selfie. The image shows a person taking photos with their device.",
                 sketch, cfg).decision == "rejected"
    good = "The image is a sketch of a web page. It has a big title, a form with an email field, and a footer."
    assert judge(good, sketch, cfg).decision == "approved"


def test_redo_undoes_only_this_reviewers_decisions(tmp_path):
    from minigpt4.curate.check import undo_decisions
    from minigpt4.curate.store import Store
    with Store(tmp_path / "run") as store:
        store.add_items([(f"img{i}", {"kind": "file", "path": f"/x/{i}.png"}) for i in range(3)])
        for i in range(3):
            store.set_filtered(f"img{i}", "kept", [], f"text {i}")
        store.set_review("img0", "approved", reviewer="truth-check", if_pending=True)
        store.set_review("img1", "rejected", reviewer="human")
        store.set_review("img2", "edited", "fixed", reviewer="truth-check", if_pending=True)
        assert undo_decisions(store, "truth-check") == 2
        assert [store.get(f"img{i}").review for i in range(3)] == [None, "rejected", None]
        with pytest.raises(ValueError, match="person"):
            undo_decisions(store, "human")
