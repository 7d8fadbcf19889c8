"""Grounded answers (minigpt4.chat.grounding): object words the word readout did not read become "thing"."""
from __future__ import annotations

import pytest
import torch
from PIL import Image

from minigpt4.chat.engine import ChatEngine, Conversation, Request, _Prompt, _RowState
from minigpt4.chat.grounding import asks_for_ungrounded, ground_text, stable_prefix
from minigpt4.chat.templates import Message
from minigpt4.config import GenerationConfig, MiniGPT4Config, get_config
from minigpt4.model.minigpt4 import build_model

WORDS = ["cat", "dog", "apple", "thing"]
GREEDY = GenerationConfig(max_new_tokens=6, do_sample=False, repetition_penalty=1.0)


def test_ground_text_keeps_read_names_and_words_outside_the_readout():
    vocab = {"cat", "dog", "apple", "sheep"}
    text = "An apple and two dogs sit near a cat. The apple is red; a sheep, two sheep and a waffle."
    assert ground_text(text, {"cat", "sheep"}, vocab) == \
        "A thing and two things sit near a cat. The thing is red; a sheep, two sheep and a waffle."
    assert ground_text(text, vocab, vocab) == text  # everything read: unchanged
    assert ground_text('The sign says "dog".', set(), vocab) == 'The sign says "dog".'  # quotes are not objects
    assert stable_prefix("There is an apple and two dogs near the") == "There is an"
    assert stable_prefix("An apple") == ""


@pytest.fixture(scope="module")
def model():
    cfg = get_config("tiny")
    cfg.proj_words, cfg.word_unknown = list(WORDS), "thing"
    m = build_model(cfg, seed=0).eval()
    with torch.no_grad():  # every region reads "cat", surely
        m.word_proj.classify.weight.zero_()
        m.word_proj.classify.bias.copy_(torch.tensor([-30.0, 30.0, -30.0, -30.0, -30.0]))
    return m


def _image(seed: int) -> Image.Image:
    return Image.new("RGB", (64, 64), (seed * 40 % 255, 90, 200))


def test_questions_asking_for_recipes_pages_or_prompts_are_not_grounded():
    """The presets that are never grounded say so by their own prompts; a free question asking for the same is not
    grounded either, a question about the picture is."""
    from minigpt4.chat.presets import PRESETS
    for name, preset in PRESETS.items():
        assert asks_for_ungrounded(preset.prompt) == (not preset.groundable), name
    for q in ("Can you give me a recipe?", "How would I cook this?", "What do I cook with this?", "Turn this sketch into a web page",
              "write the HTML", "What prompt made this picture?", "a Midjourney description please"):
        assert asks_for_ungrounded(q), q
    for q in ("What is on the plate?", "How many cats are there?", "Where is the prompter standing?",
              "Which ingredients can you see?", "Is the page torn?"):
        assert not asks_for_ungrounded(q), q


def test_names_used_as_verbs_are_neither_counted_nor_grounded():
    """"what you saw" is no saw: a name that is also a common verb or idiom counts only after a word that starts a
    noun phrase (world.vocab.is_object_use), for CHAIR_i and for grounding alike."""
    from minigpt4.world.vocab import find_mentions
    assert [f for f, _ in find_mentions("I saw a saw; it will die, a red die, for the sake of a glass of sake")] == \
        ["saw", "die", "sake"]
    assert ground_text("What you saw, I saw: a saw and two ducks.", set(), {"saw", "duck"}) == \
        "What you saw, I saw: a thing and two things."


def test_read_names_follows_the_readout_and_its_abstention(model, monkeypatch):
    assert model.read_names([_image(1), _image(1)]) == [frozenset({"cat"})] * 2
    model.encode_images([_image(6)])  # encoding an image reads its names too: no second vision pass for them
    with monkeypatch.context() as m:
        m.setattr(model, "vision_features", lambda pixels: pytest.fail("read again"))
        assert model.read_names([_image(6)]) == [frozenset({"cat"})]
    with torch.no_grad():
        model.word_proj.classify.bias.copy_(torch.tensor([-30.0, 0.0, 0.0, -30.0, -30.0]))  # torn: cat or dog
    try:
        model.clear_cache()
        assert model.read_names([_image(2)])[0] in ({"cat"}, {"dog"})
        # --ground-sure: a torn name grounds nothing, while the LLM still reads it (the image's encoding is the same)
        told = model.encode_images([_image(2)])
        model.set_word_ground_sure(0.7)
        assert model.read_names([_image(2)]) == [frozenset()]
        torch.testing.assert_close(model.encode_images([_image(2)]), told)
        model.set_word_ground_sure(0.0)
        assert model.read_names([_image(2)])[0] in ({"cat"}, {"dog"})
        with pytest.raises(ValueError, match=r"--ground-sure is a probability in \[0, 1\)"):
            model.set_word_ground_sure(1.0)
        model.set_word_abstain(0.7)  # below 0.7 a name reads "thing", which names nothing
        assert model.read_names([_image(2)]) == [frozenset()]
        assert not torch.equal(model.encode_images([_image(2)]), told)  # ... and the LLM reads "thing"
    finally:
        model.set_word_abstain(0.0)
        model.set_word_ground_sure(0.0)
        with torch.no_grad():
            model.word_proj.classify.bias.copy_(torch.tensor([-30.0, 30.0, -30.0, -30.0, -30.0]))
        model.clear_cache()
    bare = build_model(get_config("tiny"), seed=0)
    with pytest.raises(ValueError, match="has none"):
        bare.read_names([_image(1)])


def test_streamed_and_final_grounded_text_agree_and_never_show_an_unread_name(model):
    """Token by token through the engine's own decode step: a name is rewritten once it is whole, the words that may
    still change are held back, and what was streamed is exactly the final answer."""
    eng = ChatEngine(model)
    answer = "An apple sits by two dogs and a cat. A dog sleeps on a mat near an apple pie."
    tokens = model.tokenizer(answer, add_special_tokens=False).input_ids
    st = _RowState(GenerationConfig(max_new_tokens=len(tokens) + 1, do_sample=False), None, [],
                   prompt=_Prompt(ids=[], images=[], messages=[], read=frozenset({"cat"})))
    pieces = []
    for t in tokens:
        pieces.append(eng._advance(st, t))
        assert "dog" not in "".join(pieces) and "apple" not in "".join(pieces)
    pieces.append(eng._advance(st, next(iter(eng.eos_ids))))
    assert st.text == "A thing sits by two things and a cat. A thing sleeps on a mat near a thing pie."
    assert "".join(pieces) == st.text
    assert sum(bool(p) for p in pieces[:-1]) >= 5  # it streamed while decoding, not only at the end


def test_grounded_requests_read_their_images_and_refuse_embeddings(model):
    eng = ChatEngine(model)
    msgs = [Message("user", "Describe this image.", images=[_image(3)])]
    prompt = eng.build_prompt(msgs, GREEDY, ground=True)
    assert prompt.read == {"cat"} and eng.build_prompt(msgs, GREEDY).read is None
    res = eng.generate([Request(msgs, GREEDY, ground=True), Request(msgs, GREEDY)])
    assert res[0].text == ground_text(res[1].text, {"cat"}, {"cat", "dog", "apple"})
    emb = eng.encode_images([_image(3)])[0]
    with pytest.raises(ValueError, match="give the image itself"):
        eng.generate([Request([Message("user", "Hi", images=[emb])], GREEDY, ground=True)])
    from minigpt4.eval.runner import measure_speed
    assert measure_speed(model, _image(7), runs=1, tokens=5, ground=True)["tokens"] == 5  # eval's speed row, grounded
    conv = Conversation(eng, ground=True)
    conv.add_image(_image(4))
    r = conv.ask("What is here?", GREEDY)
    assert conv._read == {"cat"} and r.text == ground_text(r.text, {"cat"}, {"cat", "dog", "apple"})
    # a question asking for a recipe is answered as asked: no names read, nothing rewritten
    recipe = [Message("user", "Write a recipe for this dish.", images=[_image(3)])]
    assert eng.build_prompt(recipe, GREEDY, ground=True).read is None


def test_grounding_is_kept_in_the_readout_metadata(model):
    cfg = MiniGPT4Config()
    cfg.proj_words, cfg.word_unknown, cfg.word_ground = list(WORDS), "thing", True
    meta = cfg.readout_meta()
    assert meta["word_ground"] == "1"
    again = MiniGPT4Config()
    again.apply_readout_meta(meta)
    assert again.word_ground
    again.apply_readout_meta({k: v for k, v in meta.items() if k != "word_ground"})
    assert not again.word_ground


def test_grounded_flag_errors_name_the_fix(tmp_path, monkeypatch, capsys):
    from minigpt4.cli import main
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    path = tmp_path / "x.png"
    _image(5).save(path)
    assert main(["recipe", str(path), "--model", "tiny", "--grounded"]) == 2
    assert "--grounded is for answers about what the picture shows" in capsys.readouterr().err
    assert main(["describe", str(path), "--model", "tiny", "--grounded"]) == 2
    assert "this model has none: drop --grounded" in capsys.readouterr().err


def test_served_answers_are_grounded_streamed_or_not_and_recipes_are_not(model):
    """A real server on localhost, the forced-output LLM answering "A dog sits by a cat." over a readout that reads
    "cat": grounded where the server says so, for free chat and describe, in one piece or streamed; never a recipe."""
    import openai
    from test_serve_support import LiveServer, forced_output_model, image_part, png_bytes

    from minigpt4.serve.app import create_app
    from minigpt4.serve.config import ServeConfig
    forced = forced_output_model(model, "A dog sits by a cat.")
    msgs = [{"role": "user", "content": [image_part(png_bytes((40, 90, 200))), {"type": "text", "text": "Hi"}]}]
    asks_recipe = [{"role": "user", "content": [image_part(png_bytes((40, 90, 200))),
                                                {"type": "text", "text": "Write me a recipe for this."}]}]
    answers = {}
    for ground in (True, None):
        with LiveServer(create_app(ChatEngine(forced), ServeConfig(model_name="m", ground=ground))) as srv:
            c = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0, timeout=60)
            for name in ("m", "m:describe", "m:recipe"):
                answers[ground, name] = c.chat.completions.create(model=name, messages=msgs,
                                                                  max_tokens=20).choices[0].message.content
            chunks = c.chat.completions.create(model="m", messages=msgs, max_tokens=20, stream=True)
            answers[ground, "stream"] = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
            answers[ground, "asks recipe"] = c.chat.completions.create(
                model="m", messages=asks_recipe, max_tokens=20).choices[0].message.content
    assert answers[True, "m"] == answers[True, "m:describe"] == answers[True, "stream"] == "A thing sits by a cat."
    assert answers[True, "m:recipe"] == answers[True, "asks recipe"] == "A dog sits by a cat."
    assert {answers[None, k] for k in ("m", "m:describe", "m:recipe", "stream")} == {"A dog sits by a cat."}


def test_curation_describes_grounded(model):
    """`minigpt4 curate run --grounded`: the stage-1 model's descriptions name only what the readout read."""
    from test_serve_support import forced_output_model

    from minigpt4.curate.describe import Describer
    eng = ChatEngine(forced_output_model(model, "A dog sits by a cat."))
    gen = GenerationConfig(max_new_tokens=20, do_sample=False, repetition_penalty=1.0)
    assert Describer(eng, gen=gen, continue_below=0, ground=True).describe([_image(8)])[0].text == \
        "A thing sits by a cat."
    assert Describer(eng, gen=gen, continue_below=0).describe([_image(8)])[0].text == "A dog sits by a cat."
