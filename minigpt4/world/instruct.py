"""World samples as instruction conversations (LLaVA format) for the product's own tasks.

The paper's stage 2 teaches a 13B Vicuna to describe images and relies on Vicuna to answer
everything else zero-shot. A 135M LLM cannot do that (the default model's caption-only stage 1
answered 7% of attribute questions), so the default recipe adds what LLaVA adds: conversations
whose answers come from the ground truth. Each image gets one conversation, for one task picked
by a seeded draw, asked with exactly the prompt the product uses (the chat presets, and the short-
answer instruction the eval appends to questions):

  * qa        - up to `max_questions` of the world's questions, one per turn, short answers
  * describe  - the detailed description       * alt-text - the alt text
  * recipe    - dishes: the recipe              * website  - sketches: the HTML in a code block
  * prompt    - prompt images: the text-to-image prompt

`qa_drill` writes a second set: every image's questions in one multi-turn conversation. Questions
are where the image must be read (the others mostly have a fixed form), and one image's tokens
then carry a dozen answers instead of one task's.
"""
from __future__ import annotations

import random

from minigpt4.chat.presets import SHORT_ANSWER, get_preset

# Task shares per image kind: questions first (they carry the attributes), then each kind's own task.
TASK_WEIGHTS: dict[str, dict[str, float]] = {
    "scene": {"qa": 6, "describe": 3, "alt-text": 1},
    "dish": {"recipe": 4, "qa": 4, "describe": 1, "alt-text": 1},
    "sketch": {"website": 4, "qa": 4, "describe": 1, "alt-text": 1},
    "prompt": {"prompt": 4, "qa": 4, "describe": 1, "alt-text": 1},
}


def _answer(sample, task: str) -> str | None:
    if task == "website":
        return f"```html\n{sample.html}\n```" if sample.html else None
    field = {"describe": "description", "alt-text": "alt_text", "recipe": "recipe", "prompt": "prompt"}[task]
    return getattr(sample, field) or None


def conversation(sample, image: str, seed: int, max_questions: int = 6) -> dict:
    """One LLaVA record ({"id", "image", "task", "conversations"}) for `sample`, the task drawn
    from TASK_WEIGHTS[kind] by (seed, image id), so an export is reproducible."""
    rng = random.Random(f"instruct:{seed}:{sample.image_id}")
    weights = TASK_WEIGHTS[sample.kind]
    tasks = [t for t in weights if t == "qa" and sample.qa or t != "qa" and _answer(sample, t)]
    task = rng.choices(tasks, [weights[t] for t in tasks])[0]
    if task == "qa":
        qa = drill_order(rng.sample(sample.qa, min(max_questions, len(sample.qa))))
        turns = [(f"{q['question']} {SHORT_ANSWER}", q["answer"]) for q in qa]
    else:
        turns = [(get_preset(task).build_prompt(), _answer(sample, task))]
    return _record(sample.image_id, image, task, turns)


# Yes/no "is it there?" questions, per image kind: scene presence, prompt objects, dish ingredients, page elements.
EXISTENCE_TYPES = {"presence", "object", "ingredient", "element"}


def presence_before_mentions(questions: list[dict]) -> list[dict]:
    """`questions` in the same order, except that each yes/no existence question moves just ahead of
    the first other question that names its target. Asked after "What color is the tulip?", "Is there
    a tulip?" is answered by the conversation, not the image (before this, 23% of the scene drills'
    "yes" answers were), and the eval asks every question without history."""
    first = {}
    for i, q in enumerate(questions):
        first.setdefault(q.get("target"), i)
    def key(iq):
        i, q = iq
        if q.get("type") in EXISTENCE_TYPES and q.get("target") is not None:
            return (first[q["target"]], 0, i)
        return (i, 1, i)
    return [q for _, q in sorted(enumerate(questions), key=key)]


def drill_order(questions: list[dict]) -> list[dict]:
    """Shuffled `questions` as turns: the first stays first, and the rest follow presence_before_mentions. The first
    turn is the one asked without history, as every eval question and every chat's first question is, so it is drawn
    like any question; moving existence questions ahead of it made 78% of the first turns "yes, it is there" (the
    224 px world's drills), and the model learnt to say "yes" to any first question about presence. An existence
    question about the first question's target comes after the conversation named it: dropped."""
    if not questions:
        return questions
    first, target = questions[0], questions[0].get("target")
    rest = [q for q in questions[1:] if not (target is not None and q.get("target") == target
                                             and q.get("type") in EXISTENCE_TYPES)]
    return [first] + presence_before_mentions(rest)


def _record(image_id: str, image: str, task: str, turns: list[tuple[str, str]]) -> dict:
    """A LLaVA record: the image tag opens the first question, then human/gpt turns alternate."""
    conv = []
    for i, (question, answer) in enumerate(turns):
        conv.append({"from": "human", "value": ("<image>\n" if i == 0 else "") + question})
        conv.append({"from": "gpt", "value": answer})
    return {"id": image_id, "image": image, "task": task, "conversations": conv}


def qa_drill(image_id: str, qa: list[dict], image: str, seed: int, max_questions: int = 12,
             types: set[str] | None = None) -> dict | None:
    """One LLaVA record with up to `max_questions` of the image's questions (a seeded shuffle, so
    the first turn, the one asked without history at chat time, varies), or None without any.
    `types`: keep only these question types (e.g. the attribute ones), so more turns are on them."""
    if types is not None:
        qa = [q for q in qa if q.get("type") in types]
    if not qa:
        return None
    rng = random.Random(f"qa-drill:{seed}:{image_id}")
    picked = drill_order(rng.sample(qa, min(max_questions, len(qa))))
    return _record(image_id, image, "qa", [(f"{q['question']} {SHORT_ANSWER}", q["answer"]) for q in picked])
