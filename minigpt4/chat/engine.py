"""The chat engine: prompts -> tokens, batched streaming generation, multi-turn KV reuse.

Pieces, in reading order:
  * `Request` / `Result`            - what goes in and what comes out;
  * `ChatEngine.build_prompt()`     - messages -> token ids with image slots, through THE prompt
                                      builder `encode_conversation` (shared with training), with
                                      context-overflow handling that drops the oldest whole turns
                                      but never an image or the latest turn;
  * `ChatEngine._run()`             - one prefill then a plain decode loop over the LLM with a
                                      `DynamicCache`; left padding for batches, each row stops on
                                      its own (EOS, template end symbol, user stop strings);
  * `Conversation`                  - keeps the KV cache and the ids it holds between turns, so a
                                      new turn prefills only the tokens the cache lacks.

Why a hand-written loop instead of `generate`: it is faster here (no per-step processor stack),
lets finished rows leave the batch, and lets a conversation resume from its cache.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from transformers import DynamicCache

from minigpt4.chat.grounding import asks_for_ungrounded, ground_text, stable_prefix
from minigpt4.chat.templates import Message, Template, encode_conversation, get_template
from minigpt4.config import GenerationConfig
from minigpt4.model.minigpt4 import IMAGE_TOKEN_ID

log = logging.getLogger(__name__)

TextCallback = Callable[[int, str], None]


class PromptTooLongError(ValueError):
    """The latest turn, the system message and the images alone do not fit the context."""


@dataclass
class Request:
    messages: list[Message]
    gen: GenerationConfig | None = None  # None -> the model's defaults (model.cfg.generation)
    system: str | None = None            # None -> the engine's system message
    ground: bool = False                 # name only objects the word readout read (minigpt4.chat.grounding)


@dataclass
class Result:
    text: str
    finish_reason: str          # "stop" (end symbol, EOS or stop string) or "length"
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0      # prompt tokens served from a reused KV cache (Conversation)
    dropped_turns: int = 0      # oldest turns dropped because the context overflowed


@dataclass
class _Prompt:
    """A prompt ready for the LLM: ids with IMAGE_TOKEN_ID slots and one embedding per image."""
    ids: list[int]
    images: list[torch.Tensor]            # (num_image_tokens, hidden) each, in slot order
    messages: list[Message]               # the messages actually used (after overflow drops)
    dropped_turns: int = 0
    system: str | None = None             # the system message it was built with
    read: frozenset[str] | None = None    # grounded: the object names its images' readout read


@dataclass
class _RowState:
    gen: GenerationConfig
    generator: torch.Generator | None
    stops: list[str]
    tokens: list[int] = field(default_factory=list)
    raw: str = ""     # decoded generated text (stop string cut off once found)
    text: str = ""    # the final answer
    streamed: str = ""               # the text streamed so far
    finish: str | None = None
    key: Any = None                  # the caller's name for this row (DecodeBatch.step output)
    prompt: _Prompt | None = None
    reuse: int = 0                   # prompt ids that came from a reused cache
    length: int = 0                  # cache columns from this row's first id to the end

    def result(self) -> "Result":
        p = self.prompt
        return Result(text=self.text, finish_reason=self.finish, prompt_tokens=len(p.ids),
                      completion_tokens=len(self.tokens), cached_tokens=self.reuse,
                      dropped_turns=p.dropped_turns)


# --- text helpers -----------------------------------------------------------------------------
def _held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters could still grow into a stop string (must not be streamed)."""
    hold = 0
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), hold, -1):
            if text.endswith(s[:k]):
                hold = k
                break
    return hold


def _find_stop(text: str, stops: Sequence[str]) -> int:
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits) if hits else -1


# Prompt markup the frozen LLM sometimes echoes from the prompt ("<Img>" before an answer): never
# part of an answer, so it is cut out of the text, streamed or final.
MARKUP = ("<Img>", "</Img>", "<ImageHere>", "ImageContent")


def _strip_markup(text: str) -> str:
    for m in MARKUP:
        text = text.replace(m, "")
    return text


def _streamable(text: str, stops: Sequence[str]) -> str:
    """The part of the (unfinished) answer that is safe to show: what the final text will start
    with whatever comes next. Leading whitespace is dropped (the final text is stripped), and a
    possible stop-string start, a partial UTF-8 character and trailing whitespace are held back."""
    text = text.lstrip()
    text = text[: len(text) - _held_back(text, stops)]
    return text.rstrip("\ufffd").rstrip()


def validate_generation(gen: GenerationConfig) -> None:
    if gen.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {gen.max_new_tokens}")
    if gen.temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {gen.temperature}")
    if not 0 < gen.top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {gen.top_p}")
    if gen.top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {gen.top_k}")
    if gen.repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0 (1.0 = off), got {gen.repetition_penalty}")


# --- sampling ---------------------------------------------------------------------------------
def sample_next(logits: torch.Tensor, gen: GenerationConfig, previous: Sequence[int],
                generator: torch.Generator | None = None) -> int:
    """One token from a (vocab,) row of logits, in HF's order: repetition penalty, temperature,
    top-k, top-p. The repetition penalty (CTRL style, as HF) covers the tokens generated so far -
    with `inputs_embeds` prompts that is what the original's `generate` call penalised too.
    Greedy when do_sample is False or temperature is 0. The same code as a row of `sample_batch`,
    so a seeded row draws the same token alone or in a batch."""
    return sample_batch(logits[None], [_RowState(gen, generator, [], tokens=list(previous))])[0]


NUCLEUS_CANDIDATES = 256


def sample_batch(logits: torch.Tensor, rows: Sequence[_RowState], inplace: bool = False) -> list[int]:
    """Next token of every row of a (batch, vocab) logits tensor, as tensor ops over the whole
    batch (per-row settings become columns of tensors); the only per-row work is one uniform draw
    from the row's own generator, so a seeded row's tokens do not depend on its batch-mates.
    `inplace`: the penalty may overwrite `logits` (the decode loop owns them; saves a copy)."""
    logits = logits.float()
    pen = [st.gen.repetition_penalty if st.tokens else 1.0 for st in rows]
    if any(p != 1.0 for p in pen):
        width = max(len(st.tokens) for st in rows)
        # pad each row's history with its own first id (or 0): a repeated index gets the same value
        idx = torch.tensor([st.tokens + [st.tokens[0] if st.tokens else 0] * (width - len(st.tokens))
                            for st in rows], device=logits.device)
        p = torch.tensor(pen, device=logits.device, dtype=logits.dtype)[:, None]
        seen = logits.gather(1, idx)
        new = torch.where(seen < 0, seen * p, seen / p)
        logits = logits.scatter_(1, idx, new) if inplace else logits.scatter(1, idx, new)
    out = [0] * len(rows)
    greedy = [b for b, st in enumerate(rows) if not st.gen.do_sample or st.gen.temperature == 0]
    sampled = sorted(set(range(len(rows))) - set(greedy))
    if greedy:
        # max().indices, not argmax(): same first-maximum rule, about 3x faster on CPU for wide rows
        sub = logits if len(greedy) == len(rows) else logits[greedy]
        for b, tok in zip(greedy, sub.max(-1).indices.tolist()):
            out[b] = tok
    if sampled:
        sub = logits if len(sampled) == len(rows) else logits[sampled]
        for b, tok in zip(sampled, _sample_rows(sub, [rows[b] for b in sampled])):
            out[b] = tok
    return out


def _sample_rows(logits: torch.Tensor, rows: Sequence[_RowState]) -> list[int]:
    """Temperature, top-k, top-p and a draw for every row of (S, vocab) logits at once.

    The draw is inverse-CDF sampling with one uniform number from each row's generator. Rows with
    top-k or top-p work on one shared `topk` of the batch (k = the largest any row needs); top-p
    without top-k uses the 256 most likely tokens when they already hold top_p of the mass (exact,
    and much cheaper than sorting a 50k vocabulary every step), else that row's full sort."""
    dev, S, V = logits.device, logits.shape[0], logits.shape[1]
    gens = [st.gen for st in rows]
    u = torch.stack([torch.rand((), generator=st.generator) for st in rows]).to(dev)
    temps = [g.temperature for g in gens]
    if any(t != 1.0 for t in temps):
        logits = logits / torch.tensor(temps, device=dev, dtype=logits.dtype)[:, None]
    out = [0] * S
    plain = [b for b, g in enumerate(gens) if g.top_k == 0 and g.top_p >= 1.0]
    if plain:
        sub = logits if len(plain) == S else logits[plain]
        cdf = sub.softmax(-1).cumsum(-1)
        picks = _draw(cdf, u[plain])
        for b, tok in zip(plain, picks.tolist()):
            out[b] = tok
    rest = sorted(set(range(S)) - set(plain))
    if rest:
        sub = logits if len(rest) == S else logits[rest]
        for b, tok in zip(rest, _filtered(sub, [gens[b] for b in rest], u[rest])):
            out[b] = tok
    return out


def _filtered(logits: torch.Tensor, gens: Sequence[GenerationConfig], u: torch.Tensor,
              full: bool = False) -> list[int]:
    """Top-k / top-p rows (see `_sample_rows`); `full`: candidates are the whole sorted vocabulary."""
    dev, S, V = logits.device, logits.shape[0], logits.shape[1]
    K = V if full else min(V, max(g.top_k or NUCLEUS_CANDIDATES for g in gens))
    vals, idx = _topk(logits, K) if K < V else torch.sort(logits, descending=True)
    if any(0 < g.top_k < K for g in gens):
        ks = torch.tensor([min(g.top_k or K, K) for g in gens], device=dev)
        vals = vals.masked_fill(torch.arange(K, device=dev)[None] >= ks[:, None], float("-inf"))
    top_p = torch.tensor([g.top_p for g in gens], device=dev, dtype=vals.dtype)[:, None]
    if bool((top_p < 1.0).any()):
        renorm = vals.softmax(-1)  # top-p over the renormalised top-k distribution (as HF)
        whole = torch.tensor([g.top_k == 0 for g in gens], device=dev)[:, None]
        if bool(whole.any()):
            # rows without top-k: mass relative to the whole vocabulary
            probs = torch.where(whole, (vals - torch.logsumexp(logits, -1, keepdim=True)).exp(), renorm)
            if not full and K < V:
                short = [b for b in range(S) if gens[b].top_k == 0 and gens[b].top_p < 1.0
                         and float(probs[b].sum()) < gens[b].top_p]
                if short:  # the candidates hold too little mass: these rows need the full sort
                    redo = _filtered(logits[short], [gens[b] for b in short], u[short], full=True)
                    keep_rows = sorted(set(range(S)) - set(short))
                    out = [0] * S
                    for b, tok in zip(short, redo):
                        out[b] = tok
                    if keep_rows:
                        for b, tok in zip(keep_rows, _filtered(logits[keep_rows], [gens[b] for b in keep_rows],
                                                               u[keep_rows])):
                            out[b] = tok
                    return out
        else:
            probs = renorm
        # keep the smallest set whose mass reaches top_p (the top token always stays)
        vals = vals.masked_fill(probs.cumsum(-1) - probs > top_p, float("-inf"))
    cdf = vals.softmax(-1).cumsum(-1)
    return idx.gather(1, _draw(cdf, u)[:, None])[:, 0].tolist()


def _topk(x: torch.Tensor, k: int, block: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """`torch.topk(x, k)` of (rows, vocab) via block maxima, ~2x faster for a small k over a 50k
    vocabulary: the k largest values lie in the k blocks with the largest maxima (a block holding
    one of them has a maximum >= the k-th value, and at most k blocks do), so one top-k over the
    block maxima and one over those k blocks replace the top-k over the whole row."""
    S, V = x.shape
    if 4 * k * block > V:
        return torch.topk(x, k)
    nb = -(-V // block)
    if V % block:
        x = torch.cat([x, x.new_full((S, nb * block - V), float("-inf"))], 1)
    blocks = x.view(S, nb, block)
    top_blocks = blocks.amax(-1).topk(k).indices
    cand = blocks.gather(1, top_blocks[:, :, None].expand(S, k, block)).reshape(S, k * block)
    vals, j = cand.topk(k)
    return vals, top_blocks.gather(1, torch.div(j, block, rounding_mode="floor")) * block + j % block


def _draw(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF pick per row: the first index whose cumulative mass exceeds u * total
    (a zero-probability entry never qualifies: its cdf equals its predecessor's)."""
    v = (u[:, None] * cdf[:, -1:]).contiguous()
    return torch.searchsorted(cdf, v, right=True)[:, 0].clamp_(max=cdf.shape[1] - 1)


# --- the engine -------------------------------------------------------------------------------
class ChatEngine:
    """Chat with a `MiniGPT4` model. `template`: a name from TEMPLATES, "hf" (the tokenizer's own
    chat template) or a Template; `system`: the system message. Both default to model.cfg."""

    def __init__(self, model, template: str | Template | None = None, system: str | None = None):
        self.model = model
        self.tokenizer = model.tokenizer
        cfg = model.cfg
        if isinstance(template, Template):
            self.template = template
        else:
            self.template = get_template(template or cfg.template, tokenizer=self.tokenizer)
        if system is not None:
            self.system = system
        elif cfg.system is not None:
            self.system = cfg.system
        else:
            self.system = self.template.system
        self.default_gen = cfg.generation
        self.num_image_tokens = cfg.num_image_tokens
        max_pos = getattr(model.llm.config, "max_position_embeddings", None) or cfg.max_context
        self.max_context = min(cfg.max_context, max_pos)
        # The template's end symbol stops generation: "###" for vicuna_v0, "<|im_end|>" for chatml.
        self.end_symbol = self.template.end.strip() or self.template.end
        self.eos_ids = self._eos_ids()
        self._lock = threading.RLock()  # one generation at a time: the model is shared state
        self._prefix_kv: dict[tuple, list] = {}  # (shared prompt start, weights) -> per-layer (keys, values)
        self._system_cache: dict[str, list[int]] = {}

    def _eos_ids(self) -> set[int]:
        ids = set()
        eos = self.tokenizer.eos_token_id
        if eos is not None:
            ids.add(eos)
        gen_cfg = getattr(self.model.llm, "generation_config", None)
        extra = getattr(gen_cfg, "eos_token_id", None)
        if isinstance(extra, int):
            ids.add(extra)
        elif extra:
            ids.update(extra)
        return ids

    @property
    def device(self) -> torch.device:
        return self.model.device

    # --- images -------------------------------------------------------------------------------
    def encode_images(self, images: Sequence[Any]) -> list[torch.Tensor]:
        """Image embeddings (num_image_tokens, hidden) for each image. Ready tensors pass through;
        everything else goes through the model's content-hash cached encoder in one batch."""
        out: list[torch.Tensor | None] = [None] * len(images)
        todo = []
        for i, im in enumerate(images):
            if isinstance(im, torch.Tensor):
                emb = im[0] if im.dim() == 3 and im.shape[0] == 1 else im
                if emb.dim() != 2 or emb.shape[0] != self.num_image_tokens:
                    raise ValueError(f"image embedding has shape {tuple(im.shape)}; expected "
                                     f"({self.num_image_tokens}, hidden) as made by encode_images")
                out[i] = emb
            else:
                todo.append(i)
        if todo:
            embs = self.model.encode_images([images[i] for i in todo])
            for i, emb in zip(todo, embs):
                out[i] = emb
        return out  # type: ignore[return-value]

    # --- prompt -------------------------------------------------------------------------------
    def _gen(self, gen: GenerationConfig | None) -> GenerationConfig:
        gen = gen or self.default_gen
        validate_generation(gen)
        return gen

    def prompt_budget(self, gen: GenerationConfig) -> int:
        budget = self.max_context - gen.max_new_tokens
        if budget < 1:
            raise PromptTooLongError(
                f"max_new_tokens={gen.max_new_tokens} leaves no room for the prompt in a context of "
                f"{self.max_context} tokens; lower max_new_tokens")
        return budget

    def build_prompt(self, messages: Sequence[Message], gen: GenerationConfig | None = None,
                     system: str | None = None, ground: bool = False) -> _Prompt:
        """Token ids for `messages` (ending with a user message), fitted to the context.

        Overflow drops the oldest whole turns, keeping the system message, the latest turn and every
        image (images of dropped turns move to the first kept user message), with a warning. If
        that still does not fit, PromptTooLongError names the token counts and the fix."""
        gen = self._gen(gen)
        system = self.system if system is None else system
        messages = list(messages)
        if not messages or messages[-1].role != "user":
            raise ValueError("the conversation must end with a user message (the one to answer)")
        budget = self.prompt_budget(gen)
        turns = _split_turns(messages)
        for drop in range(len(turns)):
            kept = _drop_turns(turns, drop)
            ids, _ = encode_conversation(self.tokenizer, self.template, kept, self.num_image_tokens,
                                         system=system)
            if len(ids) <= budget:
                break
        else:
            raise PromptTooLongError(self._too_long_message(kept, ids, budget, gen, system))
        if drop:
            msg = (f"conversation is longer than the context ({self.max_context} tokens incl. "
                   f"max_new_tokens={gen.max_new_tokens}): dropped the oldest {drop} turn(s); the "
                   f"system message, all images and the latest turn are kept")
            warnings.warn(msg, stacklevel=3)
            log.warning(msg)
        images = [im for m in kept for im in m.images]
        embeds = self.encode_images(images)
        ground = ground and not asks_for_ungrounded(kept[-1].text)
        read = self.read_names(images) if ground else None
        return _Prompt(ids=ids, images=embeds, messages=kept, dropped_turns=drop, system=system, read=read)

    def read_names(self, images: Sequence[Any]) -> frozenset[str]:
        """Every object name the word readout reads in `images` (grounded answers may name these)."""
        if any(isinstance(im, torch.Tensor) for im in images):
            raise ValueError("a grounded answer checks its object names against the image's readout: give the image "
                             "itself, not its embedding (or do not ask for grounding)")
        return frozenset().union(*self.model.read_names(images)) if images else frozenset()

    @functools.cached_property
    def ground_vocab(self) -> frozenset[str]:
        """The names grounding checks: the readout's words but its unknown one (built once, read every token)."""
        cfg = self.model.cfg
        return frozenset(w for w in cfg.proj_words if w != cfg.word_unknown)

    def _too_long_message(self, kept, ids, budget, gen, system) -> str:
        n_img = sum(len(m.images) for m in kept)
        sys_ids, _ = encode_conversation(self.tokenizer, self.template, [], self.num_image_tokens, system=system)
        img_tok = n_img * self.num_image_tokens
        text_tok = len(ids) - len(sys_ids) - img_tok
        return (f"prompt too long: {len(ids)} tokens (system {len(sys_ids)}, {n_img} image(s) x "
                f"{self.num_image_tokens} = {img_tok}, latest message {text_tok}) but only {budget} fit "
                f"(max_context {self.max_context} - max_new_tokens {gen.max_new_tokens}); shorten the "
                f"message, send fewer images or lower max_new_tokens")

    # --- public generation API -----------------------------------------------------------------
    def generate(self, requests: Sequence[Request], on_text: TextCallback | None = None) -> list[Result]:
        """Answer a batch of requests together (left-padded); `on_text(i, delta)` streams request i."""
        requests = list(requests)
        if not requests:
            return []
        gens = [self._gen(r.gen) for r in requests]
        with self._lock:  # prompts too: image encoding uses the model and its cache
            prompts = [self.build_prompt(r.messages, g, r.system, r.ground) for r, g in zip(requests, gens)]
            runner = self._run(prompts, gens)
            try:
                while True:
                    i, delta = next(runner)
                    if on_text is not None:
                        on_text(i, delta)
            except StopIteration as done:
                results, _ = done.value
        return results

    def stream(self, request: Request) -> Iterator[str]:
        """Yield the answer to one request as text deltas; the generator returns the Result."""
        gen = self._gen(request.gen)
        with self._lock:
            prompt = self.build_prompt(request.messages, gen, request.system, request.ground)
            runner = self._run([prompt], [gen])
            try:
                while True:
                    yield next(runner)[1]
            except StopIteration as done:
                results, _ = done.value
        return results[0]

    # --- the decode loop ----------------------------------------------------------------------
    def _run(self, prompts: list[_Prompt], gens: list[GenerationConfig], cache: DynamicCache | None = None,
             reuse: int = 0):
        """Generator: yields (row, text delta); returns (results, (cache, ids in cache)).

        `cache`/`reuse`: a single-row cache that already holds prompts[0].ids[:reuse] (Conversation).
        Finished rows leave the batch (their cache rows are dropped), so a long answer in one row
        does not make the others pay, and every row stops on its own."""
        B = len(prompts)
        if reuse and B != 1:
            raise ValueError("KV-cache reuse is for single conversations (batch of 1)")
        batch = DecodeBatch(self)
        rows = batch.add(prompts, gens, keys=list(range(B)), cache=cache, reuse=reuse)
        while batch:
            yield from batch.step()
        results = [st.result() for st in rows]
        # What the cache holds (single row): the prompt and the generated tokens fed back (all
        # but a final sampled one that ended the answer; an EOS is never in `tokens`).
        held = (prompts[0].ids + rows[0].tokens)[: batch.cache.get_seq_length()] if B == 1 else []
        return results, (batch.cache, held)

    def _advance(self, st: _RowState, tok: int) -> str:
        """Add a token to a row and update its finish state; return the newly streamable text.
        Stop strings are matched on the decoded text (a stop may span tokens) and cut off."""
        if tok in self.eos_ids:
            st.finish = "stop"
        else:
            st.tokens.append(tok)
            st.raw = self.tokenizer.decode(st.tokens, skip_special_tokens=False,
                                           clean_up_tokenization_spaces=False)
            cut = _find_stop(st.raw, st.stops)
            if cut >= 0:
                st.finish, st.raw = "stop", st.raw[:cut]
            elif len(st.tokens) >= st.gen.max_new_tokens:
                st.finish = "length"
        shown = _strip_markup(st.raw)
        read = st.prompt.read if st.prompt is not None else None
        if st.finish is None:
            visible = _streamable(shown, (*st.stops, *MARKUP))
            if read is not None:  # a name is rewritten once it is whole: hold back the words that may still change
                visible = stable_prefix(ground_text(visible, read, self.ground_vocab))
        else:
            visible = st.text = shown.rstrip("\ufffd").strip()
            if read is not None:
                visible = st.text = ground_text(visible, read, self.ground_vocab)
        if read is not None and not visible.startswith(st.streamed):  # never stream a change to what was shown
            return ""
        delta = visible[len(st.streamed):]
        st.streamed = visible if len(visible) > len(st.streamed) else st.streamed
        return delta

    PREFIX_MIN = 8       # shorter shared prefixes are not worth a cache entry
    PREFIX_ENTRIES = 8   # system messages whose KV is kept

    def _prefix_into(self, cache: DynamicCache, prompts: Sequence[_Prompt]) -> int:
        """Fill an empty `cache` with the KV of the ids all `prompts` start with up to the end of
        their system message (never an image slot), repeated for every row; returns how many ids
        that is (0: none worth it). Exact: a token's keys and values depend only on the tokens
        before it, so the KV computed once for the prefix alone is the KV of every such prompt."""
        system = self._system_ids(prompts[0].system)
        n = min(len(system), min(len(p.ids) for p in prompts) - 1)  # >= 1 id left to prefill
        for p in prompts:
            k = 0
            while k < n and p.ids[k] == system[k] and p.ids[k] != IMAGE_TOKEN_ID:
                k += 1
            n = k
        if n < self.PREFIX_MIN:
            return 0
        # the weights' identity and in-place version too: a fine-tuned or edited model gets fresh KV
        key = (tuple(system[:n]), hash(tuple((id(w), w._version) for w in self.model.llm.parameters())))
        kv = self._prefix_kv.pop(key, None)
        if kv is None:
            pre = DynamicCache()
            with torch.inference_mode():
                ids = torch.tensor([system[:n]], dtype=torch.long, device=self.device)
                self.model.llm(inputs_embeds=self.model.embed(ids, None), cache=pre, use_cache=True,
                               logits_to_keep=1)
            kv = [(layer.keys, layer.values) for layer in pre.layers]
            while len(self._prefix_kv) >= self.PREFIX_ENTRIES:
                self._prefix_kv.pop(next(iter(self._prefix_kv)))
        self._prefix_kv[key] = kv  # most recently used last
        B = len(prompts)
        for i, (k, v) in enumerate(kv):
            cache.update(k.expand(B, -1, -1, -1), v.expand(B, -1, -1, -1), i)
        return n

    def _system_ids(self, system: str | None) -> list[int]:
        system = self.system if system is None else system
        ids = self._system_cache.get(system)
        if ids is None:
            ids, _ = encode_conversation(self.tokenizer, self.template, [], self.num_image_tokens, system=system)
            if len(self._system_cache) > 64:
                self._system_cache.clear()
            self._system_cache[system] = ids
        return ids

    def _images_in_cache(self, prompt: _Prompt, reuse: int) -> int:
        """How many of the prompt's images lie wholly inside its first `reuse` ids."""
        return sum(1 for s in _image_starts(prompt.ids, self.num_image_tokens) if s + self.num_image_tokens <= reuse)


# --- continuous batching ------------------------------------------------------------------------
class DecodeBatch:
    """Rows that decode together, one token per `step()`. Rows may join between steps: their
    prompts are prefilled together (left-padded) into a fresh cache, which is then left-padded to
    the running cache's length (or the other way round) and concatenated along the batch axis.
    Every row has its own attention mask and position ids, so padding never changes a row's
    result: a request that joins a running batch gets what it would get alone. Finished rows
    leave at once, and mask columns no row needs any more are cut from the left, so the cache
    stays as long as the longest live row, not as long as the batch has been running.

    Invariant between calls: every live row has the logits for its next token (`self.logits`).
    Not thread-safe: one thread drives a batch (the engine lock guards the model itself)."""

    def __init__(self, engine: "ChatEngine"):
        self.engine = engine
        self.rows: list[_RowState] = []      # live rows, in cache order
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None      # (rows, T) 1 = a real token
        self.next_pos: torch.Tensor | None = None  # (rows,) position id of each row's next token
        self.logits: torch.Tensor | None = None    # (rows, vocab)

    def __len__(self) -> int:
        return len(self.rows)

    @torch.inference_mode()
    def add(self, prompts: Sequence[_Prompt], gens: Sequence[GenerationConfig], keys: Sequence[Any],
            cache: DynamicCache | None = None, reuse: int = 0) -> list[_RowState]:
        """Prefill `prompts` and make them live rows; `keys[i]` names row i in `step()`'s output.
        `cache`/`reuse` (an empty batch and one prompt only): a cache already holding
        prompts[0].ids[:reuse] (Conversation)."""
        eng = self.engine
        llm, dev = eng.model.llm, eng.device
        B = len(prompts)
        if reuse and (B != 1 or self.rows):
            raise ValueError("KV-cache reuse is for single conversations (batch of 1)")
        # `shared` leading ids come from a cache: the conversation's own, or the KV of the prompt
        # start every request shares (system message), computed once per engine. Rows of other
        # lengths then hold padding between that prefix and their own ids; the mask covers it.
        shared = reuse
        with eng._lock:
            if cache is None:
                cache = DynamicCache()
                shared = eng._prefix_into(cache, prompts)
        new = [p.ids[shared:] for p in prompts]
        width = max(len(n) for n in new)
        pad = eng.tokenizer.pad_token_id or 0
        ids = torch.full((B, width), pad, dtype=torch.long)
        mask = torch.zeros((B, shared + width), dtype=torch.long)
        mask[:, :shared] = 1
        for b, n in enumerate(new):
            ids[b, width - len(n):] = torch.tensor(n, dtype=torch.long)
            mask[b, shared + width - len(n):] = 1
        skipped = eng._images_in_cache(prompts[0], reuse) if reuse else 0
        images = [im for b, p in enumerate(prompts) for im in (p.images[skipped:] if b == 0 else p.images)]
        with eng._lock:
            image_embeds = torch.stack(images).to(dev) if images else None
            embeds = eng.model.embed(ids.to(dev), image_embeds)
            mask = mask.to(dev)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            out = llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions[:, shared:],
                      cache=cache, use_cache=True, logits_to_keep=1)
        logits, next_pos = out.logits[:, -1], positions[:, -1] + 1
        rows = [_RowState(g, _generator(g.seed), [eng.end_symbol, *g.stop], key=k, prompt=p, reuse=reuse,
                          length=shared + width if shared > reuse else len(p.ids))
                for p, g, k in zip(prompts, gens, keys)]
        if not self.rows:
            self.cache, self.mask, self.next_pos, self.logits = cache, mask, next_pos, logits
        else:
            T = max(self.mask.shape[1], mask.shape[1])
            for old, fresh in zip(self.cache.layers, cache.layers):
                old.keys = torch.cat([_pad_left(old.keys, T, 2), _pad_left(fresh.keys, T, 2)])
                old.values = torch.cat([_pad_left(old.values, T, 2), _pad_left(fresh.values, T, 2)])
            self.mask = torch.cat([_pad_left(self.mask, T, 1), _pad_left(mask, T, 1)])
            self.next_pos = torch.cat([self.next_pos, next_pos])
            self.logits = torch.cat([self.logits, logits])
        self.rows += rows
        return rows

    @torch.inference_mode()
    def step(self) -> list[tuple[Any, str]]:
        """Pick every live row's next token, drop finished rows, run the model one position for the
        rest. Returns the (key, text delta) pairs of this step; finished rows' `finish` is set."""
        eng = self.engine
        rows = self.rows
        tokens = sample_batch(self.logits, rows, inplace=True)
        deltas = []
        for st, tok in zip(rows, tokens):
            delta = eng._advance(st, tok)
            if delta:
                deltas.append((st.key, delta))
        keep = [b for b, st in enumerate(rows) if st.finish is None]
        self._select(keep)  # a batch that just emptied keeps its cache (Conversation reads it)
        if self.rows:
            tokens = [tokens[b] for b in keep]
            self.mask = torch.cat([self.mask, self.mask.new_ones((len(self.rows), 1))], dim=1)
            step_ids = torch.tensor(tokens, dtype=torch.long, device=eng.device)[:, None]
            with eng._lock:
                out = eng.model.llm(input_ids=step_ids, attention_mask=self.mask,
                                    position_ids=self.next_pos[:, None], cache=self.cache, use_cache=True,
                                    logits_to_keep=1)
            self.logits = out.logits[:, -1]
            self.next_pos = self.next_pos + 1
            for st in self.rows:
                st.length += 1
        return deltas

    def drop(self, keys) -> None:
        """Remove live rows by key (their client left); they get no result."""
        keys = set(keys)
        self._select([b for b, st in enumerate(self.rows) if st.key not in keys])

    def _select(self, keep: list[int]) -> None:
        if len(keep) == len(self.rows):
            return
        self.rows = [self.rows[b] for b in keep]
        if not keep:
            self.logits = self.mask = self.next_pos = None
            return
        sel = torch.tensor(keep, device=self.engine.device)
        self.cache.batch_select_indices(sel)
        self.mask, self.next_pos, self.logits = self.mask[sel], self.next_pos[sel], self.logits[sel]
        # Each row's ids lie in its last `length` columns: cut the columns no live row reaches.
        cut = self.mask.shape[1] - max(st.length for st in self.rows)
        if cut > 0:
            self.mask = self.mask[:, cut:]
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, cut:], layer.values[:, :, cut:]


def _pad_left(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    extra = width - x.shape[dim]
    if extra <= 0:
        return x
    shape = list(x.shape)
    shape[dim] = extra
    return torch.cat([x.new_zeros(shape), x], dim=dim)


# --- conversations ---------------------------------------------------------------------------
class Conversation:
    """A multi-turn chat that keeps its KV cache between turns: turn 2 prefills only what the cache
    lacks (the end of the last answer plus the new question), and images are encoded once, when
    added. Falls back to a longer prefill by itself when the history changed (e.g. overflow)."""

    def __init__(self, engine: ChatEngine, system: str | None = None, ground: bool = False):
        self.engine = engine
        self.system = system
        self.ground = ground  # answers name only objects the readout read in the conversation's images
        self.reset()

    def reset(self) -> None:
        self.messages: list[Message] = []
        self._pending: list[torch.Tensor] = []
        self._cache: DynamicCache | None = None
        self._cached_ids: list[int] = []
        self._cached_images: list[torch.Tensor] = []
        self._read: frozenset[str] = frozenset()  # grounded: names read in every image so far

    def add_image(self, image) -> None:
        """Attach an image (path, bytes, PIL or embedding) to the next question; encoded now."""
        emb = self.engine.encode_images([image])[0]
        if self.ground:
            self._read |= self.engine.read_names([image])
        self._pending.append(emb)

    def ask(self, text: str, gen: GenerationConfig | None = None, on_text: Callable[[str], None] | None = None) -> Result:
        res = None
        for delta in self._ask(text, gen):
            if isinstance(delta, Result):
                res = delta
            elif on_text is not None:
                on_text(delta)
        return res

    def stream(self, text: str, gen: GenerationConfig | None = None) -> Iterator[str]:
        """Yield the answer as text deltas; `self.last` holds the Result afterwards."""
        for item in self._ask(text, gen):
            if not isinstance(item, Result):
                yield item

    def _ask(self, text: str, gen: GenerationConfig | None):
        eng = self.engine
        gen = eng._gen(gen)
        question = Message("user", text, images=list(self._pending))
        with eng._lock:
            prompt = eng.build_prompt(self.messages + [question], gen, self.system)
            if self.ground and not asks_for_ungrounded(text):
                prompt.read = self._read
            reuse = self._reusable(prompt)
            cache = self._cache if reuse else None
            if cache is not None:
                _crop(cache, reuse)
            # If this turn is interrupted, the cache is only known to hold the reused prefix.
            self._cached_ids = prompt.ids[:reuse]
            self._cached_images = list(prompt.images[: eng._images_in_cache(prompt, reuse)])
            runner = eng._run([prompt], [gen], cache=cache, reuse=reuse)
            try:
                while True:
                    yield next(runner)[1]
            except StopIteration as done:
                results, (cache, held) = done.value
        res = results[0]
        self._pending = []
        self.messages = prompt.messages + [Message("assistant", res.text)]
        self._cache, self._cached_ids, self._cached_images = cache, held, list(prompt.images)
        self.last = res
        yield res

    def _reusable(self, prompt: _Prompt) -> int:
        """Length of the cached prefix that is valid for this prompt: the longest common id prefix,
        cut back to before any image whose slots it splits or whose embedding differs, and at least
        one token short of the prompt (the prefill must produce logits)."""
        if self._cache is None:
            return 0
        ids, old = prompt.ids, self._cached_ids
        n = 0
        limit = min(len(ids) - 1, len(old))
        while n < limit and ids[n] == old[n]:
            n += 1
        T = self.engine.num_image_tokens
        for j, s in enumerate(_image_starts(ids, T)):
            if s >= n:
                break
            same = j < len(self._cached_images) and self._cached_images[j] is prompt.images[j]
            if s + T > n or not same:
                n = s
                break
        return n


# --- small helpers ---------------------------------------------------------------------------
def _generator(seed: int | None) -> torch.Generator | None:
    return torch.Generator().manual_seed(seed) if seed is not None else None


def _crop(cache: DynamicCache, keep: int) -> None:
    extra = cache.get_seq_length() - keep
    if extra > 0:
        cache.crop(-extra)


def _image_starts(ids: Sequence[int], per_image: int) -> list[int]:
    """Start index of each image's run of slots (runs may touch: count per_image at a time)."""
    starts, i = [], 0
    while i < len(ids):
        if ids[i] == IMAGE_TOKEN_ID:
            starts.append(i)
            i += per_image
        else:
            i += 1
    return starts


def _split_turns(messages: list[Message]) -> list[list[Message]]:
    """Turns = a user message and the answers after it (leading assistant messages join turn 1)."""
    turns: list[list[Message]] = []
    for m in messages:
        if m.role == "user" or not turns:
            turns.append([m])
        else:
            turns[-1].append(m)
    return turns


def _drop_turns(turns: list[list[Message]], drop: int) -> list[Message]:
    """Messages without the oldest `drop` turns; their images move to the first kept user message."""
    kept = [m for t in turns[drop:] for m in t]
    moved = [im for t in turns[:drop] for m in t for im in m.images]
    if moved:
        first = next(i for i, m in enumerate(kept) if m.role == "user")
        m = kept[first]
        kept[first] = dataclasses.replace(m, images=moved + list(m.images))
    return kept
