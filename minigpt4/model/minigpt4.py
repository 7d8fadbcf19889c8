"""MiniGPT-4: frozen vision encoder -> frozen Q-Former -> trained projection -> frozen causal LM.

Composition, not inheritance: the LLM is any transformers causal LM held as `self.llm`.
`encode_images()` is its own cacheable step (content-hash LRU cache), and `embed()` splices the
image embeddings into the token embeddings with one vectorized masked write where the prompt
holds image placeholders (`IMAGE_TOKEN_ID`).
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Sequence

import torch
from PIL import Image
from torch import nn

from minigpt4.config import MiniGPT4Config, VisionSideConfig, check_word_name_tokens
from minigpt4.data.image import ImageInput, adapt_pixels, load_image, preprocess
from minigpt4.model.losses import head_cross_entropy
from minigpt4.model.qformer import QFormer
from minigpt4.model.vision import build_vision_encoder

IMAGE_TOKEN_ID = -200  # marks image-embedding slots in input_ids; never a real vocabulary id
IGNORE_INDEX = -100
TRAINABLE_GROUPS = ("proj", "words", "qformer", "vision", "lora")
WORD_LAYOUTS = ("sum", "pair", "append")  # MiniGPT4Config.word_layout


def attribute_head(in_features: int, classes: int, hidden: int = 0) -> nn.Module:
    """An attribute's classifier (MiniGPT4Config.word_attribute_hidden): linear, or one GELU layer of `hidden`."""
    if not hidden:
        return nn.Linear(in_features, classes)
    return nn.Sequential(nn.Linear(in_features, hidden), nn.GELU(), nn.Linear(hidden, classes))


class WordReadout(nn.Module):
    """Each query as a word the LLM already knows: a linear classifier over `words` and "none" (class 0); the query's
    token is the probability-weighted mix of those words' input embeddings (none adds nothing). MiniGPT-4's linear
    projection has to learn directions a frozen LLM reads as names; a small LLM reads almost none of them (session 16:
    1% of names from a fitted linear map, 64% from the names' own embeddings), so this puts the embeddings there.
    `attributes` (name -> word table) give each query more words, each from a classifier of its own, before the name
    (MiniGPT4Config.word_attributes)."""

    def __init__(self, in_features: int, table: torch.Tensor, temperature: float = 0.5,
                 attributes: dict[str, torch.Tensor] | None = None,
                 phrases: dict[str, tuple[torch.Tensor, int]] | None = None, tokens: int = 1,
                 phrase_ends: dict[str, Sequence[int]] | None = None, abstain: float = 0.0,
                 unknown: int | None = None, attribute_hidden: int = 0):
        super().__init__()
        self.classify = nn.Linear(in_features, table.shape[0] + 1)
        self.temperature = temperature
        self.set_abstain(abstain, unknown)
        self.always: frozenset[str] = frozenset()  # attributes with a word on every object (MiniGPT4Config.word_always)
        # `table` (names, name tokens, hidden), rebuilt from the LLM at load (not saved); row 0 is "none", zeros.
        self.register_buffer("table", self.with_none(table), persistent=False)
        attributes = attributes or {}
        self.attributes = nn.ModuleDict({a: attribute_head(in_features, t.shape[0] + 1, attribute_hidden)
                                         for a, t in attributes.items()})
        for a, t in attributes.items():
            self.register_buffer(f"table_{a}", self.with_none(t), persistent=False)
        # Image phrase groups (MiniGPT4Config.image_phrases): name -> (table, slots); each slot's classifier reads all
        # `tokens` word tokens' features side by side (one Linear per group, `slots` classifiers stacked); a table
        # is (phrases, tokens per phrase, hidden), each phrase's token embeddings, zero-padded.
        phrases = phrases or {}
        self.phrases = nn.ModuleDict({g: nn.Linear(tokens * in_features, slots * (t.shape[0] + 1))
                                      for g, (t, slots) in phrases.items()})
        for g, (t, _) in phrases.items():  # row 0: none
            self.register_buffer(f"table_phrase_{g}", self.with_none(t), persistent=False)
        # A group whose slots are a list in order: the classes that end it (none, and phrases such as a footer)
        for g, ends in (phrase_ends or {}).items():
            table = phrases[g][0]  # a real tensor (the LLM's embeddings) also while the model is built on "meta"
            stop = table.new_zeros(table.shape[0] + 1, dtype=torch.float32)
            stop[[0, *ends]] = 1.0
            self.register_buffer(f"stop_phrase_{g}", stop, persistent=False)

    @staticmethod
    def with_none(table: torch.Tensor) -> torch.Tensor:
        """`table` with row 0 for "none": zeros."""
        return torch.cat([table.new_zeros(1, *table.shape[1:]), table])

    @classmethod
    def for_llm(cls, cfg: MiniGPT4Config, llm: nn.Module, tokenizer) -> "WordReadout":
        attributes = {a: word_embeddings(llm, tokenizer, words) for a, words in cfg.word_attributes.items()}
        check_word_name_tokens(cfg.word_name_tokens)
        names = phrase_embeddings(llm, [ids[:cfg.word_name_tokens] for ids in word_token_ids(tokenizer, cfg.proj_words)],
                                  cfg.word_name_tokens)
        cfg.check_word_always()
        readout = cls(cfg.word_features, names, cfg.word_temperature,
                      attributes, {g["name"]: (phrase_embeddings(llm, g["word_ids"]), g["slots"])
                                   for g in cfg.image_phrases}, cfg.num_word_queries,
                      {g["name"]: [g["words"].index(w) + 1 for w in g["ends"]]
                       for g in cfg.image_phrases if g.get("ends")},
                      cfg.word_abstain, unknown_class(cfg), cfg.word_attribute_hidden)
        readout.always = frozenset(cfg.word_always)
        return readout

    def set_abstain(self, abstain: float, unknown: int | None) -> None:
        """Names below probability `abstain` read class `unknown` (MiniGPT4Config.word_abstain)."""
        if not 0.0 <= abstain < 1.0:
            raise ValueError(f"word_abstain is a probability in [0, 1), not {abstain}")
        if abstain and unknown is None:
            raise ValueError("word_abstain turns unsure names into the readout's unknown word, but this readout "
                             "has none: fit it with `minigpt4 fit-words --unknown thing` (word_unknown)")
        self.abstain, self.unknown = abstain, unknown

    def probs(self, features: torch.Tensor, head: nn.Module | None = None) -> torch.Tensor:
        """The name classifier's (or `head`'s, an attribute's) tempered softmax."""
        return ((head or self.classify)(features) / self.temperature).softmax(-1)

    def forward(self, features: torch.Tensor, drop: float = 0.0, drop_to: int | None = None,
                unnamed: torch.Tensor | None = None) -> torch.Tensor:
        """(B, Q, D) features -> (B, Q, words_per_query, hidden): each query's attribute words, then its name's tokens.
        `unnamed` (B, Q): 1 where the data says the query reads `drop_to`, 0 where it keeps its word, -1 on images
        the data says nothing about (those drop at random with `drop`); see minigpt4.world.regions."""
        probs = self.probs(features)
        if self.abstain:
            probs = self.read_as(probs, self.unsure(probs), self.unknown)
        if drop > 0 or unnamed is not None:
            probs = self.drop_words(probs, drop, drop_to, unnamed)
        held = 1 - probs[..., :1]  # the probability that the region holds something
        slots = [self.attribute_probs(features, a, held) @ getattr(self, f"table_{a}").to(features.dtype)
                 for a in self.attributes]
        name = torch.einsum("bqc,cth->bqth", probs, self.table.to(features.dtype))
        return torch.cat([torch.stack(slots, dim=2), name], dim=2) if slots else name

    def attribute_probs(self, features: torch.Tensor, attribute: str, held: torch.Tensor) -> torch.Tensor:
        """(B, Q, words + 1) probabilities of `attribute`'s words. In `always` (MiniGPT4Config.word_always) its
        "none" goes to its words in proportion as far as the region holds something (`held`, (B, Q, 1)): a word on
        every object."""
        head = self.attributes[attribute]
        probs = self.probs(features, head)
        if attribute not in self.always:
            return probs
        words = (head(features)[..., 1:] / self.temperature).softmax(-1)  # from logits: "none" may take all
        return (1 - held) * probs + held * torch.cat([torch.zeros_like(probs[..., :1]), words], dim=-1)

    def unsure(self, probs: torch.Tensor) -> torch.Tensor:
        """(B, Q) true where a name is below the abstention probability (an empty region stays empty)."""
        return (probs.max(-1).values < self.abstain) & (probs.argmax(-1) != 0)

    def read(self, features: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """What the LLM is told, as classes: (B, Q) each query's name after abstention (0: none), and each phrase
        group's (B, slots) phrases (0: none)."""
        probs = self.probs(features)
        names = probs.argmax(-1)
        if self.abstain:
            names = torch.where(self.unsure(probs), torch.full_like(names, self.unknown), names)
        return names, {g: self.phrase_probs(features, g).argmax(-1) for g in self.phrases}

    def phrase_probs(self, features: torch.Tensor, group: str) -> torch.Tensor:
        """(B, Q, D) features -> (B, slots, phrases + 1): each of `group`'s slots' tempered softmax (0: none). In a
        group with ends, a slot is none with the probability that an earlier slot ended the list (session 26: the page
        classifiers' later slots repeat "<footer" past a page's last block; ending there lifts HTML written from the
        phrases by rule from 88.4% to 92.2% on 100 test sketches)."""
        classes = getattr(self, f"table_phrase_{group}").shape[0]
        logits = self.phrases[group](features.flatten(1)).unflatten(1, (-1, classes))
        probs = (logits / self.temperature).softmax(-1)
        stop = getattr(self, f"stop_phrase_{group}", None)
        if stop is None:
            return probs
        ended = 1 - torch.cumprod(1 - probs @ stop.to(probs.dtype), dim=1)  # the list ended at or before each slot
        ended = torch.cat([ended.new_zeros(ended.shape[0], 1), ended[:, :-1]], dim=1)[..., None]  # before it
        none = nn.functional.one_hot(torch.tensor(0, device=probs.device), classes).to(probs.dtype)
        return probs * (1 - ended) + none * ended

    def image_phrase(self, features: torch.Tensor, group: str) -> torch.Tensor:
        """(B, Q, D) features -> (B, slots * tokens per phrase, hidden): `group`'s phrases, probability-weighted."""
        table = getattr(self, f"table_phrase_{group}").to(features.dtype)
        return torch.einsum("bkc,cth->bkth", self.phrase_probs(features, group), table).flatten(1, 2)

    @staticmethod
    def read_as(probs: torch.Tensor, where: torch.Tensor, cls: int) -> torch.Tensor:
        """`probs` (B, Q, classes) with the queries `where` (B, Q) is true reading class `cls` alone."""
        one = nn.functional.one_hot(torch.tensor(cls, device=probs.device), probs.shape[-1]).to(probs)
        return torch.where(where[..., None], one, probs)

    @staticmethod
    def drop_words(probs: torch.Tensor, drop: float, to: int | None = None,
                   unnamed: torch.Tensor | None = None) -> torch.Tensor:
        """Each token's word, with probability `drop`, becomes "none" or a random name (half each): what an object of a
        kind the readout never learned looks like to it (unnamed, or named wrongly), so the LLM trained on this learns
        to fall back on the image instead of trusting the words alone. With `to` (a class, e.g. the fit's unknown
        word "thing"), a dropped word that named something becomes that class. `unnamed` (forward) overrides the
        draw where it is not -1, and those queries read `to` whatever the readout says. Training only
        (TrainConfig.word_dropout)."""
        hit = torch.rand(probs.shape[:2], device=probs.device) < drop
        if to is not None:
            hit &= probs.argmax(-1) != 0  # an empty region stays empty
            if unnamed is not None:
                unnamed = unnamed.to(probs.device)
                hit = torch.where(unnamed >= 0, unnamed == 1, hit)
            return WordReadout.read_as(probs, hit, to)
        if unnamed is not None:
            raise ValueError("unnamed regions read the unknown word: set word_dropout_to (e.g. thing)")
        other = torch.randint(1, probs.shape[-1], probs.shape[:2], device=probs.device)
        other = torch.where(torch.rand(probs.shape[:2], device=probs.device) < 0.5, other, torch.zeros_like(other))
        return torch.where(hit[..., None], nn.functional.one_hot(other, probs.shape[-1]).to(probs.dtype), probs)


def unknown_class(cfg: MiniGPT4Config) -> int | None:
    """The readout class of cfg.word_unknown (words are classes 1..), None without one."""
    if not cfg.word_unknown:
        return None
    if cfg.word_unknown not in cfg.proj_words:
        raise ValueError(f"word_unknown {cfg.word_unknown!r} is not one of the readout's {len(cfg.proj_words)} words")
    return cfg.proj_words.index(cfg.word_unknown) + 1


def word_token_ids(tokenizer, words: Sequence[str]) -> list[list[int]]:
    """Each word's token ids as it appears mid-sentence (" word")."""
    ids = [tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in words]
    empty = [w for w, i in zip(words, ids) if not i]
    if empty:
        raise ValueError(f"words {empty[:5]} tokenize to nothing; give non-empty words")
    return ids


def first_token_ids(tokenizer, words: Sequence[str]) -> list[int]:
    """The id of each word's first token as it appears mid-sentence (" word")."""
    return [i[0] for i in word_token_ids(tokenizer, words)]


def word_embeddings(llm: nn.Module, tokenizer, words: Sequence[str]) -> torch.Tensor:
    """(len(words), hidden): the LLM's input embedding of each word's first token (first_token_ids), a copy in fp32.
    The index names the table's device: models are also built under torch.device("meta") (weights.assemble)."""
    table = llm.get_input_embeddings().weight
    return table[torch.tensor(first_token_ids(tokenizer, words), device=table.device)].detach().float().clone()


def phrase_embeddings(llm: nn.Module, ids: Sequence[Sequence[int]], length: int | None = None) -> torch.Tensor:
    """(len(ids), length or the longest, hidden): each phrase's token embeddings from the LLM's input table, zero
    after its end."""
    table = llm.get_input_embeddings().weight
    out = torch.zeros(len(ids), length or max(map(len, ids)), table.shape[1], device=table.device)
    for i, phrase in enumerate(ids):
        out[i, :len(phrase)] = table[torch.tensor(phrase, device=table.device)].detach().float()
    return out


def check_word_labels(cfg: MiniGPT4Config, tokenizer) -> None:
    """word_labels must be one per word token and tokenize, with this LLM's tokenizer, to the recorded ids (another
    tokenizer's ids would fill the slots with unrelated words)."""
    if len(cfg.word_labels) != cfg.num_word_queries:
        raise ValueError(f"{len(cfg.word_labels)} word_labels for {cfg.num_word_queries} word tokens: give one per "
                         f"token (MiniGPT4Config.label_words)")
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in cfg.word_labels]
    if ids != cfg.word_label_ids:
        raise ValueError(f"word_label_ids {cfg.word_label_ids} are not what this LLM's tokenizer makes of word_labels "
                         f"{cfg.word_labels} ({ids}): set them with cfg.label_words(labels, tokenizer)")


def check_image_phrases(cfg: MiniGPT4Config, tokenizer) -> None:
    """Each image phrase group's phrases and text must tokenize, with this LLM's tokenizer, to the recorded ids."""
    from minigpt4.config import check_image_phrase_group, image_phrase_ids
    for g in cfg.image_phrases:
        check_image_phrase_group(g["name"], g["words"], g["slots"], g["text"], g.get("ends", ()))
        if image_phrase_ids(g["words"], g["text"], tokenizer) != {"word_ids": g["word_ids"], "text_ids": g["text_ids"]}:
            raise ValueError(f"the token ids of image phrase group {g['name']!r} are not what this LLM's tokenizer "
                             f"makes of its words {g['words'][:4]}... and text {g['text']}: set them with "
                             f"cfg.add_image_phrases(name, words, tokenizer)")


def build_vision_side(m: nn.Module, side: VisionSideConfig) -> None:
    """One vision side's modules on `m` (their names are the weight keys): encoder, ln_vision (BLIP-2's: default eps
    1e-5) and the Q-Former, or none (LLaMA-2 variant)."""
    m.visual_encoder = build_vision_encoder(side.vision)
    m.ln_vision = nn.LayerNorm(side.vision.width)
    m.qformer = QFormer.for_vision(side.qformer, side.vision) if side.qformer is not None else None


def place_vision_side(m: nn.Module, device, dtype: torch.dtype) -> None:
    """One vision side onto `device`: encoder and Q-Former in the compute dtype, ln_vision in fp32 (as the original)."""
    m.visual_encoder.to(device, dtype)
    if m.qformer is not None:
        m.qformer.to(device, dtype)
    m.ln_vision.to(device, torch.float32)


def frozen_features(m: nn.Module, side: VisionSideConfig, pixels: torch.Tensor, pixels_from) -> torch.Tensor:
    """One vision side (its modules on `m`): pixels normalised with `pixels_from` (mean, std), resized and
    renormalised as `side` expects -> Q-Former outputs (or, with no Q-Former, every `concat_tokens` tokens joined)."""
    pixels = adapt_pixels(pixels, side.vision.image_size, *pixels_from, side.image_mean, side.image_std)
    enc = next(m.visual_encoder.parameters())
    feats = m.visual_encoder(pixels.to(enc.device, enc.dtype))
    feats = m.ln_vision(feats.to(m.ln_vision.weight.dtype))
    if m.qformer is not None:
        return m.qformer(feats.to(m.qformer.query_tokens.dtype))
    feats = feats[:, 1:, :]  # LLaMA-2 variant: drop CLS, concatenate every k tokens
    B, N, C = feats.shape
    return feats.reshape(B, N // side.concat_tokens, C * side.concat_tokens)


class WordVision(nn.Module):
    """A second frozen vision side that only the word readout reads (config word_vision): one stage-0 export can be
    trained to name objects and another, the projection's, to carry their attributes. It may be built unlike the
    main side (config word_side: another encoder, input size, normalisation): it takes the main side's pixels and
    resizes and renormalises them for itself."""

    def __init__(self, cfg: MiniGPT4Config):
        super().__init__()
        self.side = cfg.word_side_config
        self.pixels_from = (cfg.image_mean, cfg.image_std)  # how the pixels it is given were normalised
        build_vision_side(self, self.side)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return frozen_features(self, self.side, pixels, self.pixels_from)


class MiniGPT4(nn.Module):
    def __init__(self, cfg: MiniGPT4Config, llm: nn.Module, tokenizer, cache_size: int = 256):
        super().__init__()
        self.cfg = cfg
        build_vision_side(self, cfg.main_side)
        llm_hidden = llm.get_input_embeddings().weight.shape[1]
        if llm_hidden != cfg.llm.hidden_size:
            raise ValueError(f"config says llm.hidden_size={cfg.llm.hidden_size} but the loaded LLM has "
                             f"hidden size {llm_hidden}; fix llm.hidden_size or load the matching LLM")
        self.proj = nn.Linear(cfg.proj_in_features, llm_hidden)  # `llama_proj` in the original
        if cfg.word_layout not in WORD_LAYOUTS:
            raise ValueError(f"word_layout must be one of {list(WORD_LAYOUTS)}, not {cfg.word_layout!r}")
        if cfg.word_vision and not cfg.proj_words:
            raise ValueError("word_vision is the word readout's own vision side, but proj_words is empty (no readout)")
        if cfg.word_side is not None and not cfg.word_vision:
            raise ValueError("word_side configures the word readout's own vision side: set word_vision: true with it")
        if cfg.proj_words and cfg.word_layout != "append" and cfg.num_word_queries != cfg.num_queries:
            raise ValueError(f"word_layout {cfg.word_layout!r} pairs each of the {cfg.num_queries} projection tokens "
                             f"with a word, but the word side gives {cfg.num_word_queries}: use word_layout: append")
        if cfg.word_labels:
            check_word_labels(cfg, tokenizer)
        if cfg.image_phrases:
            if not cfg.proj_words:
                raise ValueError("image_phrases go before the word readout's tokens, but proj_words is empty")
            check_image_phrases(cfg, tokenizer)
        if cfg.word_attributes and not cfg.proj_words:
            raise ValueError("word_attributes add words before the word readout's names, but proj_words is empty")
        empty = [a for a, words in cfg.word_attributes.items() if not words]
        if empty:
            raise ValueError(f"word_attributes {empty} have no words: give each attribute its words or drop it")
        self.word_proj = WordReadout.for_llm(cfg, llm, tokenizer) if cfg.proj_words else None
        self.word_vision = WordVision(cfg) if cfg.word_vision else None
        self.word_dropout = 0.0  # set by training (TrainConfig.word_dropout); see WordReadout.drop_words
        self.word_dropout_to: int | None = None  # TrainConfig.word_dropout_to's class
        self.llm = llm
        self.tokenizer = tokenizer
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._names: dict[str, frozenset[str]] = {}  # read_names, by image content
        self.cache_size = cache_size
        self.set_trainable(cfg.trainable)

    # --- trainable set -------------------------------------------------------------------
    def groups(self) -> dict[str, list[nn.Module]]:
        return {"proj": [self.proj], "words": [self.word_proj] if self.word_proj is not None else [],
                "qformer": [self.qformer] if self.qformer is not None else [],
                "vision": [self.visual_encoder, self.ln_vision], "llm": [self.llm],
                "word_vision": [self.word_vision] if self.word_vision is not None else []}  # never trains

    def set_trainable(self, trainable: Sequence[str]) -> None:
        unknown = sorted(set(trainable) - set(TRAINABLE_GROUPS))
        if unknown:
            raise ValueError(f"unknown trainable group(s) {unknown}; choose from {list(TRAINABLE_GROUPS)}")
        if "words" in trainable and self.word_proj is None:
            raise ValueError("trainable includes 'words' but this model has no word readout (its proj_words is empty)")
        if "qformer" in trainable and self.qformer is None:
            raise ValueError("trainable includes 'qformer' but this model has no Q-Former (LLaMA-2 variant)")
        self.trainable = list(trainable)
        for name, modules in self.groups().items():
            for m in modules:
                m.requires_grad_(name in trainable)
        if "lora" in trainable:
            from minigpt4.model.lora import add_lora
            add_lora(self, self.cfg.lora)
        self.train(self.training)

    def train(self, mode: bool = True):
        """Frozen parts stay in eval mode (no dropout) whatever the caller asks."""
        super().train(mode)
        for name, modules in self.groups().items():
            frozen = name not in self.trainable and not (name == "llm" and "lora" in self.trainable)
            for m in modules:
                if frozen:
                    m.eval()
        return self

    def place(self, device, dtype: torch.dtype) -> None:
        """Our parts (not the LLM) onto `device`: vision sides in the compute dtype, except ln_vision; the projection and
        the word readout in fp32, as the original keeps llama_proj."""
        place_vision_side(self, device, dtype)
        if self.word_vision is not None:
            place_vision_side(self.word_vision, device, dtype)
        self.proj.to(device, torch.float32)
        if self.word_proj is not None:
            self.word_proj.to(device, torch.float32)

    # --- images --------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.proj.weight.device

    def vision_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Frozen vision side: pixels -> (B, num_vision_tokens, D) Q-Former outputs (or concatenated ViT tokens);
        with a word vision side, its outputs follow the main side's."""
        cfg = self.cfg
        feats = frozen_features(self, cfg.main_side, pixels, (cfg.image_mean, cfg.image_std))
        if self.word_vision is None:
            return feats
        words = self.word_vision(pixels).to(feats.dtype)
        width = cfg.feature_width  # one tensor (and one feature cache) for both: the narrower side is zero-padded
        pad = lambda x: nn.functional.pad(x, (0, width - x.shape[-1]))
        return torch.cat([pad(feats), pad(words)], dim=1)

    def split_features(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """vision_features -> (what the projection reads, what the word readout reads)."""
        if self.word_vision is None:
            return features, features
        n, cfg = self.cfg.num_queries, self.cfg
        return features[:, :n, :cfg.proj_in_features], features[:, n:, :cfg.word_features]

    def project(self, features: torch.Tensor, unnamed: torch.Tensor | None = None) -> torch.Tensor:
        """(B, num_vision_tokens, D) vision features -> (B, num_image_tokens, llm_hidden). With a word readout, "sum"
        adds each query's word to its projection; "pair" gives them a slot each, word first; "append" puts all the
        word tokens after all the projection's."""
        main, for_words = self.split_features(features.to(self.proj.weight.dtype))
        tokens = self.proj(main)
        if self.word_proj is None:
            return tokens
        words = self.word_proj(for_words, self.word_dropout if self.training else 0.0,  # (B, Q, words_per_query, H)
                               self.word_dropout_to, unnamed if self.training else None)
        if self.cfg.word_labels:
            out = self.labelled(tokens, words)
        elif self.cfg.word_layout == "sum":
            out = tokens + words.sum(2)
        elif self.cfg.word_layout == "append":
            out = torch.cat([tokens, words.flatten(1, 2)], dim=1)
        else:
            out = torch.cat([words, tokens[:, :, None]], dim=2).flatten(1, 2)
        parts = []
        for g in self.cfg.image_phrases:  # "picture: vegetable soup;" before the regions
            before, after = (self.text_embeddings(ids, out) for ids in g["text_ids"])
            parts += [before, self.word_proj.image_phrase(for_words, g["name"]).to(out.dtype), after]
        return torch.cat(parts + [out], dim=1) if parts else out

    def text_embeddings(self, ids: list[int], like: torch.Tensor) -> torch.Tensor:
        """(B, len(ids), hidden): the LLM's own input embeddings of `ids`, for each of `like`'s batch rows."""
        emb = self.llm.get_input_embeddings()
        x = emb(torch.tensor(ids, device=emb.weight.device)).to(like.device, like.dtype)
        return x[None].expand(like.shape[0], -1, -1)

    def labelled(self, tokens: torch.Tensor, words: torch.Tensor) -> torch.Tensor:
        """project() with word_labels: word i follows its label's tokens (the LLM's own embeddings of them), with
        its projection token after it ("pair"), added to it ("sum"), or all projection tokens first ("append")."""
        labels = self.text_embeddings([i for label in self.cfg.word_label_ids for i in label], words)
        labels = labels.split([len(label) for label in self.cfg.word_label_ids], dim=1)
        layout = self.cfg.word_layout
        if layout == "sum":
            tokens, words = tokens + words.sum(2), None  # one slot per query holds its projection and words
        parts = [tokens] if layout == "append" else []
        for i, label in enumerate(labels):  # words[:, i]: query i's attribute words and name
            parts.append(label)
            if words is not None:
                parts.append(words[:, i])
            if layout != "append":
                parts.append(tokens[:, i:i + 1])
        return torch.cat(parts, dim=1)

    def encode_pixels(self, pixels: torch.Tensor, unnamed: torch.Tensor | None = None) -> torch.Tensor:
        """(B,3,S,S) normalised pixels -> (B, num_image_tokens, llm_hidden) image embeddings."""
        return self.project(self.vision_features(pixels), unnamed)

    def preprocess(self, images: Sequence[ImageInput]) -> torch.Tensor:
        pil = [load_image(im) for im in images]
        return preprocess(pil, self.cfg.input_size, self.cfg.image_mean, self.cfg.image_std)

    @staticmethod
    def image_key(img: Image.Image) -> str:
        h = hashlib.sha256(f"{img.mode}:{img.size}".encode())
        h.update(img.tobytes())
        return h.hexdigest()

    @torch.no_grad()
    def encode_images(self, images: Sequence[ImageInput]) -> torch.Tensor:
        """Encode images (paths, bytes or PIL) with a content-hash LRU cache: a repeated image
        costs no encoder time. Returns (len(images), num_image_tokens, llm_hidden)."""
        pil = [load_image(im) for im in images]
        keys = [self.image_key(im) for im in pil]
        todo = [i for i, k in enumerate(keys) if k not in self._cache]
        if todo:
            uniq = list(dict.fromkeys(keys[i] for i in todo))
            first = {k: next(i for i in todo if keys[i] == k) for k in uniq}
            feats = self.vision_features(self.preprocess([pil[first[k]] for k in uniq]))
            out = self.project(feats)
            for k, emb in zip(uniq, out):
                self._cache[k] = emb
            if self.word_proj is not None:  # what the readout read, for grounded answers: no second vision pass
                self._keep_names(uniq, feats)
        for k in keys:
            self._cache.move_to_end(k)
        result = torch.stack([self._cache[k] for k in keys])
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return result

    @torch.no_grad()
    def read_names(self, images: Sequence[ImageInput]) -> list[frozenset[str]]:
        """The object names the word readout reads in each image: its regions' names after abstention (not the
        unknown word) and its phrases ("pizza"), i.e. what the LLM was told is there. Grounded answers
        (minigpt4.chat.grounding) keep only these; cached by image content like encode_images."""
        if self.word_proj is None:
            raise ValueError("grounded answers keep the object names a word readout read, and this model has none")
        pil = [load_image(im) for im in images]
        keys = [self.image_key(im) for im in pil]
        todo = list(dict.fromkeys(k for k in keys if k not in self._names))
        if todo:
            self._keep_names(todo, self.vision_features(self.preprocess([pil[keys.index(k)] for k in todo])))
        return [self._names[k] for k in keys]

    def _keep_names(self, keys: list[str], features: torch.Tensor) -> None:
        """Cache read_names for images `keys` from their vision_features."""
        feats = self.split_features(features)[1]
        feats = feats.to(self.word_proj.classify.weight.dtype)
        names, phrases = self.word_proj.read(feats)
        words, unknown = self.cfg.proj_words, unknown_class(self.cfg)
        if self.cfg.word_ground_sure:  # a name read less sure than this grounds nothing (the LLM still reads it)
            names = torch.where(self.word_proj.probs(feats).max(-1).values < self.cfg.word_ground_sure, 0, names)
        groups = {g["name"]: g["words"] for g in self.cfg.image_phrases}
        for b, k in enumerate(keys):
            read = {words[c - 1] for c in names[b].tolist() if c and c != unknown}
            read |= {groups[g][c - 1] for g, cls in phrases.items() for c in cls[b].tolist() if c}
            self._names.pop(k, None)
            self._names[k] = frozenset(read)
        while len(self._names) > self.cache_size:
            self._names.pop(next(iter(self._names)))

    def set_word_abstain(self, abstain: float) -> None:
        """MiniGPT4Config.word_abstain on a loaded model (chat/eval/serve --abstain); cached image encodings go."""
        if self.word_proj is None:
            raise ValueError("--abstain acts on a word readout's names; this model has none")
        self.word_proj.set_abstain(abstain, unknown_class(self.cfg))
        self.cfg.word_abstain = abstain
        self.clear_cache()

    def set_word_ground_sure(self, sure: float) -> None:
        """MiniGPT4Config.word_ground_sure on a loaded model (chat/eval/serve --ground-sure); cached names go."""
        if self.word_proj is None:
            raise ValueError("--ground-sure acts on a word readout's names; this model has none")
        if not 0.0 <= sure < 1.0:
            raise ValueError(f"--ground-sure is a probability in [0, 1), not {sure}")
        self.cfg.word_ground_sure = sure
        self.clear_cache()

    def set_word_always(self, attributes: Sequence[str]) -> None:
        """MiniGPT4Config.word_always on a loaded model (chat/eval/serve --always); cached image encodings go."""
        if self.word_proj is None:
            raise ValueError("--always acts on a word readout's attributes; this model has none")
        self.cfg.check_word_always(attributes)
        self.cfg.word_always = list(attributes)
        self.word_proj.always = frozenset(attributes)
        self.clear_cache()

    def clear_cache(self) -> None:
        self._cache.clear()
        self._names.clear()

    # --- splice --------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor, image_embeds: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with image embeddings written where input_ids == IMAGE_TOKEN_ID.
        Images fill the placeholder slots in reading order (row by row through the batch)."""
        mask = input_ids == IMAGE_TOKEN_ID
        n_slots = int(mask.sum())
        n_feats = 0 if image_embeds is None else image_embeds.shape[0] * image_embeds.shape[1]
        if n_slots != n_feats:
            per = self.cfg.num_image_tokens
            raise ValueError(f"image features and image tokens do not match: tokens {n_slots} "
                             f"({n_slots / per:g} image placeholders x {per}), features {n_feats} "
                             f"({0 if image_embeds is None else image_embeds.shape[0]} images); give one "
                             f"image per <ImageHere> placeholder")
        embeds = self.llm.get_input_embeddings()(input_ids.clamp(min=0))
        if n_slots:
            embeds = embeds.masked_scatter(mask.unsqueeze(-1), image_embeds.to(embeds.dtype))
        return embeds

    # --- training forward ----------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor,
                pixels: torch.Tensor | None = None, image_embeds: torch.Tensor | None = None,
                features: torch.Tensor | None = None, average: str = "token",
                unnamed: torch.Tensor | None = None) -> torch.Tensor:
        """Mean next-token loss over label positions (`average="token"`, the original), or the mean
        over samples of each sample's mean (`"sample"`: a 2-token answer weighs as much as a
        600-token one). Give pixels (runs the encoders), `features` (cached frozen vision outputs,
        projected here) or ready `image_embeds`. `unnamed` (images, word queries): the regions each image's data
        unnamed (WordReadout.forward)."""
        if image_embeds is None:
            if features is not None:
                image_embeds = self.project(features.to(self.device), unnamed)
            elif pixels is not None:
                image_embeds = self.encode_pixels(pixels, unnamed)
        embeds = self.embed(input_ids.to(self.device), image_embeds)
        hidden = self.llm.get_decoder()(inputs_embeds=embeds, attention_mask=attention_mask.to(self.device)).last_hidden_state
        # LM head only where a label is set: the big vocab matmul is skipped for prompt/image slots;
        # a frozen head runs fused with the loss (minigpt4.model.losses).
        targets = labels.to(self.device)[:, 1:]
        keep = targets != IGNORE_INDEX
        row_weights = None
        if average == "sample":
            per_sample = keep.sum(1, keepdim=True).clamp(min=1)
            row_weights = (1.0 / per_sample).expand_as(keep)[keep]
        elif average != "token":
            raise ValueError(f"average must be 'token' or 'sample', not {average!r}")
        return head_cross_entropy(self.llm.get_output_embeddings(), hidden[:, :-1][keep], targets[keep], row_weights)

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.named_parameters() if v.requires_grad}


def build_model(cfg: MiniGPT4Config, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                quantize: str | None = None, seed: int | None = 0) -> MiniGPT4:
    """Build a MiniGPT4 from a config: load (or randomly create) the LLM, create the vision side
    and projection (random until weights are loaded into them), move to device/dtype."""
    from minigpt4.model.llm import load_llm
    if seed is not None:
        torch.manual_seed(seed)
    llm, tokenizer = load_llm(cfg.llm, dtype=dtype, quantize=quantize, device=str(device))
    model = MiniGPT4(cfg, llm, tokenizer)
    if quantize is None:
        model.llm.to(device)
    model.place(device, dtype)
    return model
