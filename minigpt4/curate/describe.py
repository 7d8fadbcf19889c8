"""Step 1: the stage-1 model describes each image, continuing answers that came out short.

The paper asks "Describe this image in detail. ..." and, when the answer is shorter than 80
tokens, asks "Continue" in the same conversation (`###Human: Continue ###Assistant: ` with the
vicuna_v0 template) and joins the two answers. Both rounds are batched through the chat engine.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from minigpt4.curate.prompts import CONTINUE_BELOW_TOKENS, CONTINUE_PROMPT, DESCRIBE_PROMPT


@dataclass
class Description:
    text: str        # what goes to the fixer: the first answer joined with the continuation
    first: str       # the first answer alone
    tokens: int      # completion tokens of both rounds together
    continued: bool


def join_answers(first: str, more: str) -> str:
    first, more = first.strip(), more.strip()
    return f"{first} {more}".strip()


class Describer:
    def __init__(self, engine, prompt: str = DESCRIBE_PROMPT, continue_prompt: str = CONTINUE_PROMPT,
                 continue_below: int = CONTINUE_BELOW_TOKENS, gen=None, ground: bool = False):
        self.engine = engine
        self.prompt = prompt
        self.continue_prompt = continue_prompt
        self.continue_below = continue_below
        self.gen = gen  # None -> the model's generation defaults
        self.ground = ground  # name only objects the readout read (minigpt4.chat.grounding)

    def describe(self, images: Sequence[Any]) -> list[Description]:
        """Describe a batch of (already loaded) images."""
        from minigpt4.chat.engine import Request
        from minigpt4.chat.templates import Message
        firsts = self.engine.generate([Request(messages=[Message("user", self.prompt, images=[im])], gen=self.gen,
                                               ground=self.ground) for im in images])
        out = [Description(r.text.strip(), r.text.strip(), r.completion_tokens, False) for r in firsts]
        short = [i for i, r in enumerate(firsts) if r.completion_tokens < self.continue_below]
        if short:
            more = self.engine.generate([
                Request(messages=[Message("user", self.prompt, images=[images[i]]),
                                  Message("assistant", firsts[i].text),
                                  Message("user", self.continue_prompt)], gen=self.gen, ground=self.ground)
                for i in short])
            for i, r in zip(short, more):
                d = out[i]
                d.text, d.tokens, d.continued = join_answers(d.first, r.text), d.tokens + r.completion_tokens, True
        return out
