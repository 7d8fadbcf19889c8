"""Chat engine: KV reuse across turns, streaming, batching, stop handling, overflow, presets.

The model is the tiny preset with a larger weight init (initializer_range 0.3): still random, but
its greedy output changes with the input token by token, so "batched == sequential" and
"turn 2 with cache == from scratch" compare real, varied sequences. No output text is hard-coded:
every expectation is derived from another run of the same model.
"""
from __future__ import annotations

import copy
import dataclasses
import html.parser
import warnings

import pytest
import torch
from PIL import Image

from minigpt4.chat.engine import (ChatEngine, Conversation, PromptTooLongError, Request, _streamable,
                                  sample_next)
from minigpt4.chat.presets import PRESETS, extract_html, get_preset, shorten_alt_text, write_website
from minigpt4.chat.templates import (TEMPLATES, Message, encode_conversation, get_template,
                                     template_from_tokenizer)
from minigpt4.config import GenerationConfig, get_config
from minigpt4.model.minigpt4 import IMAGE_TOKEN_ID, build_model

GREEDY = GenerationConfig(max_new_tokens=10, do_sample=False, repetition_penalty=1.0)


@pytest.fixture(scope="module")
def model():
    cfg = get_config("tiny")
    cfg.llm.arch["initializer_range"] = 0.3  # varied greedy output (see module docstring)
    m = build_model(cfg, seed=0)
    m.eval()
    return m


@pytest.fixture(scope="module")
def engine(model):
    return ChatEngine(model)


def img(color) -> Image.Image:
    im = Image.new("RGB", (64, 64), color)
    im.putpixel((3, 3), (255 - color[0], 255 - color[1], 255 - color[2]))
    return im


class Counter:
    """Counts calls into a module and the sequence length the LLM is fed (forward pre-hooks)."""

    def __init__(self, module, llm=False):
        self.calls, self.tokens = 0, []
        self.handle = module.register_forward_pre_hook(self._hook, with_kwargs=True)
        self.llm = llm

    def _hook(self, module, args, kwargs):
        self.calls += 1
        if self.llm:
            x = kwargs.get("inputs_embeds")
            if x is None:
                x = kwargs.get("input_ids")
            self.tokens.append(x.shape[1])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def ask(engine, messages, gen=GREEDY, **kw):
    return engine.generate([Request(messages, gen, **kw)])[0]


# --- multi-turn KV reuse ----------------------------------------------------------------------
def test_second_turn_reuses_cache_and_matches_from_scratch(engine, model):
    conv = Conversation(engine)
    conv.add_image(img((200, 30, 30)))
    r1 = conv.ask("What is in the picture?", GREEDY)
    with Counter(model.visual_encoder) as vis, Counter(model.llm, llm=True) as llm:
        r2 = conv.ask("And what color is it?", GREEDY)
    assert vis.calls == 0, "turn 2 must not re-encode turn-1 images"
    assert r2.cached_tokens >= r1.prompt_tokens, "turn 2 should reuse at least the whole turn-1 prompt"
    new_tokens = r2.prompt_tokens - r2.cached_tokens
    assert llm.tokens[0] == new_tokens  # the prefill fed only the tokens the cache lacked
    assert new_tokens < 30
    assert all(t == 1 for t in llm.tokens[1:])  # then one token per decode step
    # Same answer as the original behaviour: re-encode the whole conversation from scratch.
    scratch = ask(engine, conv.messages[:-1])
    assert scratch.text == r2.text and scratch.prompt_tokens == r2.prompt_tokens
    assert r2.text  # a real answer was compared, not two empty strings


def test_new_image_in_second_turn_and_reset(engine, model):
    conv = Conversation(engine)
    conv.add_image(img((10, 200, 10)))
    conv.ask("Describe it.", GREEDY)
    with Counter(model.visual_encoder) as vis:
        conv.add_image(img((10, 10, 200)))  # a new image: encoded once, when added
        r2 = conv.ask("And this second one?", GREEDY)
    assert vis.calls == 1
    ids = engine.build_prompt(conv.messages[:-1], GREEDY).ids
    assert ids.count(IMAGE_TOKEN_ID) == 2 * engine.num_image_tokens
    assert ask(engine, conv.messages[:-1]).text == r2.text
    conv.reset()
    assert conv.messages == [] and conv.ask("Hi", GREEDY).cached_tokens == 0


# --- streaming and batching -------------------------------------------------------------------
def prompts():
    return [[Message("user", "Describe this image.", images=[img((200, 30, 30))])],
            [Message("user", "Hello! Tell me a long story about a dragon and a knight, please.")],
            [Message("user", "Compare them.", images=[img((0, 0, 0)), img((250, 250, 0))])]]


def test_batched_greedy_equals_sequential(engine):
    seq = [ask(engine, m) for m in prompts()]
    deltas: dict[int, list[str]] = {}
    batch = engine.generate([Request(m, GREEDY) for m in prompts()],
                            on_text=lambda i, d: deltas.setdefault(i, []).append(d))
    for i, (a, b) in enumerate(zip(seq, batch)):
        assert a.text and a.text == b.text, f"row {i}: batched output differs (left padding broken?)"
        assert (a.prompt_tokens, a.completion_tokens) == (b.prompt_tokens, b.completion_tokens)
        assert "".join(deltas[i]) == b.text  # streamed deltas join to the final text
    assert len({r.prompt_tokens for r in batch}) == 3  # really different lengths -> real padding


def test_rows_join_and_leave_a_running_batch(engine):
    """Continuous batching: requests that join a running batch between decode steps (their prefill
    merged into its KV cache, at other lengths and positions) answer exactly as when served alone,
    greedy or seeded, and so do the rows that were already running."""
    from minigpt4.chat.engine import DecodeBatch
    seeded = GenerationConfig(max_new_tokens=9, seed=5, top_k=20, repetition_penalty=1.1)
    reqs = [(prompts()[1], GREEDY), (prompts()[0], seeded),
            (prompts()[2], dataclasses.replace(GREEDY, max_new_tokens=4)), (prompts()[0], GREEDY)]
    alone = [ask(engine, m, g) for m, g in reqs]
    batch, rows, texts = DecodeBatch(engine), {}, {i: "" for i in range(4)}

    def join(i):
        p = engine.build_prompt(reqs[i][0], reqs[i][1])
        rows[i] = batch.add([p], [reqs[i][1]], keys=[i])[0]

    def step():
        for key, delta in batch.step():
            texts[key] += delta

    join(0)
    for _ in range(3):
        step()
    p1, p2 = (engine.build_prompt(reqs[i][0], reqs[i][1]) for i in (1, 2))
    for i, st in zip((1, 2), batch.add([p1, p2], [reqs[1][1], reqs[2][1]], keys=[1, 2])):
        rows[i] = st  # two newcomers, prefilled together
    widths = []
    while batch:
        step()
        widths.append(batch.mask.shape[1] if batch else 0)
        if 3 not in rows and rows[2].finish is not None:
            join(3)  # joins after row 2 has left
    for i in range(4):
        assert rows[i].result().text == alone[i].text and alone[i].text, f"request {i}"
        assert rows[i].result().completion_tokens == alone[i].completion_tokens
        assert texts[i] == alone[i].text  # streamed deltas too
    # once the early rows have left, the cache is cut back to the longest live row
    assert widths[-2] == rows[3].length
    # and "alone" is right: greedy tokens match a plain full forward pass without any KV cache
    for i in (0, 3):
        p, toks = engine.build_prompt(reqs[i][0], GREEDY), rows[i].tokens
        with torch.inference_mode():
            emb = engine.model.embed(torch.tensor([p.ids + toks[:-1]]), torch.stack(p.images) if p.images else None)
            ref = engine.model.llm(inputs_embeds=emb).logits[0, len(p.ids) - 1:].argmax(-1).tolist()
        assert ref == toks, f"request {i}"


def test_shared_system_prefix_is_prefilled_once(model):
    """Every request starts with the system message: its KV is computed once and copied into each
    row, which is exact (a token's KV depends only on the tokens before it) - same answers as a
    full prefill - and is recomputed when the weights change."""
    eng = ChatEngine(model)
    reqs = [Request(m, GREEDY) for m in prompts()]
    with Counter(model.llm, llm=True) as llm:
        first = eng.generate(reqs)
        again = eng.generate(reqs[1:2])
    prefix = llm.tokens[0]  # the first call computed the prefix alone
    assert prefix >= eng.PREFIX_MIN and eng.build_prompt(prompts()[1]).ids[:prefix] == eng._system_ids(None)[:prefix]
    assert again[0].text == first[1].text
    width = max(len(eng.build_prompt(m).ids) for m in prompts())
    assert llm.tokens[1] == width - prefix  # the batch prefill fed only what follows the prefix
    eng.PREFIX_MIN = 10**9  # off: the plain full prefill
    assert [r.text for r in eng.generate(reqs)] == [r.text for r in first]
    eng.PREFIX_MIN = ChatEngine.PREFIX_MIN
    edited = copy.deepcopy(model)
    eng2 = ChatEngine(edited)
    eng2.generate(reqs[:1])
    with torch.no_grad():
        edited.llm.model.layers[0].self_attn.v_proj.weight.mul_(-1.0)
    cached = [r.text for r in eng2.generate(reqs)]
    eng2.PREFIX_MIN = 10**9
    assert cached == [r.text for r in eng2.generate(reqs)]


def test_seeded_rows_sample_the_same_alone_or_in_a_batch():
    """Each row draws from its own generator: its tokens do not depend on its batch-mates."""
    from minigpt4.chat.engine import _RowState, _topk, sample_batch
    logits = torch.randn(6, 5000, generator=torch.Generator().manual_seed(1)) * 2
    gens = [GenerationConfig(top_k=50, temperature=0.7), GenerationConfig(top_p=0.8),
            GenerationConfig(do_sample=False), GenerationConfig(top_p=1.0, temperature=1.3),
            GenerationConfig(top_k=3, top_p=0.5, repetition_penalty=1.3), GenerationConfig(top_p=0.05)]
    hist = [[1, 2], [], [int(logits[2].argmax())], [7], list(range(40)), []]

    def rows():
        return [_RowState(g, torch.Generator().manual_seed(10 + i), [], tokens=list(h))
                for i, (g, h) in enumerate(zip(gens, hist))]
    batched, single = rows(), rows()
    for _ in range(5):
        together = sample_batch(logits, batched)
        alone = [sample_batch(logits[i:i + 1], [single[i]])[0] for i in range(6)]
        assert together == alone
    k = 50
    assert torch.equal(_topk(logits, k)[1], torch.topk(logits, k).indices)


def test_sampling_follows_the_distribution():
    """Inverse-CDF draws: token frequencies match the softmax (top-p cuts the tail)."""
    from minigpt4.chat.engine import _RowState, sample_batch
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    st = _RowState(GenerationConfig(top_p=1.0, repetition_penalty=1.0), torch.Generator().manual_seed(0), [])
    counts = torch.bincount(torch.tensor([sample_batch(logits[None], [st])[0] for _ in range(4000)]), minlength=4)
    assert torch.allclose(counts / 4000, torch.tensor([0.5, 0.3, 0.15, 0.05]), atol=0.03), counts
    st = _RowState(GenerationConfig(top_p=0.7, repetition_penalty=1.0), torch.Generator().manual_seed(0), [])
    counts = torch.bincount(torch.tensor([sample_batch(logits[None], [st])[0] for _ in range(2000)]), minlength=4)
    assert counts[2:].sum() == 0 and abs(float(counts[0]) / 2000 - 0.5 / 0.8) < 0.05, counts


def test_each_row_stops_on_its_own(engine):
    msgs = prompts()[:2]
    base = [ask(engine, m, GenerationConfig(max_new_tokens=12, do_sample=False, repetition_penalty=1.0))
            for m in msgs]
    # Stop row 0 on a word from early in its answer; row 1 runs to its length limit.
    words = base[0].text.split()
    stop0 = words[1]
    gens = [GenerationConfig(max_new_tokens=12, do_sample=False, repetition_penalty=1.0, stop=(stop0,)),
            GenerationConfig(max_new_tokens=12, do_sample=False, repetition_penalty=1.0)]
    out = engine.generate([Request(m, g) for m, g in zip(msgs, gens)])
    alone = [ask(engine, m, g) for m, g in zip(msgs, gens)]
    assert out[0].finish_reason == "stop" and out[0].completion_tokens < 12
    assert stop0 not in out[0].text and base[0].text.startswith(out[0].text)
    assert out[1].finish_reason == "length" and out[1].completion_tokens == 12
    assert [r.text for r in out] == [r.text for r in alone]
    assert out[1].text == base[1].text  # row 1 unaffected by row 0 leaving the batch


def test_eos_stops_a_row_and_is_not_in_the_text(model):
    eng = ChatEngine(model)
    msgs = prompts()[1]
    gen = GenerationConfig(max_new_tokens=8, do_sample=False, repetition_penalty=1.0)
    full = ask(eng, msgs, gen)
    tok = model.tokenizer(" " + full.text.split()[2], add_special_tokens=False).input_ids[0]
    eng.eos_ids = {tok}  # pretend the third word's first token is the EOS token
    r = ask(eng, msgs, gen)
    assert r.finish_reason == "stop" and r.completion_tokens < 8
    assert full.text.startswith(r.text) and len(r.text) < len(full.text)


def test_stop_string_across_tokens_is_held_back_while_streaming(engine):
    msgs = prompts()[1]
    full = ask(engine, msgs)
    words = full.text.split()
    stop = words[2][-2:] + " " + words[3][:2]  # spans two tokens
    gen = GenerationConfig(max_new_tokens=10, do_sample=False, repetition_penalty=1.0, stop=(stop,))
    deltas = list(engine.stream(Request(msgs, gen)))
    res = ask(engine, msgs, gen)
    assert res.finish_reason == "stop" and stop not in res.text
    assert "".join(deltas) == res.text  # nothing of the stop string was ever streamed


def test_streamable_holds_back_possible_stops():
    assert _streamable("Hello ##", ["###"]) == "Hello"
    assert _streamable("Hello #x", ["###"]) == "Hello #x"
    assert _streamable("  caf\ufffd", []) == "caf"
    assert _streamable("answer <|im_e", ["<|im_end|>"]) == "answer"


# --- sampling -----------------------------------------------------------------------------------
def test_repetition_penalty_and_greedy():
    logits = torch.tensor([0.0, 2.0, 1.93, -1.0])
    g = GenerationConfig(do_sample=False, repetition_penalty=1.0)
    assert sample_next(logits, g, [1]) == 1
    g = GenerationConfig(do_sample=False, repetition_penalty=1.05)  # the original's default
    assert sample_next(logits, g, [1]) == 2  # 2.0 / 1.05 = 1.905 < 1.93
    assert sample_next(logits, g, []) == 1   # only tokens already generated are penalised


def test_batched_penalty_equals_per_row():
    from minigpt4.chat.engine import _RowState, sample_batch
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(4, 300, generator=g)
    hist = [[int(logits[0].argmax()), 5, 5], [], [int(logits[2].argmax())], list(range(0, 300, 7))]
    gens = [GenerationConfig(do_sample=False, repetition_penalty=p) for p in (5.0, 1.3, 5.0, 1.05)]
    rows = [_RowState(gen, None, [], tokens=list(h)) for gen, h in zip(gens, hist)]
    assert sample_batch(logits, rows) == [sample_next(logits[i], gens[i], hist[i]) for i in range(4)]
    assert sample_batch(logits, rows)[0] != int(logits[0].argmax())  # the penalty did act


def test_top_k_top_p_and_seed(engine):
    logits = torch.tensor([5.0, 4.0, -10.0, -10.0])
    g = GenerationConfig(do_sample=True, top_p=0.5, temperature=1.0, repetition_penalty=1.0)
    assert {sample_next(logits, g, []) for _ in range(20)} == {0}  # top-p keeps only the head
    g = GenerationConfig(do_sample=True, top_k=2, top_p=1.0, temperature=5.0, repetition_penalty=1.0)
    assert {sample_next(logits, g, []) for _ in range(50)} <= {0, 1}
    msgs = prompts()[0]
    s = [ask(engine, msgs, GenerationConfig(max_new_tokens=8, seed=seed)) for seed in (7, 7, 8)]
    assert s[0].text == s[1].text and s[0].text != s[2].text


def test_bad_generation_settings_are_rejected(engine):
    with pytest.raises(ValueError, match="top_p"):
        ask(engine, prompts()[1], GenerationConfig(top_p=0))
    with pytest.raises(ValueError, match="max_new_tokens"):
        ask(engine, prompts()[1], GenerationConfig(max_new_tokens=0))
    with pytest.raises(ValueError, match="end with a user message"):
        engine.build_prompt([Message("user", "a"), Message("assistant", "b")])


# --- context overflow -----------------------------------------------------------------------------
def test_overflow_drops_oldest_turns_keeps_images_and_latest(model):
    eng = ChatEngine(model)
    first = img((90, 90, 250))
    history = [Message("user", "Look at this. " + "word " * 30, images=[first]), Message("assistant", "ok " * 20),
               Message("user", "And more. " + "word " * 30), Message("assistant", "fine " * 20),
               Message("user", "Final question: what is it?")]
    full_len = len(eng.build_prompt(history, GREEDY).ids)
    eng.max_context = full_len - 40 + GREEDY.max_new_tokens
    with pytest.warns(UserWarning, match=r"dropped the oldest 1 turn"):
        p = eng.build_prompt(history, GREEDY)
    assert p.dropped_turns == 1 and len(p.ids) <= eng.max_context - GREEDY.max_new_tokens
    assert p.messages[-1].text == "Final question: what is it?"
    assert p.messages[0].images == [first]  # the image moved to the first kept turn
    assert p.ids.count(IMAGE_TOKEN_ID) == eng.num_image_tokens
    assert p.ids[:10] == eng.build_prompt(history[-1:], GREEDY).ids[:10]  # system message kept
    with pytest.warns(UserWarning):
        r = ask(eng, history)
    assert r.dropped_turns == 1


def test_conversation_after_overflow_matches_from_scratch(model):
    eng = ChatEngine(model)
    conv = Conversation(eng)
    conv.add_image(img((250, 120, 0)))
    conv.ask("First question about it? " + "word " * 20, GREEDY)
    conv.ask("Second question? " + "word " * 20, GREEDY)
    eng.max_context = len(eng.build_prompt(conv.messages + [Message("user", "Third?")], GREEDY).ids) - 20 + 10
    with pytest.warns(UserWarning, match="dropped the oldest"):
        r = conv.ask("Third?", GREEDY)
    assert r.dropped_turns >= 1 and sum(len(m.images) for m in conv.messages) == 1
    eng.max_context = 10_000  # the kept history fits as is: no second drop in the reference run
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ask(eng, conv.messages[:-1]).text == r.text


def test_too_long_prompt_is_a_clear_error(engine):
    msgs = [Message("user", "word " * 3000, images=[img((1, 2, 3))])]
    with pytest.raises(PromptTooLongError, match=r"prompt too long: \d+ tokens .*max_new_tokens"):
        ask(engine, msgs)
    with pytest.raises(PromptTooLongError, match="lower max_new_tokens"):
        ask(engine, prompts()[1], GenerationConfig(max_new_tokens=5000))


# --- templates ------------------------------------------------------------------------------------
def test_hf_template_matches_jinja_and_keeps_prefix_property(model):
    tok = model.tokenizer
    tpl = template_from_tokenizer(tok)
    conv = [Message("user", "Hi there"), Message("assistant", "Hello! How can I help?"),
            Message("user", "What is 2+2?")]
    jinja = tok.apply_chat_template([{"role": "system", "content": tpl.system}] +
                                    [{"role": m.role, "content": m.text} for m in conv],
                                    tokenize=False, add_generation_prompt=True)
    assert tpl.render(conv) == jinja
    short, _ = encode_conversation(tok, tpl, conv[:1], 8)
    longer, _ = encode_conversation(tok, tpl, conv, 8)
    assert longer[: len(short)] == short
    eng = ChatEngine(model, template="hf")
    assert eng.end_symbol == "<|im_end|>"
    with pytest.raises(ValueError, match="unknown template"):
        get_template("nope")


@pytest.mark.parametrize("name", ["vicuna_v0", "llama2", "chatml"])
def test_templates_work_in_the_engine(model, name):
    eng = ChatEngine(model, template=name)
    assert eng.template is TEMPLATES[name]
    conv = Conversation(eng)
    conv.add_image(img((5, 5, 5)))
    conv.ask("What?", GenerationConfig(max_new_tokens=3, do_sample=False))
    r = conv.ask("Why?", GenerationConfig(max_new_tokens=3, do_sample=False))
    assert r.cached_tokens > 0 and r.completion_tokens <= 3


# --- presets --------------------------------------------------------------------------------------
def test_presets_exist_and_unknown_is_clear():
    assert set(PRESETS) == {"describe", "ask", "alt-text", "recipe", "prompt", "website"}
    with pytest.raises(ValueError, match="unknown task preset 'poem'; choose one of: describe"):
        get_preset("poem")
    with pytest.raises(ValueError, match="needs a question"):
        get_preset("ask").build_prompt(None)
    assert get_preset("ask").build_prompt(" How many? ") == "How many?"
    assert "ingredients" in get_preset("recipe").prompt.lower()


def test_alt_text_is_one_short_sentence():
    long = "An image of " + "a very small red bird sitting on a branch " * 6 + ". Second sentence."
    out = shorten_alt_text(long)
    assert len(out) <= 125 and out.endswith(".") and out.count(".") == 1
    assert out.startswith("A very small red bird")
    assert shorten_alt_text("The image shows a cat on a mat. It is asleep.") == "A cat on a mat."


class _Parser(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)


def _tags(text):
    p = _Parser()
    p.feed(text)
    return p.tags


def test_extract_html_variants():
    doc = extract_html("Sure!\n```html\n<html><body><h1>Hi</h1></body></html>\n```\nEnjoy.")
    assert doc.startswith("<!DOCTYPE html>") and "Enjoy" not in doc and "<h1>Hi</h1>" in doc
    frag = extract_html("<h1>Shop</h1><p>Buy</p>", title="shop")
    assert {"html", "head", "body", "h1", "title"} <= set(_tags(frag))
    plain = extract_html("no markup <at all")
    assert "<p>no markup &lt;at all</p>" in plain


def test_website_preset_writes_a_complete_html_file(engine, tmp_path):
    preset = get_preset("website")
    gen = preset.generation(GenerationConfig(seed=0, repetition_penalty=1.1))
    assert gen.temperature == preset.gen["temperature"] and gen.max_new_tokens == preset.gen["max_new_tokens"]
    # HTML repeats its tags ("nav" is in the CSS before <nav>): a repetition penalty would push them out
    assert gen.repetition_penalty == 1.0
    gen = dataclasses.replace(gen, max_new_tokens=8)  # as CLI flags apply on top of the preset
    res = ask(engine, [Message("user", preset.build_prompt(), images=[img((255, 255, 255))])], gen)
    path = write_website(res.text, tmp_path / "sketch.html")
    text = path.read_text()
    assert {"html", "head", "body"} <= set(_tags(text)) and text.rstrip().endswith("</html>")
    assert not list(tmp_path.glob(".*.tmp"))  # atomic write left no temp file


def test_interrupted_stream_leaves_a_usable_conversation(engine):
    conv = Conversation(engine)
    conv.add_image(img((40, 160, 160)))
    conv.ask("First?", GREEDY)
    stream = conv.stream("Second, long answer please?", GenerationConfig(max_new_tokens=30, do_sample=False,
                                                                        repetition_penalty=1.0))
    next(stream)
    stream.close()  # the user hit stop mid-answer: the turn is not recorded
    assert len(conv.messages) == 2
    r = conv.ask("Third?", GREEDY)
    assert r.cached_tokens > 0
    assert ask(engine, conv.messages[:-1]).text == r.text


def test_echoed_prompt_markup_never_reaches_the_answer_streamed_or_final():
    from minigpt4.chat.engine import MARKUP, _streamable, _strip_markup
    answer = "<Img>\n\nA red apple.</Img> Two <ImageHere>pears. a < b"
    shown, pieces = "", []
    for i in range(1, len(answer) + 1):  # grow the raw text one character at a time, like decoding
        visible = _streamable(_strip_markup(answer[:i]), MARKUP)
        assert visible.startswith(shown), (visible, shown)  # streaming never takes text back
        pieces.append(visible[len(shown):])
        shown = visible
    final = _strip_markup(answer).strip()
    assert final == "A red apple. Two pears. a < b"
    assert final.startswith("".join(pieces)) and "<Img" not in "".join(pieces)
