"""The word readout's fit (`minigpt4 fit-words`): DETR-style per-query names on frozen features, no LLM."""
import json

import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

from minigpt4.train.words import fit, match_targets, name_scores


def test_matching_gives_each_present_name_its_best_free_query():
    logp = torch.log(torch.tensor([[[.1, .8, .1], [.1, .7, .2], [.9, .05, .05]]]))  # 3 queries, classes none/a/b
    # a is best on query 0, b's best free query is 1 (query 0 is taken); query 2 stays "none"
    assert match_targets(logp, [[1, 2]]).tolist() == [[1, 2, 0]]
    assert match_targets(logp, [[]]).tolist() == [[0, 0, 0]]
    assert name_scores(torch.tensor([[1, 2, 0], [0, 0, 0]]), [[1], [2]]) == {
        "recall": 0.5, "false_per_image": 0.5, "f1": 0.5}


def _synthetic(n, classes, queries=4, dim=16, seed=0):
    """Scenes of 1-2 names; a query that shows name k carries direction k (x 4), the rest are noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, queries, dim, generator=g) + 5.0  # an offset the fit's standardisation must fold away
    ids = []
    for i in range(n):
        names = torch.randperm(classes - 1, generator=g)[:1 + i % 2].add(1).tolist()
        for q, k in enumerate(names):
            x[i, q, k] += 4.0
        ids.append(names)
    return x, ids


def test_fit_learns_per_query_names_and_folds_its_standardisation():
    tx, tids = _synthetic(600, 6)
    vx, vids = _synthetic(200, 6, seed=1)
    head, history = fit(tx, tids, vx, vids, classes=6, epochs=8, none_weight=1.0, lr=2e-2, batch_size=64, log=lambda _: None)
    final = history[-1]
    assert final["epoch"] == "none margin" and final["f1"] >= max(h["f1"] for h in history[:-1])
    assert final["recall"] > 0.85 and final["false_per_image"] < 0.3, history  # chance: 1 in 5
    # the returned head reads RAW features (standardisation and margin folded in) exactly as the fit scored them
    pred = (vx @ head["weight"].T + head["bias"]).argmax(-1)
    assert name_scores(pred, vids) == {k: final[k] for k in ("recall", "false_per_image", "f1")}


def test_fit_words_cli_writes_a_readout_the_model_loads(tmp_path):
    from minigpt4.cli import main
    from minigpt4.config import get_config
    from minigpt4.model.minigpt4 import build_model
    from minigpt4.weights.common import check_layout, copy_into, expected_layout
    from minigpt4.world.vocab import object_kinds
    assert main(["fit-words", "tiny", "--images", "48", "--val", "16", "--epochs", "2", "--layout", "pair",
                 "--out", str(tmp_path)]) == 0
    with safe_open(str(tmp_path / "proj.safetensors"), framework="pt") as f:
        meta = f.metadata()
    words = json.loads(meta["proj_words"])
    kinds = {o.name for o in object_kinds("train")}
    assert words == sorted(words) and len(set(words)) == len(words)
    from minigpt4.world.dish import DRAWN
    from minigpt4.world.vocab import SHAPES
    assert set(words) <= kinds | set(DRAWN) | set(SHAPES) | {"sign"}
    state = load_file(tmp_path / "proj.safetensors")
    assert not state["proj.weight"].any() and not state["proj.bias"].any()  # the plain projection starts at zero
    cfg = get_config("tiny")
    cfg.apply_readout_meta(meta)
    assert (cfg.proj_words, cfg.word_layout) == (words, "pair")
    check_layout(state, expected_layout(cfg, ["proj"]), "fit-words output")
    model = build_model(cfg)
    copy_into(model, state, "fit-words output")
    assert model.encode_images([Image.new("RGB", (40, 30), "red")]).shape[1] == 2 * cfg.num_queries
    fitted = json.loads((tmp_path / "fit.json").read_text())
    assert [h["epoch"] for h in fitted["history"]] == [1, 2, "none margin"] and fitted["words"] == len(words)


def _regions(n, centers, seed):
    """Region features: class k's regions sit at centers[k] (0: an empty region) plus noise and an offset."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, len(centers), (n,), generator=g)
    return torch.randn(n, centers.shape[1], generator=g) + 3.0 + centers[y], y


def test_fit_head_with_an_unknown_word_names_new_kinds_unknown_and_keeps_the_seen_ones():
    """--unknown: each batch masks a share of the kinds on their own regions and teaches the unknown word there, so
    a kind no training region showed (same 'something is here' direction, its own identity) reads as unknown."""
    from minigpt4.train.words import fit_head
    g = torch.Generator().manual_seed(0)
    centers = torch.zeros(8, 24)
    centers[1:] = torch.randn(7, 24, generator=g) * 2.0 + torch.randn(24, generator=g) * 3.0  # identity + objectness
    tx, ty = _regions(3000, centers[:6], 0)
    vx, vy = _regions(600, centers[:6], 1)
    novel, _ = _regions(600, centers[6:], 2)  # kinds 6 and 7: never in training
    said = {}
    for share in (0.0, 0.3):
        head, history = fit_head(tx, ty, vx, vy, classes=7, epochs=6, lr=1e-2, batch_size=128, unknown=6,
                                 unknown_share=share, log=lambda _: None)
        assert history[-1]["occupied"] > 0.97 and history[-1]["unknown_on_seen"] < 0.03  # seen kinds keep names
        said[share] = ((novel @ head["weight"].T + head["bias"]).argmax(-1) == 6).float().mean().item()
    assert said[0.3] > 0.1 and said[0.3] > 20 * said[0.0], said


def test_fit_head_with_hidden_units_learns_what_a_linear_one_cannot_and_reads_raw_features():
    """--attribute-hidden: an attribute that is no linear function of the features (here the sign of x0 * x1, as a
    colour is of an object's and its background's pixels pooled together) needs the hidden layer; the returned state
    has the standardisation folded into its first layer, so attribute_head loads it and reads raw features."""
    from minigpt4.model.minigpt4 import attribute_head
    from minigpt4.train.words import fit_head

    def data(n, seed):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(n, 6, generator=g) * 2.0 + 7.0  # an offset and scale the fit must fold away
        return x, 1 + ((x[:, 0] - 7.0) * (x[:, 1] - 7.0) > 0).long()  # classes 1 and 2, XOR of two signs
    (tx, ty), (vx, vy) = data(4000, 0), data(800, 1)
    scores = {}
    for hidden in (0, 32):
        state, history = fit_head(tx, ty, vx, vy, classes=3, epochs=15, lr=1e-2, batch_size=128, hidden=hidden,
                                  log=lambda _: None)
        head = attribute_head(6, 3, hidden)
        head.load_state_dict(state)  # strict: the keys are the head's own
        with torch.no_grad():
            scores[hidden] = (head(vx).argmax(-1) == vy).float().mean().item()
        kept = max(h["accuracy"] for h in history)  # rounded to 4 places; folding may flip a borderline region
        assert abs(scores[hidden] - kept) <= 1 / len(vy), (scores, kept)  # what the fit kept, read on raw input
    assert scores[0] < 0.7 and scores[32] > 0.9, scores


def test_fit_words_regions_cli_fits_names_and_attributes_per_region(tmp_path, capsys):
    """--targets regions on a grid side (the EfficientNet's nine region tokens): a name classifier with the unknown
    word last and one classifier per attribute, which the model config reads back and loads strictly."""
    import re

    from minigpt4.cli import main
    from minigpt4.train.words import region_attribute_words
    from minigpt4.weights.common import check_layout, expected_layout
    assert main(["fit-words", "default@stage0-effnet", "--targets", "regions", "--attributes", "count,color",
                 "--unknown", "thing", "--images", "24", "--val", "8", "--epochs", "2", "--layout", "pair",
                 "--phrases", "picture,page", "--out", str(tmp_path)]) == 0
    with safe_open(str(tmp_path / "proj.safetensors"), framework="pt") as f:
        meta = f.metadata()
    from minigpt4.weights.default import DEFAULT_DIR, default_config, parse_spec
    from minigpt4.weights.pretrained import preset_config
    cfg = default_config(preset_config("small", None), stage=parse_spec("default@stage0-effnet"))
    cfg.apply_readout_meta(meta)
    words = region_attribute_words()
    assert cfg.proj_words[-1] == "thing" and cfg.proj_words[:-1] == sorted(cfg.proj_words[:-1])
    assert meta["word_unknown"] == "thing" == cfg.word_unknown  # what --abstain turns unsure names into
    assert cfg.word_attributes == {"count": words["count"], "color": words["color"]}
    state = load_file(tmp_path / "proj.safetensors")
    assert state["word_proj.attributes.color.weight"].shape[0] == len(words["color"]) + 1
    fitted = json.loads((tmp_path / "fit.json").read_text())
    page = [f"page.{k}" for k in range(6)]
    assert fitted["targets"] == "regions" and set(fitted["history"]) == {"name", "count", "color", "picture.0", *page}
    # --phrases: one phrase for the whole picture (scenes, dishes, sketches, prompt pictures' styles) and a web page
    # sketch's blocks in order, six slots
    from minigpt4.train.words import block_phrase
    from minigpt4.world import generate
    from minigpt4.world.prompt import STYLES
    picture, pages = cfg.image_phrases
    assert (picture["name"], picture["slots"], picture["text"]) == ("picture", 1, ["picture:", ";"])
    assert {"objects", "web page sketch"} <= set(picture["words"]) and set(picture["words"]) & set(STYLES)
    assert generate("dish", 500_000, "train", 224).truth["dish"] in picture["words"]  # the fit's first image
    first_sketch = generate("sketch", 700_000, "train", 224).truth["blocks"]  # the first of the extra images
    assert {block_phrase(b) for b in first_sketch} <= set(pages["words"]) and pages["slots"] == 6
    assert any(w.startswith("<header <h1") for w in pages["words"]) and pages["text"] == ["page:", ";"]
    assert pages.get("ends") == (["<footer"] if "<footer" in pages["words"] else None)  # the list ends at a footer
    assert state["word_proj.phrases.page.weight"].shape == (6 * (len(pages["words"]) + 1), 9 * cfg.word_features)
    assert fitted["image_phrases"] == {"picture": picture["words"], "page": pages["words"]}
    assert [h["epoch"] for h in fitted["history"]["name"]] == [1, 2]
    check_layout(state, expected_layout(cfg, ["proj"]), "fit-words output")
    # into a new stage-0 folder, the fit copies the vision side it read, so default@stage0-NAME loads by itself
    assert main(["fit-words", "default@stage0-effnet", "--targets", "regions", "--images", "8", "--val", "4",
                 "--epochs", "1", "--out", str(tmp_path / "stage0-new")]) == 0
    assert (tmp_path / "stage0-new" / "stage0.json").read_bytes() == \
        (DEFAULT_DIR / "stage0-effnet" / "stage0.json").read_bytes()
    assert not (tmp_path / "stage0.json").exists()  # not a stage-0 folder's name: only the readout
    # --attribute-hidden: each attribute's classifier an MLP, recorded so the model builds (and strictly loads) it
    assert main(["fit-words", "default@stage0-effnet", "--targets", "regions", "--attributes", "size",
                 "--attribute-hidden", "16", "--images", "8", "--val", "4", "--epochs", "1",
                 "--out", str(tmp_path / "mlp")]) == 0
    with safe_open(str(tmp_path / "mlp" / "proj.safetensors"), framework="pt") as f:
        cfg.apply_readout_meta(f.metadata())
    state = load_file(tmp_path / "mlp" / "proj.safetensors")
    assert cfg.word_attribute_hidden == 16 and state["word_proj.attributes.size.0.weight"].shape == (16, 472)
    assert "word_proj.attributes.size.weight" not in state
    check_layout(state, expected_layout(cfg, ["proj"]), "fit-words output")
    # what cannot work is refused by name (one line on stderr, exit status 2)
    for args, message in ((["tiny", "--attributes", "color"], "need --targets regions"),
                          (["tiny", "--phrases", "picture"], "need --targets regions"),
                          (["default@stage0-effnet", "--targets", "regions", "--phrases", "menu"],
                           r"unknown --phrases \['menu'\]"),
                          (["tiny", "--targets", "regions"], "one token per region"),
                          (["default@stage0-effnet", "--targets", "regions", "--attributes", "weight"],
                           r"unknown --attributes \['weight'\]"),
                          (["default@stage0-effnet", "--targets", "regions", "--dish-every", "-1"],
                           "--dish-every must be 0"),
                          (["default@stage0-effnet", "--targets", "regions", "--attribute-hidden", "8"],
                           "without --attributes")):
        assert main(["fit-words", *args, "--images", "8", "--val", "4", "--out", str(tmp_path / "x")]) == 2
        assert re.search(message, capsys.readouterr().err)


def test_page_phrases_are_written_in_the_tokens_of_the_html_they_stand_for():
    """Each tag a block phrase names reads, mid-sentence, as the very tokens its page's HTML writes that tag (or its
    class="row" / "col") with (" <" then "nav"), and the phrases hold the counts the HTML repeats (links, fields)."""
    import re
    from transformers import AutoTokenizer
    from minigpt4.train.words import block_phrase, page_phrases
    from minigpt4.world import generate
    tok = AutoTokenizer.from_pretrained("minigpt4/assets/tokenizer-smollm2")
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]
    opens = {i for i in range(len(tok)) if tok.decode([i]).strip() == "<"}
    seen = set()
    for seed in range(40):
        sketch = generate("sketch", seed, "test", 96)
        truth, html = sketch.truth, ids(sketch.html)
        tags_in_html = {html[k + 1] for k in range(len(html) - 1) if html[k] in opens}
        tags_in_html |= {html[k + 1] for k in range(len(html) - 1) if tok.decode([html[k]]) == '="'}  # class="row"
        phrases = page_phrases(truth)
        assert phrases == ([block_phrase(b) for b in truth["blocks"]] + [None] * 6)[:6]
        for block, phrase in zip(truth["blocks"], phrases):
            seen.add(phrase.split()[0])
            p = ids(" " + phrase)
            named = {p[k + 1] for k in range(len(p) - 1) if p[k] in opens}
            assert named and named <= tags_in_html, (phrase, [tok.decode([t]) for t in named - tags_in_html])
            count = re.search(r" (\d) ", phrase)
            if block["type"] == "nav":
                assert int(count.group(1)) == len(block["links"]) and ("<img" in phrase) == block["logo"]
            if block["type"] == "form":
                assert int(count.group(1)) == len(block["fields"])
    assert {"<nav", "<header", "<row", "<form", "<div", "<img", "<p", "<footer"} <= seen


def test_dish_regions_hold_the_ingredient_with_most_pieces_there():
    """A dish scatters its ingredients: each region names the one with most pieces centred in it, with that count;
    drawn ingredients (no boxes) and empty regions give nothing."""
    from minigpt4.train.words import region_groups, region_targets, region_value
    from minigpt4.world import generate
    truth = {"kind": "dish", "size": 90, "ingredients": [
        {"name": "pasta", "drawn": True, "count": None},  # drawn everywhere, no boxes: no region word
        {"name": "apple", "count": 3, "bboxes": [[0, 0, 20, 20], [10, 5, 28, 25], [60, 60, 89, 89]]},
        {"name": "banana", "count": 1, "bboxes": [[2, 2, 12, 12]]},
        {"name": "kiwi", "count": 1, "bboxes": [[35, 0, 55, 20]]}]}
    groups = region_groups(truth)
    assert [(g["name"], g["count"]) if g else None for g in groups] == [
        ("apple", 2), ("kiwi", 1), None, None, None, None, None, None, ("apple", 1)]
    assert region_value(groups[0], "count") == "two" and region_value(groups[0], "color") is None
    assert region_targets([groups], "name", ["apple", "kiwi"]).tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 1]
    # a rendered dish: every region word is one of its emoji ingredients, and every piece is counted once at most
    sample = generate("dish", 5, "train", 224)
    pieces = {i["name"]: len(i["bboxes"]) for i in sample.truth["ingredients"] if i.get("bboxes")}
    found = [g for g in region_groups(sample.truth) if g]
    assert found and all(g["name"] in pieces for g in found)
    assert sum(g["count"] for g in found) <= sum(pieces.values())
