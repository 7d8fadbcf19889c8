"""Training data: the four source formats, streaming mix and its resume state, example layouts
(stage 1, stage 2 through the chat prompt builder, conversations), collation, feature cache."""
from __future__ import annotations

import io
import json
import tarfile
from collections import Counter

import numpy as np
import pytest
import torch

from minigpt4.chat.templates import Message, encode_conversation, get_template
from minigpt4.data.datasets import (ALIGNMENT_INSTRUCTIONS, CCSBUAlignSource, DataStream, ExampleBuilder,
                                    FolderSource, LlavaSource, SkipSample, WebDatasetSource, clean_caption,
                                    collate, iter_json_array)
from minigpt4.data.features import FeatureCache, vision_fingerprint
from minigpt4.data.image import ImageError, load_image, preprocess
from minigpt4.data.webdataset import expand_shards, iter_shard
from minigpt4.model.minigpt4 import IGNORE_INDEX, IMAGE_TOKEN_ID
from minigpt4.train.tinydata import jpeg, make_tiny_datasets, tiny_image, write_shards


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return make_tiny_datasets(tmp_path_factory.mktemp("tinydata"), n=16, bad=3)


def builder(model, stage=1, **kw):
    return ExampleBuilder(model.tokenizer, get_template(model.cfg.template), model.cfg.num_image_tokens,
                          stage=stage, system=model.cfg.system, **kw)


def test_clean_caption_matches_original_blip_rules():
    assert clean_caption("A Dog (running) on the BEACH!!  \n") == "a dog running on the beach"
    assert clean_caption("Hello: world; ~yes~ #tag*") == "hello world yes tag"
    long = " ".join(f"w{i}" for i in range(80))
    assert clean_caption(long).split() == [f"w{i}" for i in range(50)]
    assert len(clean_caption(long, max_words=5).split()) == 5


def test_webdataset_shards_grouped_by_key_lazy_images_and_json_captions(tmp_path):
    path = tmp_path / "s-000.tar"
    img = jpeg(tiny_image(1)[0])
    with tarfile.open(path, "w") as tf:
        for name, data in [("a/001.jpg", img), ("a/001.txt", b"first"), ("002.png", img),
                           ("002.json", json.dumps({"caption": "second"}).encode()), ("003.txt", b"no image")]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    samples = list(iter_shard(path))
    assert [(s.key, s.caption) for s in samples] == [("a/001", "first"), ("002", "second"), ("003", "no image")]
    assert samples[0].read_image() == img and samples[2].read_image is None
    # Truncated shard: what was read survives, no crash.
    (tmp_path / "cut").mkdir()
    cut = tmp_path / "cut" / "s-001.tar"
    cut.write_bytes(path.read_bytes()[:1700])
    assert len(list(iter_shard(cut))) < 3
    # Shard specs: directory, brace range, glob; a missing shard is named.
    write_shards(tmp_path / "many", 12, per_shard=4)
    assert len(expand_shards(tmp_path / "many")) == 3
    assert len(expand_shards(str(tmp_path / "many" / "tiny-{000000..000001}.tar"))) == 2
    assert len(expand_shards(str(tmp_path / "many" / "*.tar"))) == 3
    with pytest.raises(FileNotFoundError, match="tiny-000008"):
        expand_shards(str(tmp_path / "many" / "tiny-{000008..000009}.tar"))


def test_webdataset_source_shuffles_shards_per_epoch_deterministically(tiny_data):
    src = WebDatasetSource("wds", expand_shards(tiny_data["shards"]), seed=1)
    e0 = [r.key for r in src.epoch(0)]
    assert sorted(e0) == sorted(r.key for r in src.epoch(1)) and len(e0) == 16
    assert e0 == [r.key for r in src.epoch(0)]
    assert any([r.key for r in src.epoch(e)] != e0 for e in range(1, 5))


def test_folder_cc_sbu_align_and_bad_images(tiny_data):
    recs = list(FolderSource("f", tiny_data["folder"]).epoch(0))
    assert len(recs) == 16 and recs[5].caption.startswith("A ")
    bad = 0
    for r in recs:
        try:
            load_image(r.images[0]())
        except ImageError as e:
            bad += 1
            assert "images/0000" in str(e) or "image" in str(e)
    assert bad == 3  # empty file, text file, missing file: all ImageErrors, no crash
    align = list(CCSBUAlignSource("a", tiny_data["cc_sbu_align"]).epoch(0))
    assert len(align) == 16 and align[3].key == "3" and load_image(align[3].images[0]()).size == (56, 56)
    with pytest.raises(FileNotFoundError, match="filter_cap.json"):
        CCSBUAlignSource("a", tiny_data["folder"].parent)


def test_llava_multi_turn_multi_image_and_streaming_json(tiny_data, tmp_path):
    path = tiny_data["llava"]
    assert list(iter_json_array(path, chunk_size=37)) == json.loads(path.read_text())
    recs = list(LlavaSource("l", path).epoch(0))
    assert len(recs[0].images) == 2 and [n for _, _, n in recs[0].turns] == [1, 0, 0, 0, 1, 0]
    assert recs[0].turns[0] == ("user", "What is in the picture?", 1)  # <image> tag removed from text
    assert recs[1].turns[1][0] == "assistant" and len(recs[1].images) == 1
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps([{"id": "x", "image": ["a.jpg", "b.jpg"],
                                   "conversations": [{"from": "human", "value": "<image> hi"}, {"from": "gpt", "value": "yo"}]}]))
    assert list(LlavaSource("l", broken).epoch(0))[0].turns is None  # 2 images, 1 tag: a bad sample


def test_llava_tasks_select_conversations_by_their_task(tmp_path):
    """`tasks:` in a data entry keeps only the conversations a world export tagged with those tasks."""
    from minigpt4.data.datasets import build_source
    from minigpt4.train.config import load_config
    path = tmp_path / "instructions.jsonl"
    rows = [{"id": f"s{i}", "image": "a.jpg", "task": task,
             "conversations": [{"from": "human", "value": "<image> q"}, {"from": "gpt", "value": "a"}]}
            for i, task in enumerate(["qa", "website", "recipe", "website"])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert [r.key for r in build_source("llava", "w", path, tasks=["website"]).epoch(0)] == ["s1", "s3"]
    assert len(list(build_source("llava", "all", path).epoch(0))) == 4
    with pytest.raises(ValueError, match="tasks filter"):
        next(DataStream([build_source("llava", "none", path, tasks=["sketch"])]))
    with pytest.raises(ValueError, match="'tasks' selects conversations of a llava source"):
        build_source("folder", "f", tmp_path, tasks=["website"])
    cfg = load_config({"model": "tiny", "output_dir": str(tmp_path / "out"), "max_steps": 1,
                       "data": [{"type": "llava", "path": str(path), "tasks": ["website", "recipe"]}]})
    assert cfg.data[0].tasks == ["website", "recipe"]


def test_stream_mix_follows_weights_and_resumes_exactly(tiny_data):
    def sources():
        return [WebDatasetSource("wds", expand_shards(tiny_data["shards"]), seed=3, weight=3.0),
                FolderSource("folder", tiny_data["folder"], weight=1.0)]
    s = DataStream(sources(), seed=7)
    first = [(i, r.source, r.key) for i, r in (next(s) for _ in range(200))]
    counts = Counter(src for _, src, _ in first)
    assert 0.65 < counts["wds"] / 200 < 0.85  # weight 3:1
    assert s.positions["folder"].epoch >= 1  # wrapped around into the next epoch
    # Stop after 57 samples, restore from the state dict, and continue: identical stream.
    s1 = DataStream(sources(), seed=7)
    for _ in range(57):
        next(s1)
    s2 = DataStream(sources(), seed=7, state=json.loads(json.dumps(s1.state_dict())))
    assert [(i, r.source, r.key) for i, r in (next(s2) for _ in range(143))] == first[57:]


def test_stage1_layout_bos_image_caption_newline_loss_on_caption_only(tiny_model):
    from minigpt4.data.datasets import Record
    b = builder(tiny_model, stage=1, max_txt_len=32)
    rec = Record("s", "k", [lambda: b""], caption="A RED Circle; on Blue!")
    ex = b.build(0, rec, clean=True)
    n, tok = tiny_model.cfg.num_image_tokens, tiny_model.tokenizer
    assert ex.input_ids[0] == tok.bos_token_id and ex.input_ids[1:1 + n] == [IMAGE_TOKEN_ID] * n
    assert tok.decode(ex.input_ids[1 + n:]) == "a red circle on blue\n"
    assert ex.labels[:1 + n] == [IGNORE_INDEX] * (1 + n) and ex.labels[1 + n:] == ex.input_ids[1 + n:]
    short = builder(tiny_model, stage=1, max_txt_len=3).build(0, rec, clean=True)
    assert len(short.input_ids) == 1 + n + 3
    with pytest.raises(SkipSample):
        b.build(0, Record("s", "k", [], caption="no image"))


def test_stage2_is_built_by_the_chat_prompt_builder(tiny_model):
    from minigpt4.data.datasets import Record
    b = builder(tiny_model, stage=2, max_txt_len=160)
    img = lambda: b""  # noqa: E731
    seen = set()
    for index in range(12):
        ex = b.build(index, Record("a", "k", [img], caption="The image shows a cat."), clean=False)
        instr = b.instruction(index)
        seen.add(instr)
        assert f"<Img><ImageHere></Img> {instr}" in ALIGNMENT_INSTRUCTIONS
        ids, labels = encode_conversation(tiny_model.tokenizer, get_template(tiny_model.cfg.template),
                                          [Message("user", instr, images=[img]), Message("assistant", "The image shows a cat.")],
                                          tiny_model.cfg.num_image_tokens, system=tiny_model.cfg.system)
        assert (ex.input_ids, ex.labels) == (ids, labels)
        answer = tiny_model.tokenizer.decode([l for l in labels if l != IGNORE_INDEX])
        assert answer == "The image shows a cat." + get_template(tiny_model.cfg.template).end
    assert len(seen) > 1  # instructions are drawn per sample
    cut = builder(tiny_model, stage=2, max_txt_len=4).build(0, Record("a", "k", [img], caption="one two three four five six"))
    assert sum(l != IGNORE_INDEX for l in cut.labels) == 4


def test_conversation_labels_answers_and_truncation_never_splits_an_image(tiny_model, tiny_data):
    rec = list(LlavaSource("l", tiny_data["llava"]).epoch(0))[0]  # two images, three answers
    b = builder(tiny_model, max_len=4096)
    full = b.build(0, rec)
    n = tiny_model.cfg.num_image_tokens
    assert full.input_ids.count(IMAGE_TOKEN_ID) == 2 * n and len(full.images) == 2
    answers = tiny_model.tokenizer.decode([l for l in full.labels if l != IGNORE_INDEX])
    assert answers.count("###") == 3 and "What is in the picture" not in answers
    second = [i for i, t in enumerate(full.input_ids) if t == IMAGE_TOKEN_ID][n]
    part = builder(tiny_model, max_len=second + 3).build(0, rec)  # cut inside the second image
    assert part.input_ids.count(IMAGE_TOKEN_ID) == n and len(part.images) == 1
    assert len(part.input_ids) == second


def test_collate_right_pads(tiny_model):
    from minigpt4.data.datasets import Example
    b = collate([Example([1, 5, 6], [-100, 5, 6], []), Example([1, 7], [-100, 7], [])], pad_id=2)
    assert b.input_ids.tolist() == [[1, 5, 6], [1, 7, 2]]
    assert b.labels.tolist() == [[-100, 5, 6], [-100, 7, -100]]
    assert b.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]] and b.num_label_tokens == 3


def test_feature_cache_builds_once_matches_encoder_and_invalidates(tiny_model, tmp_path):
    imgs = [jpeg(tiny_image(i)[0]) for i in range(5)]
    readers = [(lambda d=d: d) for d in imgs + [imgs[0], b"not an image"]]
    cache = FeatureCache.for_model(tmp_path, tiny_model, shard_rows=2)
    stats = cache.build(tiny_model, readers, batch_size=2, progress=False)
    assert stats == {"new": 5, "cached": 1, "bad": 1}
    assert len(list(cache.dir.glob("shard_*.npy"))) == 3  # 2 + 2 + 1 rows
    import hashlib
    got = cache.lookup(hashlib.sha256(imgs[3]).hexdigest())
    with torch.no_grad():
        want = tiny_model.vision_features(preprocess([load_image(imgs[3])], 56))[0]
    assert isinstance(got, np.memmap) or isinstance(got.base, np.memmap)
    torch.testing.assert_close(torch.from_numpy(np.array(got)), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ImageError):
        cache.lookup(hashlib.sha256(b"not an image").hexdigest())
    assert cache.build(tiny_model, readers, progress=False)["new"] == 0  # nothing recomputed
    # A changed encoder or changed preprocessing selects another cache.
    fp = vision_fingerprint(tiny_model)
    w = tiny_model.qformer.query_tokens
    old = w.data.clone()
    try:
        w.data[0, 0, 0] += 1.0
        assert vision_fingerprint(tiny_model) != fp
    finally:
        w.data.copy_(old)
    size = tiny_model.cfg.vision.image_size
    try:
        tiny_model.cfg.image_mean = (0.5, 0.5, 0.5)
        assert vision_fingerprint(tiny_model) != fp
    finally:
        from minigpt4.config import CLIP_MEAN
        tiny_model.cfg.image_mean = CLIP_MEAN
    assert vision_fingerprint(tiny_model) == fp and size == 56
