"""Curation parts without a model: the rule cleaner, the filter rules, sources, the store, the report."""
from __future__ import annotations

import io
import json
import tarfile

import pytest
from PIL import Image

from minigpt4.curate.clean import clean, collapse_repeated_words, fix_unfinished_last_sentence, is_english
from minigpt4.curate.export import build_report, export
from minigpt4.curate.filters import RULE_NAMES, FilterConfig, apply_filters
from minigpt4.curate.prompts import FIX_PROMPT, fix_message
from minigpt4.curate.sources import expand_braces, iter_source, read_image_bytes
from minigpt4.curate.store import Store

LONG = ("The image shows a busy street with many cars, people walking on the sidewalk, tall buildings "
        "and a clear blue sky above the city.")


# --- rule-based cleaner ------------------------------------------------------------------------
@pytest.mark.parametrize("raw, expected, edits", [
    ("The image shows a dog. The image shows a dog. It sits on the grass.",
     "The image shows a dog. It sits on the grass.", {"repeated_sentences"}),
    ("A red car is parked on the the street.", "A red car is parked on the street.", {"repeated_words"}),
    ("there is a man on a bench, a man on a bench, a man on a bench in the park.",
     "There is a man on a bench, in the park.", {"repeated_words", "capitalization"}),
    ("The sky is blue @@@@ and clear ~~~~ today!!!", "The sky is blue and clear today!", {"meaningless_characters"}),
    ("A man rides a bike.###Human: ###Assistant: He wears a helmet.",
     "A man rides a bike. He wears a helmet.", {"meaningless_characters"}),
    ("A woman holds an umbrella. 这是一只狗。 Il pleut dans une rue de Paris. The street is wet.",
     "A woman holds an umbrella. The street is wet.", {"non_english"}),
    ("A boat floats on a lake. In the background there are mountains and",
     "A boat floats on a lake.", {"unfinished_sentence"}),
])
def test_cleaner_examples(raw, expected, edits):
    text, done = clean(raw)
    assert text == expected
    assert edits <= set(done)


def test_cleaner_leaves_a_good_paragraph_alone():
    assert clean(LONG) == (LONG, [])


def test_cleaner_parts():
    assert is_english("The dog is on the sofa.")
    assert not is_english("Der Hund liegt auf dem Sofa.")
    assert not is_english("Un perro grande está en el parque con los niños.")
    assert is_english("Bright red flowers everywhere.")  # no function word, still English
    assert is_english("A café in Paris called Le Petit Bistro.")
    assert not is_english("这是一只狗")
    assert not is_english("1234 !!")
    assert collapse_repeated_words("very very big") == "very big"
    # A lone unfinished sentence is ended, not deleted (nothing else would be left).
    assert fix_unfinished_last_sentence("a dog on the grass") == "a dog on the grass."


# --- filter rules: every rule with a real example, the report counts them ----------------------
FILTER_CASES = [
    (f"Here is the corrected paragraph: \"{LONG}\"", True, LONG, "fixer_preamble"),
    (f"{LONG} I removed the repeated sentences and the meaningless characters.", True, LONG, "fixer_self_talk"),
    (f"Note: the paragraph was already correct. {LONG}", True, LONG, "fixer_self_talk"),
    ("As an AI language model, I cannot see images, so I can't fix a description of one.", False, None,
     "fixer_refusal"),
    (f"I'm sorry I made a mistake in my previous answer. {LONG}", False, None, "apology"),
    (f"I apologize for the confusion. {LONG}", False, None, "apology"),
    ("", False, None, "empty"),
    ("Here is the corrected paragraph:", False, None, "empty"),
    ("A dog on grass.", False, None, "too_short"),
]


@pytest.mark.parametrize("text, kept, final, rule", FILTER_CASES)
def test_filter_rules(text, kept, final, rule):
    res = apply_filters(text)
    assert res.kept is kept
    assert rule in [a["rule"] for a in res.applied]
    if final is not None:
        assert res.text == final
    if not kept:
        assert res.dropped_by == rule  # exactly one reason per dropped item


def test_filter_keeps_a_clean_paragraph_untouched():
    res = apply_filters(LONG)
    assert res.kept and res.text == LONG and res.applied == []
    assert not apply_filters(LONG, FilterConfig(min_words=100)).kept


def test_fix_prompt_is_the_papers_word_for_word():
    assert FIX_PROMPT.startswith("Fix the error in the given paragraph. Remove any repeating sentences")
    assert FIX_PROMPT.endswith("Return directly the input paragraph if it is already correct without explanation.")
    assert fix_message("P", FIX_PROMPT) == FIX_PROMPT + "\n\nP"
    assert fix_message("P", "Clean this: {paragraph} - thanks") == "Clean this: P - thanks"


# --- sources ----------------------------------------------------------------------------------
def _jpeg(color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buf, format="JPEG")
    return buf.getvalue()


def test_sources_folder_jsonl_and_tar_shards(tmp_path):
    d = tmp_path / "imgs"
    (d / "sub").mkdir(parents=True)
    (d / "a.jpg").write_bytes(_jpeg())
    (d / "sub" / "b.png").write_bytes(_jpeg())
    (d / "notes.txt").write_text("not an image")
    folder = list(iter_source(str(d)))
    assert [i for i, _ in folder] == ["a", "sub_b"]
    assert read_image_bytes(folder[0][1]) == _jpeg()

    lst = tmp_path / "list.jsonl"
    lst.write_text(json.dumps({"image": "imgs/a.jpg", "image_id": "42"}) + "\n\n" +
                   json.dumps({"path": str(d / "sub" / "b.png")}) + "\n")
    assert [i for i, _ in iter_source(str(lst))] == ["42", "b"]

    for n in range(2):
        with tarfile.open(tmp_path / f"shard-{n:03d}.tar", "w") as tar:
            for k in range(2):
                for ext, data in (("jpg", _jpeg((n * 50, k * 50, 0))), ("txt", b"caption")):
                    info = tarfile.TarInfo(f"s{n}k{k}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    shards = list(iter_source(str(tmp_path / "shard-{000..001}.tar")))
    assert [i for i, _ in shards] == ["s0k0", "s0k1", "s1k0", "s1k1"]
    assert read_image_bytes(shards[3][1]) == _jpeg((50, 50, 0))
    assert expand_braces("x-{08..10}.tar") == ["x-08.tar", "x-09.tar", "x-10.tar"]


def test_sources_bad_input_errors_name_the_fix(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        list(iter_source(str(tmp_path / "empty")))
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"caption": "no image key"}\n')
    with pytest.raises(ValueError, match="names no image"):
        list(iter_source(str(bad)))
    with pytest.raises(ValueError, match="not a folder, a .jsonl"):
        list(iter_source(str(tmp_path / "x.zip")))


# --- store + export ---------------------------------------------------------------------------
def test_store_steps_review_and_export(tmp_path):
    with Store(tmp_path) as st:
        assert st.add_items([("a", {"kind": "file", "path": "a.jpg"}), ("b", {"kind": "file", "path": "b.jpg"})]) == 2
        assert st.add_items([("a", {"kind": "file", "path": "a.jpg"}), ("c", {"kind": "file", "path": "c.jpg"})]) == 1
        assert st.ids() == ["a", "b", "c"]
        st.mark_bad("c", "ImageError: truncated")
        for item_id in ("a", "b"):
            st.set_described(item_id, f"raw {item_id}", f"raw {item_id}", 5, True, f"image/{item_id}.jpg")
        res = apply_filters(f"I apologize. {LONG}")
        st.set_fixed("a", "openai", LONG, None, 2, 10, 20, 0.5, [], "kept", [], LONG)
        st.set_fixed("b", "openai", None, "gave up", 3, 0, 0, 0.0, [])
        st.set_fixed("b", "openai", f"I apologize. {LONG}", None, 1, 7, 9, 0.25, [], "dropped", res.applied, res.text)
        b = st.get("b")
        assert (b.fix_status, b.fix_attempts, b.fix_prompt_tokens, b.fix_error) == ("done", 4, 7, None)
        with pytest.raises(ValueError, match="not up for review"):
            st.set_review("b", "approved")
        with pytest.raises(ValueError, match="needs the edited text"):
            st.set_review("a", "edited", "  ")
        st.set_review("a", "edited", "A better caption.")

        report = export(st, require_review=True)
        assert st.reset_bad() == 1 and st.get("c").describe_status == "pending" and st.get("c").error is None
    cap = json.loads((tmp_path / "filter_cap.json").read_text())
    assert cap == {"annotations": [{"image_id": "a", "caption": "A better caption."}]}
    prov = [json.loads(line) for line in (tmp_path / "provenance.jsonl").read_text().splitlines()]
    assert [p["id"] for p in prov] == ["a", "b", "c"]
    assert prov[0]["raw_text"] == "raw a" and prov[0]["fix_text"] == LONG and prov[0]["review"] == "edited"
    assert prov[1]["filter_rules"] == [{"rule": "apology", "action": "drop"}]
    assert report["bad"] == [{"image_id": "c", "source": {"kind": "file", "path": "c.jpg"}, "error": "ImageError: truncated"}]
    assert report["filter"]["rules"]["apology"] == {"repaired": 0, "dropped": 1}
    assert set(report["filter"]["rules"]) == set(RULE_NAMES)
    assert (report["fix"]["attempts"], report["fix"]["cost"]) == (6, 0.75)
    assert report["funnel"].startswith("3 images -> 2 described -> 2 fixed -> 1 kept")
    assert "apology" in (tmp_path / "report.md").read_text()


def test_store_refuses_a_folder_without_a_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="minigpt4 curate run"):
        Store(tmp_path / "nothing", create=False)
    assert build_report([], True)["images"] == 0
