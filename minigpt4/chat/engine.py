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
import logging
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
from transformers import DynamicCache

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


@dataclass
class _RowState:
    gen: GenerationConfig
    generator: torch.Generator | None
    stops: list[str]
    tokens: list[int] = field(default_factory=list)
    raw: str = ""     # decoded generated text (stop string cut off once found)
    text: str = ""    # the final answer
    emitted: int = 0
    finish: str | None = None


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
    Greedy when do_sample is False or temperature is 0.

    Top-p works on the 256 most likely tokens when they already hold top_p of the mass (exact,
    and much cheaper than sorting a 50k vocabulary every step); otherwise on the full sort."""
    logits = logits.float()
    if gen.repetition_penalty != 1.0 and previous:
        idx = torch.tensor(sorted(set(previous)), device=logits.device)
        seen = logits[idx]
        logits = logits.clone()
        logits[idx] = torch.where(seen < 0, seen * gen.repetition_penalty, seen / gen.repetition_penalty)
    if not gen.do_sample or gen.temperature == 0:
        return int(logits.argmax())
    if gen.temperature != 1.0:
        logits = logits / gen.temperature
    vocab = logits.numel()
    if gen.top_k == 0 and gen.top_p >= 1.0:
        return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))
    vals, idx = torch.topk(logits, min(gen.top_k or NUCLEUS_CANDIDATES, vocab))
    if gen.top_p < 1.0:
        if gen.top_k:
            probs = vals.softmax(-1)  # top-p over the renormalised top-k distribution (as HF)
        else:
            probs = (vals - torch.logsumexp(logits, -1)).exp()
            if float(probs.sum()) < gen.top_p and len(vals) < vocab:
                vals, idx = torch.sort(logits, descending=True)
                probs = vals.softmax(-1)
        # keep the smallest set whose mass reaches top_p (the top token always stays)
        keep = probs.cumsum(-1) - probs <= gen.top_p
        vals, idx = vals[keep], idx[keep]
    choice = torch.multinomial(vals.softmax(-1), 1, generator=generator)
    return int(idx[choice])


NUCLEUS_CANDIDATES = 256


def sample_batch(logits: torch.Tensor, rows: Sequence[_RowState]) -> list[int]:
    """Next token of every row of a (batch, vocab) logits tensor. The repetition penalty and greedy
    picks are done for all rows at once (one gather/scatter, one argmax); only sampling rows go
    through `sample_next` one by one."""
    logits = logits.float()
    pen = [st.gen.repetition_penalty if st.tokens else 1.0 for st in rows]
    if any(p != 1.0 for p in pen):
        width = max(len(st.tokens) for st in rows)
        # pad each row's history with its own first id (or 0): a repeated index gets the same value
        idx = torch.tensor([st.tokens + [st.tokens[0] if st.tokens else 0] * (width - len(st.tokens))
                            for st in rows], device=logits.device)
        p = torch.tensor(pen, device=logits.device, dtype=logits.dtype)[:, None]
        seen = logits.gather(1, idx)
        logits = logits.scatter(1, idx, torch.where(seen < 0, seen * p, seen / p))
    greedy = logits.argmax(-1).tolist()
    out = []
    for b, st in enumerate(rows):
        g = st.gen
        if not g.do_sample or g.temperature == 0:
            out.append(greedy[b])
        else:
            out.append(sample_next(logits[b], dataclasses.replace(g, repetition_penalty=1.0), (), st.generator))
    return out


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
                     system: str | None = None) -> _Prompt:
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
        return _Prompt(ids=ids, images=embeds, messages=kept, dropped_turns=drop)

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
            prompts = [self.build_prompt(r.messages, g, r.system) for r, g in zip(requests, gens)]
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
            prompt = self.build_prompt(request.messages, gen, request.system)
            runner = self._run([prompt], [gen])
            try:
                while True:
                    yield next(runner)[1]
            except StopIteration as done:
                results, _ = done.value
        return results[0]

    # --- the decode loop ----------------------------------------------------------------------
    @torch.inference_mode()
    def _run(self, prompts: list[_Prompt], gens: list[GenerationConfig], cache: DynamicCache | None = None,
             reuse: int = 0):
        """Generator: yields (row, text delta); returns (results, (cache, ids in cache)).

        `cache`/`reuse`: a single-row cache that already holds prompts[0].ids[:reuse] (Conversation).
        Finished rows leave the batch (their cache rows are dropped), so a long answer in one row
        does not make the others pay, and every row stops on its own."""
        llm, dev = self.model.llm, self.device
        B = len(prompts)
        if reuse and B != 1:
            raise ValueError("KV-cache reuse is for single conversations (batch of 1)")
        cache = cache if cache is not None else DynamicCache()
        rows = [_RowState(g, _generator(g.seed), [self.end_symbol, *g.stop]) for g in gens]

        # Prefill: only the ids the cache lacks, left-padded to a rectangle.
        new = [p.ids[reuse:] for p in prompts]
        width = max(len(n) for n in new)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.full((B, width), pad, dtype=torch.long)
        mask = torch.zeros((B, reuse + width), dtype=torch.long)
        mask[:, :reuse] = 1
        for b, n in enumerate(new):
            ids[b, width - len(n):] = torch.tensor(n, dtype=torch.long)
            mask[b, reuse + width - len(n):] = 1
        skipped = self._images_in_cache(prompts[0], reuse) if reuse else 0
        images = [im for b, p in enumerate(prompts) for im in (p.images[skipped:] if b == 0 else p.images)]
        image_embeds = torch.stack(images).to(dev) if images else None
        embeds = self.model.embed(ids.to(dev), image_embeds)
        mask = mask.to(dev)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = llm(inputs_embeds=embeds, attention_mask=mask, position_ids=positions[:, reuse:],
                  cache=cache, use_cache=True, logits_to_keep=1)
        logits = out.logits[:, -1]
        next_pos = positions[:, -1] + 1
        active = list(range(B))  # batch position -> row index

        while True:
            tokens = sample_batch(logits, [rows[r] for r in active])
            for b, r in enumerate(active):
                st, tok = rows[r], tokens[b]
                delta = self._advance(st, tok)
                if delta:
                    yield r, delta
            keep = [b for b, r in enumerate(active) if rows[r].finish is None]
            if not keep:
                break
            if len(keep) < len(active):
                sel = torch.tensor(keep, device=dev)
                cache.batch_select_indices(sel)
                mask, next_pos = mask[sel], next_pos[sel]
                active = [active[b] for b in keep]
                tokens = [tokens[b] for b in keep]
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            step_ids = torch.tensor(tokens, dtype=torch.long, device=dev)[:, None]
            out = llm(input_ids=step_ids, attention_mask=mask, position_ids=next_pos[:, None],
                      cache=cache, use_cache=True, logits_to_keep=1)
            logits = out.logits[:, -1]
            next_pos = next_pos + 1

        results = []
        for p, st in zip(prompts, rows):
            results.append(Result(text=st.text, finish_reason=st.finish, prompt_tokens=len(p.ids),
                                  completion_tokens=len(st.tokens), cached_tokens=reuse,
                                  dropped_turns=p.dropped_turns))
        # What the cache holds (single row): the prompt and the generated tokens fed back (all
        # but a final sampled one that ended the answer; an EOS is never in `tokens`).
        held = (prompts[0].ids + rows[0].tokens)[: cache.get_seq_length()] if B == 1 else []
        return results, (cache, held)

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
        if st.finish is None:
            visible = _streamable(st.raw, st.stops)
        else:
            visible = st.text = st.raw.rstrip("\ufffd").strip()
        delta = visible[st.emitted:]
        st.emitted = max(st.emitted, len(visible))
        return delta

    def _images_in_cache(self, prompt: _Prompt, reuse: int) -> int:
        """How many of the prompt's images lie wholly inside its first `reuse` ids."""
        return sum(1 for s in _image_starts(prompt.ids, self.num_image_tokens) if s + self.num_image_tokens <= reuse)


# --- conversations ---------------------------------------------------------------------------
class Conversation:
    """A multi-turn chat that keeps its KV cache between turns: turn 2 prefills only what the cache
    lacks (the end of the last answer plus the new question), and images are encoded once, when
    added. Falls back to a longer prefill by itself when the history changed (e.g. overflow)."""

    def __init__(self, engine: ChatEngine, system: str | None = None):
        self.engine = engine
        self.system = system
        self.reset()

    def reset(self) -> None:
        self.messages: list[Message] = []
        self._pending: list[torch.Tensor] = []
        self._cache: DynamicCache | None = None
        self._cached_ids: list[int] = []
        self._cached_images: list[torch.Tensor] = []

    def add_image(self, image) -> None:
        """Attach an image (path, bytes, PIL or embedding) to the next question; encoded now."""
        self._pending.append(self.engine.encode_images([image])[0])

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
