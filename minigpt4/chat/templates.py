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

    def render(self, messages: list[Message], system: str | None = None,
               add_generation_prompt: bool = True) -> str:
        system = self.system if system is None else system
        out = self.system_format.format(system) if system else ""
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
    # Original MiniGPT-4 (Vicuna v0): "{system}###Human: <Img><ImageHere></Img> q###Assistant: "
    "vicuna_v0": Template("vicuna_v0", ORIGINAL_SYSTEM, "{}", "###Human: {} ", "###Assistant: ", "###"),
    # Original MiniGPT-4 LLaMA-2 chat variant.
    "llama2": Template("llama2", ORIGINAL_SYSTEM, "[INST] <<SYS>>\n{}\n<</SYS>>\n\n[/INST] ",
                       "[INST] {} ", "[/INST] ", "</s>", bos=True),
    # ChatML, the chat format of SmolLM2 / Qwen style instruction models.
    "chatml": Template("chatml", ORIGINAL_SYSTEM, "<|im_start|>system\n{}<|im_end|>\n",
                       "<|im_start|>user\n{}<|im_end|>\n", "<|im_start|>assistant\n", "<|im_end|>\n",
                       bos=False),
}


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise ValueError(f"unknown template '{name}'; choose one of: {', '.join(TEMPLATES)}")
    return TEMPLATES[name]


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
    ids = tokenize(tokenizer, template.system_format.format(system) if system else "",
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
