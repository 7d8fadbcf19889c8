"""Run a model over held-out world samples, task by task, and score the answers.

Reading order: `EvalConfig` (what to run) -> `TASKS` (which world images, which preset, how to
score) -> `build_items` (deterministic samples and chat requests) -> `run_eval` (batched
generation through the chat engine, scoring, one report dict).

Samples are fixed per split: image i of a task is `generate(kind, seed + i, split)`, so every run
(and every model in a comparison) sees the same images and questions. `no_image` removes the
image message, leaving the bare LLM to answer from the text alone.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from minigpt4.chat.engine import ChatEngine, Request, Result
from minigpt4.chat.presets import SHORT_ANSWER, get_preset
from minigpt4.chat.templates import Message
from minigpt4.config import GenerationConfig
from minigpt4.eval.broken import REASONS, BrokenConfig, broken_reasons
from minigpt4.eval.scoring import answer_correct, qa_scores
from minigpt4.world.metrics import ingredient_hits, object_mentions, pooled_chair_i
from minigpt4.world.vocab import heldout_names
from minigpt4.world import SPLITS, generate, ingredient_recall, object_recall, prompt_similarity, structure_match

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Task:
    name: str
    kind: str              # world image kind
    preset: str | None     # chat preset whose prompt is asked (qa: the world's own questions)
    max_new_tokens: int
    help: str = ""


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("qa", "scene", None, 16, "attribute questions (presence, color, count, position, ...)"),
    Task("describe", "scene", "describe", 200, "detailed description: CHAIR_i, object recall, broken"),
    Task("sketch", "sketch", "website", 600, "sketch -> HTML: structure match of the DOM"),
    Task("recipe", "dish", "recipe", 300, "recipe: ingredient recall, broken"),
    Task("prompt", "prompt", "prompt", 96, "text-to-image prompt: re-render similarity, broken"),
    Task("speed", "scene", "describe", 100, "seconds for a 100-token answer incl. image encode"),
]}
DEFAULT_TASKS = tuple(TASKS)


@dataclass
class EvalConfig:
    split: str = "test"
    n: int = 50                       # images per task
    tasks: tuple[str, ...] = DEFAULT_TASKS
    no_image: bool = False            # bare LLM: the same questions without the image
    batch_size: int = 8
    qa_per_image: int = 0             # 0 = every question the world asks about an image
    max_new_tokens: int | None = None  # cap for every task (None: each task's own budget)
    image_size: int | None = None     # world render size (None: the model's input size, >= 96)
    seed: int = 0                     # image i uses world seed `seed + i`
    sample: bool = False              # sample with the model's settings instead of greedy
    speed_runs: int = 3
    speed_tokens: int = 100
    examples: int = 2                 # good and bad examples per task in the report
    ground: bool = False              # grounded answers for qa and describe (minigpt4.chat.grounding)
    progress: bool = True

    def __post_init__(self):
        self.tasks = tuple(self.tasks)
        unknown = [t for t in self.tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"unknown eval task(s) {unknown}; choose from: {', '.join(TASKS)}")
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; choose one of: {', '.join(SPLITS)} "
                             f"(test/heldout hold object kinds never used in training)")
        if self.n < 1 or self.batch_size < 1:
            raise ValueError(f"--n and --batch-size must be >= 1 (got n={self.n}, batch_size={self.batch_size})")


@dataclass
class Item:
    """One question to the model and what it is scored against."""
    task: str
    sample: Any                       # world Sample
    prompt: str
    request: Request
    question: dict | None = None      # qa only
    result: Result | None = None
    answer: str = ""                  # post-processed output
    scores: dict = field(default_factory=dict)
    broken: list[str] = field(default_factory=list)


def image_size_for(model, cfg: EvalConfig) -> int:
    return cfg.image_size or max(int(model.cfg.input_size), 96)


def _pick_questions(qa: list[dict], k: int) -> list[dict]:
    """k questions, round-robin over question types (so a cap keeps every type represented)."""
    if k <= 0 or k >= len(qa):
        return list(qa)
    by_type: dict[str, list[dict]] = {}
    for q in qa:
        by_type.setdefault(q["type"], []).append(q)
    out: list[dict] = []
    while len(out) < k:
        for qs in by_type.values():
            if qs and len(out) < k:
                out.append(qs.pop(0))
    return out


def generation_for(task: Task, model, cfg: EvalConfig) -> GenerationConfig:
    base = model.cfg.generation
    if task.preset:
        base = get_preset(task.preset).generation(base)
    tokens = task.max_new_tokens if cfg.max_new_tokens is None else min(task.max_new_tokens, cfg.max_new_tokens)
    if task.name == "speed":
        tokens = cfg.speed_tokens
    over: dict[str, Any] = {"max_new_tokens": tokens}
    if cfg.sample:
        over["seed"] = cfg.seed
    else:
        over["do_sample"] = False
    return dataclasses.replace(base, **over)


def message_for(text: str, image, no_image: bool) -> Message:
    """The user message: the image attached, or (bare LLM) no image at all - no image slots."""
    return Message("user", text, images=[] if no_image else [image])


def build_items(model, cfg: EvalConfig, task_name: str) -> list[Item]:
    task = TASKS[task_name]
    size = image_size_for(model, cfg)
    gen = generation_for(task, model, cfg)
    # an answer about the picture ("ask" for qa), with an image to check against
    ground = cfg.ground and not cfg.no_image and (task.preset is None or get_preset(task.preset).groundable)
    items = []
    for i in range(cfg.n):
        s = generate(task.kind, cfg.seed + i, cfg.split, size)
        if task.name == "qa":
            for q in _pick_questions(s.qa, cfg.qa_per_image):
                text = f"{q['question']} {SHORT_ANSWER}"
                items.append(Item(task.name, s, text, Request([message_for(text, s.image, cfg.no_image)], gen,
                                                              ground=ground), q))
        else:
            text = get_preset(task.preset).build_prompt()
            items.append(Item(task.name, s, text, Request([message_for(text, s.image, cfg.no_image)], gen,
                                                          ground=ground)))
    return items


def _dedupe_key(it: Item, sampling: bool):
    """Items whose answers must be identical share one generation: greedy, same text, same image
    (or none - the bare LLM gets the same describe prompt for every image). None: never shared."""
    if sampling:
        return None
    images = tuple(it.sample.image_id if m.images else None for m in it.request.messages)
    return (tuple(m.text for m in it.request.messages), images, repr(it.request.gen))


def generate_items(engine: ChatEngine, items: list[Item], batch_size: int, desc: str, progress: bool = True,
                   sampling: bool = False) -> None:
    from tqdm.auto import tqdm
    groups: dict = {}
    for i, it in enumerate(items):
        key = _dedupe_key(it, sampling)
        groups.setdefault(key if key is not None else ("item", i), []).append(it)
    unique = list(groups.values())
    with tqdm(total=len(items), desc=desc, unit="ans", disable=not progress, leave=False) as bar:
        for start in range(0, len(unique), batch_size):
            batch = unique[start:start + batch_size]
            for group, res in zip(batch, engine.generate([g[0].request for g in batch])):
                for it in group:
                    it.result = res
            bar.update(sum(len(g) for g in batch))


# --- scoring per task ---------------------------------------------------------------------------
def _postprocess(it: Item) -> str:
    text = it.result.text if it.result else ""
    preset = TASKS[it.task].preset
    return get_preset(preset).postprocess(text) if preset else text.strip()


def score_items(items: list[Item]) -> dict[str, Any]:
    """Task metrics (means over items) from answered items; fills each item's scores/broken."""
    if not items:
        return {}
    task = items[0].task
    for it in items:
        it.answer = _postprocess(it)
        raw, finish = (it.result.text, it.result.finish_reason) if it.result else ("", None)
        s, truth = it.sample, it.sample.truth
        if task == "qa":
            it.scores = {"correct": float(answer_correct(raw, it.question["answer"], it.question["type"]))}
            continue
        if task == "describe":
            bad, mentions = object_mentions(raw, truth)
            it.scores = {"chair_i": pooled_chair_i([(bad, mentions)]), "object_recall": object_recall(raw, truth),
                         "hallucinated": float(bad), "mentions": float(mentions)}
        elif task == "sketch":
            it.scores = {"structure_match": structure_match(it.answer, s.html)}
        elif task == "recipe":
            hits = ingredient_hits(raw, truth)
            it.scores = {"ingredient_recall": ingredient_recall(raw, truth),
                         "ingredients_seen": float(sum(not h for _, h, _ in hits)),
                         "ingredients_seen_named": float(sum(not h and ok for _, h, ok in hits)),
                         "ingredients": float(len(hits))}
        elif task == "prompt":
            it.scores = {"prompt_similarity": prompt_similarity(it.answer, s.prompt)}
        if task in ("describe", "recipe", "prompt"):  # prose answers; HTML is not prose
            it.broken = broken_reasons(raw, finish, BrokenConfig(prose=task != "prompt"))
            it.scores["broken"] = float(bool(it.broken))
    if task == "qa":
        return qa_scores([it.result.text if it.result else "" for it in items], [it.question for it in items],
                         heldout_names())
    keys = items[0].scores.keys()
    counts = ("hallucinated", "mentions",  # describe: CHAIR_i pools them instead of averaging the texts' rates
              "ingredients_seen", "ingredients_seen_named", "ingredients")
    out = {k: sum(it.scores[k] for it in items) / len(items) for k in keys if k not in counts}
    if task == "recipe":  # every test dish holds a held-out ingredient, which no model trained here can name
        seen = sum(it.scores["ingredients_seen"] for it in items)
        out["ingredient_recall:seen"] = sum(it.scores["ingredients_seen_named"] for it in items) / seen if seen else 1.0
        out["ingredient_recall:best_without_heldout"] = sum(
            it.scores["ingredients_seen"] / it.scores["ingredients"] if it.scores["ingredients"] else 1.0
            for it in items) / len(items)
    if task == "describe":
        out["chair_i"] = pooled_chair_i((it.scores["hallucinated"], it.scores["mentions"]) for it in items)
        out["no_objects_named"] = sum(it.scores["mentions"] == 0 for it in items) / len(items)
    return out


def broken_summary(items: list[Item]) -> dict[str, Any]:
    checked = [it for it in items if "broken" in it.scores]
    counts = {r: sum(r in it.broken for it in checked) for r in REASONS}
    return {"checked": len(checked), "broken": sum(bool(it.broken) for it in checked),
            "rate": (sum(bool(it.broken) for it in checked) / len(checked)) if checked else None,
            "by_reason": counts}


# --- speed ----------------------------------------------------------------------------------------
def measure_speed(model, image, runs: int = 3, tokens: int = 100, no_image: bool = False,
                  prompt: str | None = None, ground: bool = False) -> dict[str, float]:
    """Seconds for one `tokens`-token answer including the image encode (cold cache), mean of `runs`.
    EOS and the end symbol are ignored so every run produces exactly `tokens` tokens."""
    engine = ChatEngine(model)
    engine.eos_ids = set()                      # never stop early: the answer is exactly `tokens` long
    engine.end_symbol = "\x00never-stop\x00"
    prompt = prompt or get_preset("describe").prompt
    gen = dataclasses.replace(model.cfg.generation, max_new_tokens=tokens, do_sample=False, stop=())
    req = Request([message_for(prompt, image, no_image)], gen, ground=ground and not no_image)
    engine.generate([dataclasses.replace(req, gen=dataclasses.replace(gen, max_new_tokens=2))])  # warm-up
    times, done = [], []
    for _ in range(runs):
        model.clear_cache()  # cold image cache: the encode is part of the answer time
        t0 = time.perf_counter()
        res = engine.generate([req])[0]
        times.append(time.perf_counter() - t0)
        done.append(res.completion_tokens)
    mean = sum(times) / len(times)
    return {"seconds": mean, "tokens": sum(done) / len(done), "tokens_per_s": sum(done) / sum(times),
            "runs": runs, "min_seconds": min(times)}


# --- the whole run --------------------------------------------------------------------------------
def run_eval(model, cfg: EvalConfig, name: str = "model",
             on_task: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Evaluate `model`; returns the report dict (config, metrics, per-item records, examples).
    The `Item`s are kept under the "_items" key for report writing (not serialised)."""
    engine = ChatEngine(model)
    metrics: dict[str, Any] = {}
    all_items: list[Item] = []
    timings = {}
    for task in cfg.tasks:
        if on_task:
            on_task(task)
        t0 = time.perf_counter()
        if task == "speed":
            img = generate("scene", cfg.seed, cfg.split, image_size_for(model, cfg)).image
            metrics["speed"] = measure_speed(model, img, cfg.speed_runs, cfg.speed_tokens, cfg.no_image,
                                             ground=cfg.ground)
        else:
            items = build_items(model, cfg, task)
            generate_items(engine, items, cfg.batch_size, f"{name}: {task}", cfg.progress, cfg.sample)
            metrics[task] = score_items(items)
            all_items.extend(items)
        timings[task] = time.perf_counter() - t0
    if any("broken" in it.scores for it in all_items):
        metrics["broken"] = broken_summary(all_items)
    return {"model": name, "no_image": cfg.no_image, "config": _config_dict(cfg),
            "metrics": metrics, "timings_s": timings, "items": [_item_record(it) for it in all_items],
            "_items": all_items}


def _config_dict(cfg: EvalConfig) -> dict:
    d = dataclasses.asdict(cfg)
    d["tasks"] = list(cfg.tasks)
    return d


def _item_record(it: Item) -> dict:
    r = it.result
    return {"task": it.task, "image_id": it.sample.image_id, "prompt": it.prompt,
            "expected": it.question["answer"] if it.question else None,
            "question_type": it.question["type"] if it.question else None,
            "output": r.text if r else "", "finish_reason": r.finish_reason if r else None,
            "prompt_tokens": r.prompt_tokens if r else 0, "completion_tokens": r.completion_tokens if r else 0,
            "scores": it.scores, "broken": it.broken}
