"""Reports: report.json (everything), report.md (headline table with the issue's targets,
per-type QA accuracy, broken-output reasons, good and bad examples with thumbnails), and the
side-by-side table of a comparison (before/after stage 2, bare LLM). All files written atomically."""
from __future__ import annotations

import html
import io
import re
from pathlib import Path
from typing import Any

from minigpt4.utils import atomic_write_bytes, atomic_write_json, atomic_write_text

# (label, path into metrics, target text, format)
HEADLINE: list[tuple[str, tuple[str, ...], str, str]] = [
    ("attribute Q&A accuracy (object, color, count, position)", ("qa", "attribute"), ">= 90%", "pct"),
    ("... on questions about kinds seen in training", ("qa", "attribute:seen"), "", "pct"),
    ("... on questions about held-out kinds", ("qa", "attribute:heldout"), "", "pct"),
    ("all Q&A accuracy", ("qa", "all"), "", "pct"),
    ("hallucinated objects, CHAIR_i (describe; of all object mentions)", ("describe", "chair_i"), "<= 5%", "pct"),
    ("object recall (describe)", ("describe", "object_recall"), "", "pct"),
    ("... descriptions that name no object", ("describe", "no_objects_named"), "", "pct"),
    ("broken outputs (describe, recipe, prompt)", ("broken", "rate"), "<= 2%", "pct"),
    ("sketch -> HTML structure match", ("sketch", "structure_match"), ">= 80%", "pct"),
    ("recipe ingredient recall", ("recipe", "ingredient_recall"), ">= 80%", "pct"),
    ("... of the ingredients of kinds seen in training", ("recipe", "ingredient_recall:seen"), "", "pct"),
    ("... best possible naming no held-out kind", ("recipe", "ingredient_recall:best_without_heldout"), "", "pct"),
    ("prompt re-render similarity", ("prompt", "prompt_similarity"), "", "pct"),
    ("100-token answer incl. image encode (s)", ("speed", "seconds"), "< 5 s", "sec"),
    ("decode speed (tokens/s)", ("speed", "tokens_per_s"), "", "num"),
]
METRICS_FILE = {"report": "report.json", "markdown": "report.md"}


def lookup(metrics: dict, path: tuple[str, ...]) -> Any:
    cur: Any = metrics
    for k in path:
        if not isinstance(cur, dict) or k not in cur:
            return None
        cur = cur[k]
    return cur


def fmt(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "pct":
        return f"{100 * value:.1f}%"
    if kind == "sec":
        return f"{value:.2f}"
    return f"{value:.1f}"


def headline_rows(report: dict) -> list[tuple[str, str, str]]:
    m = report["metrics"]
    return [(label, fmt(lookup(m, path), kind), target) for label, path, target, kind in HEADLINE
            if lookup(m, path) is not None]


def _primary(rec: dict) -> float:
    """One number per answer for picking good/bad examples (higher is better)."""
    s = rec["scores"]
    if rec["task"] == "qa":
        return s.get("correct", 0.0)
    score = s.get("object_recall", 0) - s.get("chair_i", 0) + s.get("structure_match", 0) \
        + s.get("ingredient_recall", 0) + s.get("prompt_similarity", 0)
    return score - s.get("broken", 0)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "model"


def _thumb(sample, out_dir: Path, size: int = 128) -> str:
    rel = f"thumbs/{_safe(sample.image_id)}.png"
    path = out_dir / rel
    if not path.exists():
        im = sample.image.copy()
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        atomic_write_bytes(path, buf.getvalue())
    return rel


def _quote(text: str, limit: int = 400) -> str:
    text = " ".join(str(text).split())
    text = text if len(text) <= limit else text[:limit] + " ..."
    return html.escape(text).replace("|", "\\|")


def examples_md(report: dict, out_dir: Path, k: int) -> list[str]:
    items = report.get("_items") or []
    lines: list[str] = []
    by_task: dict[str, list] = {}
    for it, rec in zip(items, report["items"]):
        by_task.setdefault(rec["task"], []).append((it, rec))
    for task, pairs in by_task.items():
        ranked = sorted(pairs, key=lambda p: _primary(p[1]), reverse=True)
        picks = [("good", p) for p in ranked[:k]] + [("bad", p) for p in ranked[::-1][:k] if p not in ranked[:k]]
        lines += [f"### {task}", "", "| | image | prompt | output | scores |", "|---|---|---|---|---|"]
        for label, (it, rec) in picks:
            img = _thumb(it.sample, out_dir)
            scores = ", ".join(f"{k_}={v:.2f}" for k_, v in rec["scores"].items())
            if rec["broken"]:
                scores += f"; broken: {', '.join(rec['broken'])}"
            if rec["expected"] is not None:
                scores += f"; expected: {html.escape(str(rec['expected']))}"
            lines.append(f"| {label} | ![{rec['image_id']}]({img}) | {_quote(rec['prompt'], 120)} | "
                         f"{_quote(rec['output'])} | {scores} |")
        lines.append("")
    return lines


def report_markdown(report: dict, out_dir: Path) -> str:
    cfg, m = report["config"], report["metrics"]
    lines = [f"# Evaluation: {report['model']}" + (" (bare LLM, no image)" if report["no_image"] else ""), "",
             f"split `{cfg['split']}`, {cfg['n']} images per task, tasks {', '.join(cfg['tasks'])}, "
             f"{'sampling' if cfg['sample'] else 'greedy decoding'}"
             + (f", at most {cfg['max_new_tokens']} new tokens" if cfg.get("max_new_tokens") else ""), "",
             "| metric | value | target |", "|---|---|---|"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in headline_rows(report)]
    if "qa" in m:
        types = [k for k in m["qa"] if k not in ("all", "attribute") and ":" not in k]
        lines += ["", "## Q&A accuracy per question type", "", "| type | accuracy | questions |", "|---|---|---|"]
        counts = {}
        for rec in report["items"]:
            if rec["task"] == "qa":
                counts[rec["question_type"]] = counts.get(rec["question_type"], 0) + 1
        lines += [f"| {t} | {fmt(m['qa'][t], 'pct')} | {counts.get(t, 0)} |" for t in sorted(types)]
    if "broken" in m:
        b = m["broken"]
        lines += ["", f"## Broken outputs: {b['broken']} of {b['checked']}", "", "| reason | count |", "|---|---|"]
        lines += [f"| {r} | {c} |" for r, c in b["by_reason"].items()]
    if "speed" in m:
        s = m["speed"]
        what = "(no image: no encode)" if report["no_image"] else "incl. image encode"
        lines += ["", f"Speed: {s['seconds']:.2f} s per {s['tokens']:.0f}-token answer {what} "
                      f"(cold cache, mean of {s['runs']}, best {s['min_seconds']:.2f} s), {s['tokens_per_s']:.1f} tokens/s."]
    if report.get("_items"):
        lines += ["", "## Examples (best and worst per task)", ""]
        lines += examples_md(report, out_dir, int(cfg.get("examples", 2)))
    return "\n".join(lines) + "\n"


def public(report: dict) -> dict:
    return {k: v for k, v in report.items() if not k.startswith("_")}


def write_report(report: dict, out_dir: str | Path) -> Path:
    """report.json + report.md (+ thumbs/) in `out_dir`; returns the markdown path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "report.json", public(report))
    md = out / "report.md"
    atomic_write_text(md, report_markdown(report, out))
    return md


def compare_markdown(reports: list[dict]) -> str:
    names = [r["model"] + (" (no image)" if r["no_image"] else "") for r in reports]
    lines = ["# Evaluation: side by side", "",
             "| metric | " + " | ".join(names) + " | target |", "|---" * (len(names) + 2) + "|"]
    for label, path, target, kind in HEADLINE:
        vals = [lookup(r["metrics"], path) for r in reports]
        if all(v is None for v in vals):
            continue
        lines.append(f"| {label} | " + " | ".join(fmt(v, kind) for v in vals) + f" | {target} |")
    types = sorted({t for r in reports for t in (r["metrics"].get("qa") or {}) if t not in ("all", "attribute") and ":" not in t})
    for t in types:
        lines.append(f"| Q&A: {t} | " + " | ".join(fmt(lookup(r["metrics"], ("qa", t)), "pct") for r in reports) + " | |")
    cfg = reports[0]["config"]
    lines += ["", f"split `{cfg['split']}`, {cfg['n']} images per task; each model's full report is in its folder."]
    return "\n".join(lines) + "\n"


def write_compare(reports: list[dict], out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "compare.json", [public(r) for r in reports])
    md = out / "compare.md"
    atomic_write_text(md, compare_markdown(reports))
    return md


def folder_name(report: dict, index: int) -> str:
    return f"{index + 1}-{_safe(Path(report['model']).name)}" + ("-no-image" if report["no_image"] else "")
