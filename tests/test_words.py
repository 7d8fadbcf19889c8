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
