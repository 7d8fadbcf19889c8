"""The composed model: the image splice, frozen/trainable parts, presets and config validation."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from minigpt4.config import MiniGPT4Config, get_config
from minigpt4.model.minigpt4 import IMAGE_TOKEN_ID, build_model
from minigpt4.weights.common import expected_layout

N_IMG = get_config("tiny").num_image_tokens  # 8


def ids_with_images(rows):
    """rows: lists of ints where None stands for one image (N_IMG placeholder slots)."""
    out = []
    for row in rows:
        ids = []
        for t in row:
            ids += [IMAGE_TOKEN_ID] * N_IMG if t is None else [t]
        out.append(ids)
    return torch.tensor(out)


# --- splice ------------------------------------------------------------------------------------


@torch.no_grad()
def test_splice_puts_images_exactly_at_placeholders(tiny_model):
    ids = ids_with_images([[1, 5, None, 6, 7, None, 9], [2, None, 3, 4, 5, None, 8]])
    images = torch.randn(4, N_IMG, tiny_model.cfg.llm.hidden_size)
    emb = tiny_model.embed(ids, images)
    tok = tiny_model.llm.get_input_embeddings()
    slots = ids == IMAGE_TOKEN_ID
    # images fill placeholder runs in reading order: row 0 gets images 0, 1; row 1 gets 2, 3
    torch.testing.assert_close(emb[slots].reshape(4, N_IMG, -1), images, atol=0, rtol=0)
    torch.testing.assert_close(emb[~slots], tok(ids[~slots]), atol=0, rtol=0)
    start = 2  # row 0: [1, 5, <8 slots>, ...]
    torch.testing.assert_close(emb[0, start:start + N_IMG], images[0], atol=0, rtol=0)


def test_splice_count_mismatch_is_explained(tiny_model):
    ids = ids_with_images([[1, None, 2, None]])
    with pytest.raises(ValueError, match=r"tokens 16 \(2 image placeholders x 8\), features 8 \(1 images\); "
                                         r"give one image per <ImageHere> placeholder"):
        tiny_model.embed(ids, torch.zeros(1, N_IMG, tiny_model.cfg.llm.hidden_size))
    with pytest.raises(ValueError, match=r"tokens 8 .* features 0 \(0 images\)"):
        tiny_model.embed(ids_with_images([[1, None]]), None)


# --- frozen and trainable parts --------------------------------------------------------------------


def trainable_names(model) -> set[str]:
    groups = {"visual_encoder": "vision", "ln_vision": "vision", "qformer": "qformer", "proj": "proj", "llm": "llm"}
    return {groups[n.split(".")[0]] for n, p in model.named_parameters() if p.requires_grad}


def test_frozen_parts_stay_frozen_and_in_eval_mode(tiny_model):
    assert trainable_names(tiny_model) == {"proj"}
    try:
        tiny_model.train()
        assert tiny_model.proj.training
        for frozen in (tiny_model.visual_encoder, tiny_model.ln_vision, tiny_model.qformer, tiny_model.llm):
            assert not frozen.training and not any(m.training for m in frozen.modules())
    finally:
        tiny_model.eval()


def test_trainable_set_comes_from_config():
    cfg = get_config("tiny")
    cfg.trainable = ["qformer", "vision"]
    model = build_model(cfg)
    assert trainable_names(model) == {"qformer", "vision"}
    model.train()
    assert model.qformer.training and model.visual_encoder.training and not model.proj.training
    model.set_trainable(["proj", "lora"])
    lora = [n for n, p in model.llm.named_parameters() if p.requires_grad]
    assert lora and all("lora_" in n for n in lora)
    assert not any(p.requires_grad for n, p in model.llm.named_parameters() if "lora_" not in n)
    assert trainable_names(model) == {"proj", "llm"}
    model.train()
    assert model.llm.training and not model.qformer.training  # LoRA dropout active, frozen Q-Former not


def test_bad_trainable_groups():
    cfg = get_config("tiny")
    cfg.trainable = ["proj", "everything"]
    with pytest.raises(ValueError, match=r"unknown trainable group\(s\) \['everything'\]; choose from"):
        build_model(cfg)
    cfg = get_config("tiny-llama2")
    cfg.trainable = ["qformer"]
    with pytest.raises(ValueError, match="no Q-Former"):
        build_model(cfg)


# --- presets -------------------------------------------------------------------------------


@pytest.mark.parametrize("name,tokens", [("tiny", 8), ("tiny-llama2", 4)])
@torch.no_grad()
def test_tiny_presets_build_and_encode(name, tokens):
    model = build_model(get_config(name))
    assert model.cfg.num_image_tokens == tokens
    out = model.encode_pixels(torch.randn(2, 3, 56, 56))
    assert out.shape == (2, tokens, 64) and torch.isfinite(out).all()


def test_released_preset_numbers_without_allocating():
    v7, v13, l2 = get_config("vicuna-7b"), get_config("vicuna-13b"), get_config("llama2-7b")
    for cfg in (v7, v13, l2):
        v = cfg.vision
        assert (v.image_size, v.patch_size, v.width, v.depth, v.heads, v.mlp_dim) == (224, 14, 1408, 39, 16, 6144)
    assert v7.num_image_tokens == 32 and (v7.proj_in_features, v7.llm.hidden_size) == (768, 4096)
    assert (v13.proj_in_features, v13.llm.hidden_size) == (768, 5120)
    q = v7.qformer
    assert (q.layers, q.hidden, q.heads, q.intermediate, q.cross_attention_freq) == (12, 768, 12, 3072, 2)
    assert l2.qformer is None and l2.num_image_tokens == 64 and l2.proj_in_features == 5632
    assert (v7.template, l2.template) == ("vicuna_v0", "llama2")
    layout = expected_layout(v7)  # meta device: shapes without memory
    assert layout["visual_encoder.blocks.38.attn.qkv.weight"] == (4224, 1408)
    assert "visual_encoder.blocks.39.norm1.weight" not in layout
    assert layout["qformer.layers.10.cross_attn.key.weight"] == (768, 1408)
    assert "qformer.layers.11.cross_attn.key.weight" not in layout
    assert layout["proj.weight"] == (4096, 768) and expected_layout(l2)["proj.weight"] == (4096, 5632)


def test_unknown_preset():
    with pytest.raises(ValueError, match=r"unknown preset 'vicuna-70b'; choose one of: tiny, tiny-llama2, vicuna-7b"):
        get_config("vicuna-70b")


def test_config_round_trip_and_unknown_fields():
    cfg = get_config("small")
    assert MiniGPT4Config.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match=r"unknown config field\(s\) \['image_sise'\]"):
        MiniGPT4Config.from_dict(dict(cfg.to_dict(), image_sise=448))
    d = cfg.to_dict()
    d["qformer"]["layres"] = 2
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['layres'\] in config section 'qformer'"):
        MiniGPT4Config.from_dict(d)


def test_llm_hidden_size_mismatch_is_explained():
    cfg = get_config("tiny")
    cfg.llm.hidden_size = 128
    with pytest.raises(ValueError, match=r"llm.hidden_size=128 but the loaded LLM has hidden size 64"):
        build_model(cfg)


# --- word readout ------------------------------------------------------------------------------


@torch.no_grad()
def test_word_readout_puts_the_llms_own_word_embeddings_in_the_image_slots():
    """proj_words: each query's token is the plain projection plus the embedding of the word it picks (none: zero)."""
    cfg = get_config("tiny")
    cfg.proj_words = ["cat", "red car", "dog"]
    model = build_model(cfg).eval()
    tok, table = model.tokenizer, model.llm.get_input_embeddings().weight
    first = [tok(" " + w, add_special_tokens=False)["input_ids"][0] for w in cfg.proj_words]
    assert torch.equal(model.word_proj.table[1:, 0], table[first].float()) and not model.word_proj.table[0].any()
    assert "word_proj.table" not in model.state_dict()  # rebuilt from the LLM, never saved
    feats = torch.randn(2, N_IMG, cfg.proj_in_features)
    model.proj.weight.zero_(), model.proj.bias.zero_()
    cls = model.word_proj.classify
    cls.weight.zero_()
    cls.bias.copy_(torch.tensor([0.0, 0.0, 50.0, 0.0]))  # every query: "red car" -> " red"
    assert torch.allclose(model.project(feats), table[first[1]].float().expand(2, N_IMG, -1), atol=1e-5)
    cls.bias.copy_(torch.tensor([50.0, 0.0, 0.0, 0.0]))  # "none": the token is the plain projection alone
    model.proj.bias.fill_(0.25)
    assert torch.allclose(model.project(feats), torch.full((2, N_IMG, cfg.llm.hidden_size), 0.25), atol=1e-5)
    assert set(expected_layout(cfg, ["proj"])) == {"proj.weight", "proj.bias", "word_proj.classify.weight",
                                                   "word_proj.classify.bias"}
    # loading assembles the model on the meta device and assigns the weights: the word table is the LLM's, not meta
    from minigpt4.weights.pretrained import assemble
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("llm.")}
    loaded = assemble(cfg, state).eval()
    assert torch.equal(loaded.word_proj.table, model.word_proj.table)
    assert torch.allclose(loaded.project(feats), model.project(feats), atol=1e-6)
    model.set_trainable(["proj"])  # the readout is fit by `minigpt4 fit-words`; it trains only when declared
    assert model.proj.weight.requires_grad and not cls.weight.requires_grad
    model.set_trainable(["words"])
    assert cls.weight.requires_grad and not model.proj.weight.requires_grad
    with pytest.raises(ValueError, match="no word readout"):
        build_model(get_config("tiny")).set_trainable(["words"])


@torch.no_grad()
def test_word_name_tokens_spell_each_name_whole_in_its_own_slots():
    """word_name_tokens 3: a name reaches the LLM as the first 3 tokens of " name", a shorter one ends in zero slots,
    so "red car" is not read as " red" alone; the setting travels in the readout's metadata (absent: 1 token)."""
    cfg = get_config("tiny")
    cfg.proj_words, cfg.word_layout, cfg.word_name_tokens = ["cat", "red car", "dog"], "pair", 3
    assert cfg.num_image_tokens == N_IMG + 3 * N_IMG  # per query: 3 name slots, then its projection
    model = build_model(cfg).eval()
    tok, emb = model.tokenizer, model.llm.get_input_embeddings().weight
    ids = [tok(" " + w, add_special_tokens=False)["input_ids"] for w in cfg.proj_words]
    assert len(ids[1]) >= 2, "the test needs a name of several tokens"
    model.proj.weight.zero_(), model.proj.bias.zero_()
    model.word_proj.classify.weight.zero_()
    model.word_proj.classify.bias.copy_(torch.tensor([0.0, 0.0, 50.0, 0.0]))  # every query: "red car"
    out = model.project(torch.randn(2, N_IMG, cfg.proj_in_features)).unflatten(1, (N_IMG, 4))
    spelled = torch.zeros(3, cfg.llm.hidden_size)
    spelled[:len(ids[1][:3])] = emb[ids[1][:3]].float()
    assert torch.allclose(out[:, :, :3], spelled.expand(2, N_IMG, -1, -1), atol=1e-5)
    assert not out[:, :, 3].any()  # the (zeroed) projection slot
    meta = cfg.readout_meta()
    assert meta["word_name_tokens"] == "3"
    again, legacy = MiniGPT4Config(), MiniGPT4Config()
    again.apply_readout_meta(meta)
    legacy.apply_readout_meta({k: v for k, v in meta.items() if k != "word_name_tokens"})
    assert (again.word_name_tokens, legacy.word_name_tokens) == (3, 1)
    cfg.word_name_tokens = 0
    with pytest.raises(ValueError, match="token slots per name"):
        build_model(cfg)


@torch.no_grad()
def test_a_paired_word_readout_gives_each_query_a_word_slot_and_a_projection_slot():
    """word_layout "pair": query i fills slots 2i (its word) and 2i+1 (its projection), so the prompt holds twice the
    image tokens; chat prompts, the splice and the training loss all follow the doubled count."""
    from minigpt4.chat.templates import tokenize
    cfg = get_config("tiny")
    cfg.proj_words, cfg.word_layout = ["cat", "dog"], "pair"
    assert cfg.num_queries == N_IMG and cfg.num_image_tokens == 2 * N_IMG
    model = build_model(cfg).eval()
    table = model.llm.get_input_embeddings().weight
    dog = model.tokenizer(" dog", add_special_tokens=False)["input_ids"][0]
    model.word_proj.classify.weight.zero_()
    model.word_proj.classify.bias.copy_(torch.tensor([0.0, 0.0, 50.0]))  # every query: "dog"
    feats = torch.randn(2, N_IMG, cfg.proj_in_features)
    tokens = model.project(feats)
    assert tokens.shape == (2, 2 * N_IMG, cfg.llm.hidden_size)
    assert torch.allclose(tokens[:, 0::2], table[dog].float().expand(2, N_IMG, -1), atol=1e-5)
    assert torch.allclose(tokens[:, 1::2], model.proj(feats), atol=1e-6)
    model.cfg.word_layout = "append"  # all the projection's tokens first, where a model without words had them
    assert torch.allclose(model.project(feats), torch.cat([model.proj(feats), tokens[:, 0::2]], 1), atol=1e-6)
    model.cfg.word_layout = "pair"
    ids = torch.tensor([tokenize(model.tokenizer, "<ImageHere> a dog", cfg.num_image_tokens)])
    assert int((ids == IMAGE_TOKEN_ID).sum()) == 2 * N_IMG
    labels = torch.where(ids == IMAGE_TOKEN_ID, -100, ids)
    loss = model(ids, torch.ones_like(ids), labels, features=feats[:1])
    assert torch.isfinite(loss)
    with pytest.raises(ValueError, match="features 8"):  # the summed layout's 8 tokens do not fill 16 slots
        model.embed(ids, model.proj(feats[:1]))
    cfg.word_layout = "side"
    with pytest.raises(ValueError, match=r"word_layout must be one of \['sum', 'pair', 'append'\]"):
        build_model(cfg)


@torch.no_grad()
def test_word_labels_put_the_llms_own_text_before_each_word(word_side_cfg):
    """word_labels: label i's tokens (the LLM's own embeddings) come before word i, so the LLM reads "top left: cat"
    as text; the labels take image-token slots, travel with the readout's metadata and must match the tokenizer."""
    from minigpt4.chat.templates import tokenize
    from minigpt4.config import MiniGPT4Config
    from minigpt4.weights.pretrained import assemble
    cfg = get_config("tiny")
    cfg.proj_words, cfg.word_layout = ["cat", "dog"], "pair"
    model = build_model(cfg).eval()
    texts = ["top left:"] + [f"; slot {i}:" for i in range(1, N_IMG)]
    with pytest.raises(ValueError, match="3 word labels for 8 word tokens"):
        cfg.label_words(texts[:3], model.tokenizer)
    cfg.label_words(texts, model.tokenizer)
    n_label = sum(len(i) for i in cfg.word_label_ids)
    assert n_label > N_IMG and cfg.num_image_tokens == 2 * N_IMG + n_label
    model = build_model(cfg).eval()
    table = model.llm.get_input_embeddings().weight.float()
    feats = torch.randn(2, N_IMG, cfg.proj_in_features)
    words, proj = model.word_proj(feats)[:, :, -1], model.proj(feats)
    out = model.project(feats)
    assert out.shape == (2, cfg.num_image_tokens, cfg.llm.hidden_size)
    at = 0
    for i, ids in enumerate(cfg.word_label_ids):  # pair: label, word, projection
        assert torch.equal(out[:, at:at + len(ids)], table[ids].expand(2, -1, -1))
        at += len(ids)
        assert torch.equal(out[:, at], words[:, i]) and torch.equal(out[:, at + 1], proj[:, i])
        at += 2
    model.cfg.word_layout = "append"  # the projection's tokens first, then each label and its word
    appended = model.project(feats)
    assert torch.equal(appended[:, :N_IMG], proj)
    assert torch.equal(appended[:, N_IMG:], torch.cat([out[:, s:s + len(ids) + 1] for s, ids in
                                                       zip(_label_starts(cfg), cfg.word_label_ids)], 1))
    model.cfg.word_layout = "sum"
    assert model.project(feats).shape[1] == N_IMG + n_label == cfg.num_image_tokens
    model.cfg.word_layout = "pair"
    ids = torch.tensor([tokenize(model.tokenizer, "<ImageHere> a dog", cfg.num_image_tokens)])
    labels = torch.where(ids == IMAGE_TOKEN_ID, -100, ids)
    assert torch.isfinite(model(ids, torch.ones_like(ids), labels, features=feats[:1]))
    # the labels travel with the readout's metadata; a model assembled on the meta device embeds them for real
    again = get_config("tiny")
    again.apply_readout_meta(cfg.readout_meta())
    assert (again.word_labels, again.word_label_ids, again.num_image_tokens) == \
        (texts, cfg.word_label_ids, cfg.num_image_tokens)
    assert MiniGPT4Config.from_dict(cfg.to_dict()).word_label_ids == cfg.word_label_ids
    loaded = assemble(again, {k: v for k, v in model.state_dict().items() if not k.startswith("llm.")}).eval()
    assert torch.allclose(loaded.project(feats), out, atol=1e-6)
    again.word_label_ids = [[i + 1 for i in ids] for ids in again.word_label_ids]  # another tokenizer's ids
    with pytest.raises(ValueError, match="not what this LLM's tokenizer makes of word_labels"):
        build_model(again)
    with pytest.raises(ValueError, match="no readout"):
        get_config("tiny").label_words(texts, model.tokenizer)
    # a readout of its own build with more tokens (9) than the projection (8): appended, each word labelled
    from minigpt4.weights.default import grid_labels
    word_side_cfg.label_words(grid_labels(9), model.tokenizer)
    side = build_model(word_side_cfg).eval()
    pixels = torch.randn(2, 3, word_side_cfg.input_size, word_side_cfg.input_size)
    feats = side.vision_features(pixels)
    main, for_words = side.split_features(feats)
    tokens = side.project(feats)
    assert tokens.shape[1] == word_side_cfg.num_image_tokens == 8 + 9 + sum(map(len, word_side_cfg.word_label_ids))
    assert torch.equal(tokens[:, :8], side.proj(main))
    last = side.word_proj(for_words)[:, -1, -1]  # "; bottom right:" then the last region's word
    assert torch.equal(tokens[:, -1], last)


@torch.no_grad()
def test_word_attributes_put_more_words_before_each_name():
    """word_attributes: each word token gets one more word per attribute, picked by a classifier of its own, before
    its name ("two red cat"); they take image-token slots in every layout, travel with the readout's metadata and
    load on the meta device."""
    from minigpt4.model.minigpt4 import first_token_ids
    from minigpt4.weights.pretrained import assemble
    cfg = get_config("tiny")
    cfg.proj_words, cfg.word_layout = ["cat", "dog"], "pair"
    cfg.word_attributes = {"count": ["one", "two"], "color": ["red", "blue", "green"]}
    model = build_model(cfg).eval()
    assert cfg.words_per_query == 3 and cfg.num_image_tokens == N_IMG + 3 * N_IMG
    assert model.word_proj.attributes["color"].out_features == 4  # none + three colours
    table = model.llm.get_input_embeddings().weight.float()
    readout = model.word_proj
    for head, pick in ((readout.attributes["count"], 2), (readout.attributes["color"], 1), (readout.classify, 1)):
        head.weight.zero_()
        head.bias.fill_(-50.0)
        head.bias[pick] = 50.0  # every query: "two", "red", "cat"
    feats = torch.randn(2, N_IMG, cfg.proj_in_features)
    out, proj = model.project(feats), model.proj(feats)
    want = table[first_token_ids(model.tokenizer, ["two", "red", "cat"])]
    assert out.shape == (2, cfg.num_image_tokens, cfg.llm.hidden_size)
    for i in range(N_IMG):  # pair: count, colour, name, projection
        assert torch.allclose(out[:, 4 * i:4 * i + 3], want.expand(2, -1, -1), atol=1e-5)
        assert torch.equal(out[:, 4 * i + 3], proj[:, i])
    readout.attributes["color"].bias.fill_(0.0)
    readout.attributes["color"].bias[0] = 50.0  # "none": a zero vector, as for the name
    assert out.abs().sum() > 0 and model.project(feats)[:, 1].abs().max() < 1e-6
    model.cfg.word_layout = "sum"
    assert torch.allclose(model.project(feats), proj + table[first_token_ids(model.tokenizer, ["two", "cat"])].sum(0),
                          atol=1e-5)
    model.cfg.word_layout = "append"
    assert model.project(feats).shape[1] == N_IMG + 3 * N_IMG
    # labelled: label, the query's words, its projection
    model.cfg.word_layout = "pair"
    cfg.label_words(["top left:"] + [f"; slot {i}:" for i in range(1, N_IMG)], model.tokenizer)
    n_label = sum(map(len, cfg.word_label_ids))
    labelled = model.project(feats)
    assert labelled.shape[1] == cfg.num_image_tokens == 4 * N_IMG + n_label
    at = len(cfg.word_label_ids[0])
    assert torch.allclose(labelled[:, at], want[0].expand(2, -1), atol=1e-5)  # "top left:" then "two"
    assert torch.equal(labelled[:, at + 3], proj[:, 0])
    # metadata round trip, and a model assembled from the saved weights answers the same
    again = get_config("tiny")
    again.apply_readout_meta(cfg.readout_meta())
    assert again.word_attributes == cfg.word_attributes and again.num_image_tokens == cfg.num_image_tokens
    loaded = assemble(again, {k: v for k, v in model.state_dict().items() if not k.startswith("llm.")}).eval()
    assert torch.allclose(loaded.project(feats), labelled, atol=1e-6)
    bad = get_config("tiny")
    bad.word_attributes = {"color": ["red"]}
    with pytest.raises(ValueError, match="proj_words is empty"):
        build_model(bad)
    bad.proj_words, bad.word_attributes = ["cat"], {"color": []}
    with pytest.raises(ValueError, match=r"word_attributes \['color'\] have no words"):
        build_model(bad)


@torch.no_grad()
def test_image_phrases_name_the_whole_picture_before_the_region_words():
    """image_phrases: groups of phrases for the whole image, each slot picked by a classifier on all word tokens'
    features at once, with all of a phrase's tokens ("vegetable soup") between the group's text ("picture:" ... ";"),
    before the labelled regions; shorter phrases end in zero slots; the groups travel with the readout's metadata,
    load strictly and must match the tokenizer."""
    from minigpt4.chat.templates import tokenize
    from minigpt4.weights.common import check_layout
    from minigpt4.weights.pretrained import assemble
    cfg = get_config("tiny")
    cfg.proj_words, cfg.word_layout = ["cat", "dog"], "pair"
    model = build_model(cfg)
    cfg.label_words(["top left:"] + [f"; slot {i}:" for i in range(1, N_IMG)], model.tokenizer)
    before = cfg.num_image_tokens
    cfg.add_image_phrases("picture", ["pasta", "vegetable soup", "web page sketch"], model.tokenizer)
    cfg.add_image_phrases("page", ["nav 3 links", "header", "footer"], model.tokenizer, slots=2)
    picture, page = cfg.image_phrases
    ids, text_ids = picture["word_ids"], picture["text_ids"]
    longest, page_longest = max(map(len, ids)), max(map(len, page["word_ids"]))
    assert longest > len(ids[0]) and [len(t) for t in text_ids] == [len(model.tokenizer("picture:")["input_ids"]), 1]
    page_tokens = 2 * page_longest + sum(map(len, page["text_ids"]))
    assert cfg.num_image_tokens == before + longest + sum(map(len, text_ids)) + page_tokens
    model = build_model(cfg).eval()
    head = model.word_proj.phrases["picture"]
    assert head.in_features == N_IMG * cfg.proj_in_features and head.out_features == 4  # none + three phrases
    assert model.word_proj.phrases["page"].out_features == 2 * 4  # two slots, each none + three phrases
    feats = torch.randn(2, N_IMG, cfg.proj_in_features)
    undecided = model.project(feats)
    head.weight.zero_()
    head.bias.fill_(-50.0)
    head.bias[2] = 50.0  # "vegetable soup"
    pager = model.word_proj.phrases["page"]
    pager.weight.zero_()
    pager.bias.fill_(-50.0)
    pager.bias[1], pager.bias[4 + 3] = 50.0, 50.0  # slot 0 "nav 3 links", slot 1 "footer"
    out = model.project(feats)
    table = model.llm.get_input_embeddings().weight.float()
    n0 = len(text_ids[0])
    assert out.shape == (2, cfg.num_image_tokens, cfg.llm.hidden_size)
    assert torch.equal(out[:, :n0], table[text_ids[0]].expand(2, -1, -1))  # "picture:"
    assert torch.allclose(out[:, n0:n0 + len(ids[1])], table[ids[1]].expand(2, -1, -1), atol=1e-5)
    assert out[:, n0 + len(ids[1]):n0 + longest].abs().max() < 1e-6  # shorter than the longest: zero slots
    assert torch.equal(out[:, n0 + longest], table[text_ids[1][0]].expand(2, -1))  # ";"
    at = n0 + longest + 1 + len(page["text_ids"][0])  # after "page:"
    nav, footer = page["word_ids"][0], page["word_ids"][2]
    assert torch.allclose(out[:, at:at + len(nav)], table[nav].expand(2, -1, -1), atol=1e-5)
    at += page_longest
    assert torch.allclose(out[:, at:at + len(footer)], table[footer].expand(2, -1, -1), atol=1e-5)
    rest = n0 + longest + 1 + page_tokens
    assert torch.equal(out[:, rest:], undecided[:, rest:])  # "top left: ..." as before
    head.bias[2], head.bias[1] = -50.0, 50.0  # "pasta": one token, then zeros
    assert out[:, n0 + 1:n0 + longest].abs().max() > 0 and model.project(feats)[:, n0 + 1:n0 + longest].abs().max() < 1e-6
    tok = torch.tensor([tokenize(model.tokenizer, "<ImageHere> a dog", cfg.num_image_tokens)])
    assert torch.isfinite(model(tok, torch.ones_like(tok), torch.where(tok == IMAGE_TOKEN_ID, -100, tok),
                                features=feats[:1]))
    # metadata round trip; strict layout; a model assembled from the saved weights answers the same
    again = get_config("tiny")
    again.apply_readout_meta(cfg.readout_meta())
    assert again.image_phrases == cfg.image_phrases and again.num_image_tokens == cfg.num_image_tokens
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("llm.")}
    check_layout({k: v for k, v in state.items() if k.startswith(("proj.", "word_proj."))},
                 expected_layout(again, ["proj"]), "image phrase readout")
    loaded = assemble(again, state).eval()
    assert torch.allclose(loaded.project(feats), model.project(feats), atol=1e-6)
    again.image_phrases[1]["word_ids"] = [[i + 1 for i in p] for p in page["word_ids"]]  # another tokenizer's ids
    with pytest.raises(ValueError, match="image phrase group 'page' are not what this LLM's tokenizer makes"):
        build_model(again)
    with pytest.raises(ValueError, match="no readout"):
        get_config("tiny").add_image_phrases("picture", ["pasta"], model.tokenizer)
    with pytest.raises(ValueError, match="'page' needs words, slots >= 1 .* not 2 words, 0 slots"):
        cfg.add_image_phrases("page", ["nav", "footer"], model.tokenizer, slots=0)
    again.image_phrases[1]["slots"] = 0  # a hand-edited file: the same check when the model is built
    with pytest.raises(ValueError, match="'page' needs words, slots >= 1"):
        build_model(again)


@torch.no_grad()
def test_an_image_phrase_list_ends_at_an_empty_slot_or_an_end_phrase():
    """A group with `ends` (a page's blocks) is a list in order: after an empty slot or an end phrase ("footer") the
    later slots are empty whatever their classifiers say; a group without ends keeps every slot's own choice."""
    cfg = get_config("tiny")
    cfg.proj_words, cfg.word_layout = ["cat", "dog"], "pair"
    model = build_model(cfg)
    words = ["nav", "header", "footer"]
    cfg.add_image_phrases("page", words, model.tokenizer, slots=4, ends=["footer"])
    cfg.add_image_phrases("free", words, model.tokenizer, slots=4)
    assert cfg.image_phrases[0]["ends"] == ["footer"] and "ends" not in cfg.image_phrases[1]
    again = get_config("tiny")
    again.apply_readout_meta(cfg.readout_meta())
    assert again.image_phrases == cfg.image_phrases
    model = build_model(cfg).eval()
    feats = torch.randn(3, N_IMG, cfg.proj_in_features)
    picks = [[1, 3, 2, 1],   # nav, footer | header, nav: ended by the footer
             [2, 0, 1, 3],   # header, (empty) | nav, footer: ended by the empty slot
             [1, 2, 1, 3]]   # nav, header, nav, footer: nothing ends before the last slot
    for name in ("page", "free"):
        head = model.word_proj.phrases[name]
        head.weight.zero_()
        head.bias.fill_(-50.0)
        for slot, cls in enumerate(picks[0]):
            head.bias[slot * 4 + cls] = 50.0
    assert model.word_proj.phrase_probs(feats, "page").argmax(-1).tolist() == [[1, 3, 0, 0]] * 3
    assert model.word_proj.phrase_probs(feats, "free").argmax(-1).tolist() == [[1, 3, 2, 1]] * 3
    page = cfg.image_phrases[0]
    n0, longest = len(page["text_ids"][0]), max(map(len, page["word_ids"]))
    out = model.project(feats)
    table = model.llm.get_input_embeddings().weight.float()
    footer = page["word_ids"][2]
    assert torch.allclose(out[:, n0 + longest:n0 + longest + len(footer)], table[footer].expand(3, -1, -1), atol=1e-5)
    assert out[:, n0 + 2 * longest:n0 + 4 * longest].abs().max() < 1e-6  # the slots after the footer: empty
    head = model.word_proj.phrases["page"]
    for row, want in zip(picks[1:], ([2, 0, 0, 0], [1, 2, 1, 3])):
        head.bias.fill_(-50.0)
        for slot, cls in enumerate(row):
            head.bias[slot * 4 + cls] = 50.0
        assert model.word_proj.phrase_probs(feats, "page").argmax(-1)[0].tolist() == want
    with pytest.raises(ValueError, match=r"ends \['menu'\] are not among its words"):
        cfg.add_image_phrases("page", words, model.tokenizer, slots=4, ends=["menu"])


@torch.no_grad()
def test_word_dropout_turns_words_into_none_or_a_wrong_name_only_while_training():
    """TrainConfig.word_dropout: while training, a readout word becomes "none" or a random name (how an unseen kind
    looks to the readout), about half each; a model not being trained (chat, eval) always gets the readout's words."""
    from minigpt4.model.minigpt4 import WordReadout
    torch.manual_seed(0)
    probs = nn.functional.one_hot(torch.full((64, 9), 3), 6).float()
    assert torch.equal(WordReadout.drop_words(probs, 0.0), probs)
    dropped = WordReadout.drop_words(probs, 1.0).argmax(-1)
    assert (dropped == 0).float().mean().item() == pytest.approx(0.5, abs=0.08)  # "none"
    assert ((dropped != 0) & (dropped != 3)).any() and (dropped != 3).float().mean() > 0.85  # mostly another name
    some = WordReadout.drop_words(probs, 0.25).argmax(-1)
    assert 0.1 < (some != 3).float().mean().item() < 0.35
    cfg = get_config("tiny")
    cfg.proj_words = ["cat", "dog"]
    model = build_model(cfg)
    model.word_proj.classify.weight.zero_()
    model.word_proj.classify.bias.copy_(torch.tensor([0.0, 0.0, 50.0]))  # every query: "dog"
    feats = torch.randn(2, N_IMG, cfg.proj_in_features)
    model.word_dropout = 0.9
    model.eval()
    clean = model.project(feats)
    model.train()
    assert not torch.allclose(model.project(feats), clean)
    model.eval()
    assert torch.equal(model.project(feats), clean)
    # word_dropout_to: a dropped name that named something becomes that word; an empty region stays empty
    probs[:, :3] = nn.functional.one_hot(torch.tensor(0), 6).float()
    to = WordReadout.drop_words(probs, 1.0, to=5).argmax(-1)
    assert (to[:, :3] == 0).all() and (to[:, 3:] == 5).all()
    assert (WordReadout.drop_words(probs, 0.25, to=5).argmax(-1)[:, 3:] == 5).float().mean().item() < 0.4
    # unnamed (the data's regions, world.regions): 1 reads `to` always (an empty region too), 0 never, -1 draws
    unnamed = torch.zeros(64, 9, dtype=torch.long)
    unnamed[:, [0, 4]] = 1
    unnamed[32:] = -1
    out = WordReadout.drop_words(probs, 0.5, to=5, unnamed=unnamed).argmax(-1)
    assert (out[:32, [0, 4]] == 5).all() and (out[:32, 3:4] == 3).all() and (out[:32, 5:] == 3).all()
    assert 0.3 < (out[32:, 3:] == 5).float().mean().item() < 0.7 and (out[32:, :3] == 0).all()
    with pytest.raises(ValueError, match="set word_dropout_to"):
        WordReadout.drop_words(probs, 0.5, unnamed=unnamed)


@torch.no_grad()
def test_unsure_region_names_read_the_unknown_word_when_the_readout_abstains():
    """MiniGPT4Config.word_abstain (chat/eval/serve --abstain): a name below that probability reads word_unknown,
    a sure one stays, an empty region stays empty; it is kept in the readout's metadata, and readouts written before
    word_unknown was recorded take "thing" when they have it. No unknown word, no abstaining."""
    from minigpt4.config import MiniGPT4Config
    cfg = get_config("tiny")
    cfg.proj_words, cfg.word_unknown = ["cat", "dog", "thing"], "thing"
    model = build_model(cfg).eval()
    logits = torch.full((1, N_IMG, 4), -30.0)
    logits[0, :, 1] = 30.0  # every query sure of "cat"...
    logits[0, 1, 1:3] = 0.0  # ...but query 1, torn between cat and dog
    logits[0, 2, 0] = 30.0  # query 2: empty
    model.word_proj.classify.weight.zero_()
    feats = torch.zeros(1, N_IMG, cfg.proj_in_features)
    words = lambda: model.word_proj.forward(feats).squeeze(2)
    table = model.word_proj.table[:, 0]  # one token slot per name
    for q in range(N_IMG):
        model.word_proj.classify.bias.copy_(logits[0, q])
        plain = words()[0, 0]
        model.set_word_abstain(0.7)
        assert torch.equal(words()[0, 0], table[3] if q == 1 else plain), q
        model.set_word_abstain(0.0)
    assert torch.allclose(plain, table[1])
    model.set_word_abstain(0.7)
    meta = model.cfg.readout_meta()
    assert (meta["word_unknown"], meta["word_abstain"]) == ("thing", "0.7")
    again = MiniGPT4Config()
    again.apply_readout_meta(meta)
    assert (again.word_unknown, again.word_abstain) == ("thing", 0.7)
    legacy = MiniGPT4Config()
    legacy.apply_readout_meta({k: v for k, v in meta.items() if k not in ("word_unknown", "word_abstain")})
    assert (legacy.word_unknown, legacy.word_abstain) == ("thing", 0.0)
    cfg.proj_words, cfg.word_unknown = ["cat", "dog"], ""
    with pytest.raises(ValueError, match="has none: fit it with `minigpt4 fit-words --unknown thing`"):
        build_model(cfg).set_word_abstain(0.5)
    with pytest.raises(ValueError, match="probability in"):
        model.set_word_abstain(1.5)


@torch.no_grad()
def test_word_always_gives_every_object_a_word_of_the_attribute():
    """MiniGPT4Config.word_always: an attribute whose classifier says "none" on a region that holds something gives
    that "none" to its words in proportion (the colour of a kind the world gives none); an empty region stays empty,
    other attributes keep their "none"; the setting travels in the readout's metadata and must name an attribute."""
    cfg = get_config("tiny")
    cfg.proj_words, cfg.word_layout = ["cat", "dog"], "pair"
    cfg.word_attributes = {"count": ["one", "two"], "color": ["red", "blue"]}
    model = build_model(cfg).eval()
    readout = model.word_proj
    for head in (readout.classify, readout.attributes["count"], readout.attributes["color"]):
        head.weight.zero_()
    readout.classify.bias.copy_(torch.tensor([0.0, 30.0, -30.0]))  # every region: "cat"
    readout.attributes["count"].bias.copy_(torch.tensor([30.0, 0.0, -30.0]))  # count: "none"
    readout.attributes["color"].bias.copy_(torch.tensor([30.0, -1.0, -2.0]))  # colour: "none", then red over blue
    feats = torch.zeros(1, N_IMG, cfg.proj_in_features)
    table = lambda a: getattr(readout, f"table_{a}")
    before = readout(feats)
    assert before[0, :, :2].abs().max() < 1e-6  # neither count nor colour said
    model.cfg.word_always = ["color"]
    readout.always = frozenset(model.cfg.word_always)
    after = readout(feats)
    p = torch.tensor([-1.0, -2.0]).div(readout.temperature).softmax(-1)  # red, blue as the classifier ranks them
    assert torch.allclose(after[0, :, 1], (p @ table("color")[1:]).expand(N_IMG, -1), atol=1e-5)
    assert after[0, :, 0].abs().max() < 1e-6 and torch.equal(after[0, :, 2:], before[0, :, 2:])  # count, name kept
    readout.classify.bias.copy_(torch.tensor([30.0, -30.0, -30.0]))  # empty regions: no colour either
    assert readout(feats)[0, :, :2].abs().max() < 1e-6
    meta = model.cfg.readout_meta()
    again = get_config("tiny")
    again.apply_readout_meta(meta)
    assert again.word_always == ["color"] and build_model(again).word_proj.always == {"color"}
    assert "word_always" not in build_model(get_config("tiny")).cfg.readout_meta()
    with pytest.raises(ValueError, match=r"word_always \['size'\]: not attributes of this readout"):
        again.apply_readout_meta({**meta, "word_always": '["size"]'})
    model.set_word_always([])  # chat/eval/serve --always '': the model's own setting off
    readout.classify.bias.copy_(torch.tensor([0.0, 30.0, -30.0]))
    assert model.word_proj.always == frozenset() and torch.equal(readout(feats), before)
    with pytest.raises(ValueError, match="not attributes of this readout"):
        model.set_word_always(["size"])
    assert model.cfg.word_always == [] and model.word_proj.always == frozenset()


@torch.no_grad()
def test_attribute_classifiers_with_hidden_units_give_the_words_their_mlp_picks():
    """MiniGPT4Config.word_attribute_hidden: each attribute's classifier is one GELU layer then a Linear (the name's
    stays linear); the region's attribute word is the MLP's pick, also under word_always; the width travels in the
    readout's metadata, so a reloaded config builds the same heads."""
    cfg = get_config("tiny")
    cfg.proj_words, cfg.word_layout = ["cat", "dog"], "pair"
    cfg.word_attributes, cfg.word_attribute_hidden = {"color": ["red", "blue"]}, 4
    model = build_model(cfg).eval()
    readout = model.word_proj
    head = readout.attributes["color"]
    assert isinstance(readout.classify, torch.nn.Linear) and [type(m).__name__ for m in head] == [
        "Linear", "GELU", "Linear"] and head[0].weight.shape == (4, cfg.word_features)
    readout.classify.weight.zero_()
    readout.classify.bias.copy_(torch.tensor([0.0, 30.0, -30.0]))  # every region: "cat"
    head[0].weight.zero_()
    head[0].bias.copy_(torch.tensor([1.0, -1.0, 0.0, 0.0]))  # GELU(1) ~ 0.84, GELU(-1) ~ -0.16
    head[2].weight.zero_()
    head[2].bias.zero_()
    head[2].weight[2, 0] = 60.0  # "blue" from the first hidden unit, after its GELU
    feats = torch.zeros(1, N_IMG, cfg.proj_in_features)
    blue = getattr(readout, "table_color")[2]
    assert torch.allclose(readout(feats)[0, :, 0], blue.expand(N_IMG, -1), atol=1e-4)
    model.set_word_always(["color"])
    assert torch.allclose(readout(feats)[0, :, 0], blue.expand(N_IMG, -1), atol=1e-4)
    again = get_config("tiny")
    again.apply_readout_meta(model.cfg.readout_meta())
    assert again.word_attribute_hidden == 4
    assert build_model(again).word_proj.attributes["color"][0].weight.shape == (4, cfg.word_features)
    assert "word_attribute_hidden" not in build_model(get_config("tiny")).cfg.readout_meta()


def _label_starts(cfg):
    """Where each label starts in the pair layout (label, word, projection per word)."""
    starts, at = [], 0
    for ids in cfg.word_label_ids:
        starts.append(at)
        at += len(ids) + 2
    return starts


@torch.no_grad()
def test_a_word_side_of_another_build_reads_the_image_at_its_own_size_and_normalisation(word_side_cfg):
    """word_side: the readout's side may differ from the main one in encoder, input size, normalisation, token count
    and width. One pixel tensor at the larger size feeds both; each side resizes and renormalises it; the feature rows
    share the wider width (the narrower side zero-padded) and split back exactly."""
    from minigpt4.data.image import adapt_pixels
    from minigpt4.weights.pretrained import assemble
    cfg = word_side_cfg
    assert (cfg.input_size, cfg.num_word_queries, cfg.word_features, cfg.feature_width) == (84, 9, 24, 32)
    assert (cfg.num_vision_tokens, cfg.num_image_tokens) == (8 + 9, 8 + 9)
    model = build_model(cfg).eval()
    from PIL import Image
    img = Image.fromarray(torch.randint(0, 255, (84, 84, 3), dtype=torch.uint8).numpy())
    pixels = model.preprocess([img])
    assert pixels.shape[-1] == 84
    feats = model.vision_features(pixels)
    assert feats.shape == (1, 17, 32)
    main, words = model.split_features(feats)
    assert main.shape == (1, 8, 32) and words.shape == (1, 9, 24)
    assert torch.equal(feats[:, 8:, 24:], torch.zeros(1, 9, 8))  # padding, never read
    side = cfg.word_side
    own = adapt_pixels(pixels, 84, cfg.image_mean, cfg.image_std, side.image_mean, side.image_std)
    wv = model.word_vision
    expected = wv.ln_vision(wv.visual_encoder(own))[:, 1:]
    assert torch.allclose(words, expected, atol=1e-5)
    # the main side reads the image at its own 56 px, as it would have from a 56 px tensor (bicubic either way)
    alone = build_model(get_config("tiny")).eval()  # same seed: the same main side
    assert torch.allclose(main, alone.vision_features(alone.preprocess([img])), atol=0.15)
    tokens = model.project(feats)
    assert tokens.shape == (1, 17, cfg.llm.hidden_size)
    assert torch.allclose(tokens[:, 8:], model.word_proj(words)[:, :, -1], atol=1e-6)
    # its settings travel with the config (to_dict / from_dict), and the weights load back the same
    again = MiniGPT4Config.from_dict(cfg.to_dict())
    assert again.word_side == cfg.word_side
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("llm.")}
    assert "word_vision.qformer.query_tokens" not in expected_layout(again)
    assert torch.allclose(assemble(again, state).eval().encode_pixels(pixels), model.encode_pixels(pixels), atol=1e-5)
    cfg.word_layout = "pair"  # one word per projection token needs as many words as tokens
    with pytest.raises(ValueError, match="word side gives 9: use word_layout: append"):
        build_model(cfg)
    cfg.word_layout, cfg.word_vision = "append", False
    with pytest.raises(ValueError, match="set word_vision: true"):
        build_model(cfg)


def test_pixels_adapt_to_a_side_like_a_resized_image_and_not_at_all_when_nothing_differs():
    from PIL import Image

    from minigpt4.data.image import adapt_pixels, preprocess
    from minigpt4.weights.efficientnet import IMAGENET_MEAN, IMAGENET_STD
    from minigpt4.world import generate
    img = generate("scene", 3, "val", 224).image
    clip = preprocess([img], 224)
    assert adapt_pixels(clip, 224, (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711),
                        (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)) is clip
    from minigpt4.config import CLIP_MEAN, CLIP_STD
    ours = adapt_pixels(clip, 128, CLIP_MEAN, CLIP_STD, IMAGENET_MEAN, IMAGENET_STD)
    pil = preprocess([img.resize((128, 128), Image.BICUBIC)], 128, IMAGENET_MEAN, IMAGENET_STD)
    assert ours.shape == pil.shape
    assert (ours - pil).abs().mean() < 0.03  # torch's antialiased bicubic vs PIL's, in normalised units
    assert (ours - pil).abs().mean() < 0.2 * (pil - pil.mean()).abs().mean()


def test_a_word_vision_side_feeds_the_readout_and_only_the_readout():
    """word_vision: a second frozen vision side whose outputs follow the main side's in vision_features; the
    projection reads the main half, the readout the word half, and no trainable group reaches it."""
    from minigpt4.weights.pretrained import assemble
    cfg = get_config("tiny")
    cfg.proj_words, cfg.word_layout, cfg.word_vision = ["cat", "dog"], "pair", True
    assert cfg.num_vision_tokens == 2 * N_IMG and cfg.num_image_tokens == 2 * N_IMG
    model = build_model(cfg).eval()
    pixels = torch.randn(2, 3, cfg.vision.image_size, cfg.vision.image_size)
    feats = model.vision_features(pixels)
    main = build_model(get_config("tiny")).eval()  # same seed: the same main vision side, no word side
    assert torch.allclose(feats[:, :N_IMG], main.vision_features(pixels), atol=1e-6)
    assert torch.allclose(feats[:, N_IMG:], model.word_vision(pixels), atol=1e-6)
    assert not torch.allclose(feats[:, :N_IMG], feats[:, N_IMG:])
    tokens = model.project(feats)
    assert torch.allclose(tokens[:, 1::2], model.proj(feats[:, :N_IMG]), atol=1e-6)
    assert torch.allclose(tokens[:, 0::2], model.word_proj(feats[:, N_IMG:])[:, :, -1], atol=1e-6)
    model.set_trainable(["proj", "words", "vision", "qformer"])
    assert not any(p.requires_grad for p in model.word_vision.parameters())
    # weights (also assembled on the meta device) carry the word side as word_vision.*
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("llm.")}
    assert any(k.startswith("word_vision.qformer.") for k in expected_layout(cfg))
    loaded = assemble(cfg, state).eval()
    assert torch.allclose(loaded.encode_pixels(pixels), model.encode_pixels(pixels), atol=1e-5)
    cfg.proj_words = []
    with pytest.raises(ValueError, match="word_vision is the word readout's own vision side"):
        build_model(cfg)
