"""Conversation templates and the ONE prompt builder shared by chat and training.

A conversation is a list of `Message`s; images attached to a user message are written as
`<Img><ImageHere></Img>` before its text (the original layout). `render()` turns messages into
prompt text; `tokenize()` turns that text into ids with `num_image_tokens` IMAGE_TOKEN_ID slots
per `<ImageHere>`. Training builds its examples with `training_example()`, which calls the same
two functions, so train and chat prompts can never disagree.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from minigpt4.model.minigpt4 import IGNORE_INDEX, IMAGE_TOKEN_ID

IMAGE_PLACEHOLDER = "<ImageHere>"
IMAGE_TAG = "<Img><ImageHere></Img>"
ORIGINAL_SYSTEM = ("Give the following image: <Img>ImageContent</Img>. You will be able to see the "
                   "image once I provide it to you. Please answer my questions.")


@dataclass
class Message:
    role: str  # "user" or "assistant"
    text: str
    images: list[Any] = field(default_factory=list)  # anything encode_images accepts, or embeddings

    def content(self) -> str:
        tags = " ".join(IMAGE_TAG for _ in self.images)
        return f"{tags} {self.text}".strip() if tags else self.text


@dataclass(frozen=True)
class Template:
    """user/assistant are format strings; `end` closes an assistant answer and stops generation."""
    name: str
    system: str
    system_format: str  # how the system message is written at the start ("{}")
    user: str
    assistant: str      # the generation prompt; the answer follows it directly
    end: str
    bos: bool = True    # prepend the tokenizer's BOS (if it has one)
    empty_system: str = ""  # what starts the prompt when there is no system message

    def prefix(self, system: str | None) -> str:
        return self.system_format.format(system) if system else self.empty_system

    def render(self, messages: list[Message], system: str | None = None,
               add_generation_prompt: bool = True) -> str:
        system = self.system if system is None else system
        out = self.prefix(system)
        for m in messages:
            if m.role == "user":
                out += self.user.format(m.content()) + self.assistant
            elif m.role == "assistant":
                if not out.endswith(self.assistant):
                    raise ValueError("an assistant message must follow a user message")
                out += m.text + self.end
            else:
                raise ValueError(f"unknown role '{m.role}'; use 'user' or 'assistant'")
        if not add_generation_prompt and out.endswith(self.assistant):
            out = out[: -len(self.assistant)]
        return out


TEMPLATES: dict[str, Template] = {
    # Original MiniGPT-4 (Vicuna v0), "###" separates every turn exactly once:
    # "{system}###Human: <Img><ImageHere></Img> q ###Assistant: answer###Human: q2 ###Assistant: "
    "vicuna_v0": Template("vicuna_v0", ORIGINAL_SYSTEM, "{}###", "Human: {} ", "###Assistant: ", "###",
                          empty_system="###"),
    # Original MiniGPT-4 LLaMA-2 chat variant.
    "llama2": Template("llama2", ORIGINAL_SYSTEM, "[INST] <<SYS>>\n{}\n<</SYS>>\n\n[/INST] ",
                       "[INST] {} ", "[/INST] ", "</s>", bos=True),
    # ChatML, the chat format of SmolLM2 / Qwen style instruction models.
    "chatml": Template("chatml", ORIGINAL_SYSTEM, "<|im_start|>system\n{}<|im_end|>\n",
                       "<|im_start|>user\n{}<|im_end|>\n", "<|im_start|>assistant\n", "<|im_end|>\n",
                       bos=False),
}


HF_SYSTEM = "You are a helpful assistant that can see images. Answer questions about the image."


def get_template(name: str, tokenizer=None) -> Template:
    """A template by name; "hf" is the tokenizer's own chat template (needs `tokenizer`)."""
    if name == "hf":
        if tokenizer is None:
            raise ValueError("template 'hf' is the tokenizer's own chat template: pass the tokenizer")
        return template_from_tokenizer(tokenizer)
    if name not in TEMPLATES:
        raise ValueError(f"unknown template '{name}'; choose one of: {', '.join(TEMPLATES)}, hf")
    return TEMPLATES[name]


def template_from_tokenizer(tokenizer, system: str = HF_SYSTEM) -> Template:
    """The tokenizer's Jinja chat template as a turn-by-turn `Template`.

    The pieces (system block, user block, generation prompt, answer end) are found by rendering
    marker messages, then checked: the derived template must reproduce the Jinja rendering of a
    two-turn conversation exactly. Because encode_conversation tokenizes turn by turn, the result
    keeps the prefix property KV reuse needs; Jinja templates that rewrite earlier turns when a new
    one arrives (dates, "last turn only" logic) fail the check with a clear error instead."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; use --template vicuna_v0, llama2 or chatml")
    S, U, A, U2 = "\x01SYS\x01", "\x01USR\x01", "\x01ANS\x01", "\x01USR2\x01"

    def render(msgs, gen):
        return tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)

    sys_m, user_m = {"role": "system", "content": S}, {"role": "user", "content": U}
    only_sys = render([sys_m], False)
    with_user = render([sys_m, user_m], False)
    with_gen = render([sys_m, user_m], True)
    two = render([sys_m, user_m, {"role": "assistant", "content": A}, {"role": "user", "content": U2}], True)
    try:
        if not (with_user.startswith(only_sys) and with_gen.startswith(with_user) and two.startswith(with_gen)):
            raise ValueError("turns are not appended in order")
        bos = tokenizer.bos_token or ""
        # A leading BOS string is the tokenizer's BOS only if the tokenizer adds one itself
        # (SmolLM2's "bos" is <|im_start|>, which is part of every block, not a BOS).
        adds_bos = tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id]
        has_bos = bool(bos) and adds_bos and only_sys.startswith(bos)
        sys_block = only_sys[len(bos):] if has_bos else only_sys
        user_block = with_user[len(only_sys):]
        gen_prompt = with_gen[len(with_user):]
        rest = two[len(with_gen):]
        if not rest.startswith(A):
            raise ValueError("the answer is not written right after the generation prompt")
        end = rest[len(A):rest.index(user_block.replace(U, U2))] if user_block.replace(U, U2) in rest else None
        if end is None:
            raise ValueError("cannot find the second user turn")
        esc = lambda t: t.replace("{", "{{").replace("}", "}}")  # noqa: E731
        tpl = Template("hf", system, esc(sys_block).replace(S, "{}"), esc(user_block).replace(U, "{}"),
                       gen_prompt, end, bos=has_bos)
        check = [Message("user", U), Message("assistant", A), Message("user", U2)]
        rebuilt = (bos if has_bos else "") + tpl.render(check, system=S)
        if rebuilt != two:
            raise ValueError("the derived turn format does not reproduce the template")
    except ValueError as e:
        raise ValueError(f"the tokenizer's chat template cannot be used turn by turn ({e}); use "
                         f"--template vicuna_v0, llama2 or chatml instead") from None
    return tpl


def tokenize(tokenizer, text: str, num_image_tokens: int, bos: bool = True) -> list[int]:
    """Token ids for `text`, each <ImageHere> expanded to `num_image_tokens` IMAGE_TOKEN_ID slots."""
    ids: list[int] = []
    if bos and tokenizer.bos_token_id is not None:
        ids.append(tokenizer.bos_token_id)
    pieces = text.split(IMAGE_PLACEHOLDER)
    for i, piece in enumerate(pieces):
        if piece:
            ids.extend(tokenizer(piece, add_special_tokens=False).input_ids)
        if i < len(pieces) - 1:
            ids.extend([IMAGE_TOKEN_ID] * num_image_tokens)
    return ids


def count_images(messages: list[Message]) -> int:
    return sum(len(m.images) for m in messages)


def encode_conversation(tokenizer, template: Template, messages: list[Message], num_image_tokens: int,
                        system: str | None = None, max_len: int | None = None) -> tuple[list[int], list[int]]:
    """(input_ids, labels) for a conversation; THE prompt builder of both chat and training.

    Each user turn is followed by the assistant prefix, so a conversation ending in a user message
    is ready for generation. Labels are IGNORE_INDEX except on assistant answers and their end
    symbol. Tokenized turn by turn, so the ids of a conversation are a prefix of the ids of its
    continuation (what lets chat reuse its KV cache across turns)."""
    system = template.system if system is None else system
    ids = tokenize(tokenizer, template.prefix(system),
                   num_image_tokens, bos=template.bos)
    labels = [IGNORE_INDEX] * len(ids)
    for m in messages:
        if m.role == "user":
            part = tokenize(tokenizer, template.user.format(m.content()) + template.assistant,
                            num_image_tokens, bos=False)
            ids += part
            labels += [IGNORE_INDEX] * len(part)
        elif m.role == "assistant":
            part = tokenize(tokenizer, m.text + template.end, num_image_tokens, bos=False)
            ids += part
            labels += part
        else:
            raise ValueError(f"unknown role '{m.role}'; use 'user' or 'assistant'")
    if max_len is not None and len(ids) > max_len:
        ids, labels = ids[:max_len], labels[:max_len]
    return ids, labels
