"""Outputs, regenerated from the store (atomically) whenever asked:

- `filter_cap.json`: the original `cc_sbu_align` format, `{"annotations": [{"image_id", "caption"}]}`,
  with images at `image/{image_id}.jpg`, so the original MiniGPT-4 code can train on it too;
- `provenance.jsonl`: one line per item with everything that happened to it;
- `report.json` / `report.md`: counts per step (the paper's "5,000 -> 3,500"), per filter rule,
  fixer tokens and cost, and the list of images that could not be read.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from minigpt4.curate.filters import RULE_NAMES
from minigpt4.curate.store import Item, Store
from minigpt4.utils import atomic_write_json, atomic_write_text


def selected(item: Item, require_review: bool) -> bool:
    """Does the item go into filter_cap.json?"""
    if item.filter_status != "kept":
        return False
    if require_review:
        return item.review in ("approved", "edited")
    return item.review != "rejected"


def _by_reviewer(items: list[Item]) -> dict[str, dict[str, Any]]:
    """Per reviewer ("human" on the review page, or an automatic one): decisions and, where the
    reviewer gave one, how many of each reason/rule."""
    out: dict[str, dict[str, Any]] = {}
    for i in items:
        if i.review is None:
            continue
        r = out.setdefault(i.reviewer or "human", {"approved": 0, "edited": 0, "rejected": 0, "rules": {}})
        r[i.review] += 1
        rule = i.review_reason.get("rule")
        if rule:
            key = f"{i.review}: {rule}"
            r["rules"][key] = r["rules"].get(key, 0) + 1
    return {k: {**v, "rules": dict(sorted(v["rules"].items()))} for k, v in sorted(out.items())}


def build_report(items: list[Item], require_review: bool, fixer_stats: dict[str, Any] | None = None) -> dict[str, Any]:
    def n(pred) -> int:
        return sum(1 for i in items if pred(i))

    rules = {name: {"repaired": 0, "dropped": 0} for name in RULE_NAMES}
    for i in items:
        for a in i.filter_rules:
            rules.setdefault(a["rule"], {"repaired": 0, "dropped": 0})
            rules[a["rule"]]["repaired" if a["action"] == "repair" else "dropped"] += 1
    fixer_names = sorted({i.fixer for i in items if i.fixer})
    report: dict[str, Any] = {
        "images": len(items),
        "bad_images": n(lambda i: i.describe_status == "bad"),
        "describe": {"done": n(lambda i: i.describe_status == "done"),
                     "pending": n(lambda i: i.describe_status == "pending"),
                     "continued": n(lambda i: bool(i.continued))},
        "fix": {"done": n(lambda i: i.fix_status == "done"), "failed": n(lambda i: i.fix_status == "failed"),
                "pending": n(lambda i: i.describe_status == "done" and i.fix_status == "pending"),
                "fixers": fixer_names,
                "attempts": sum(i.fix_attempts for i in items),
                "prompt_tokens": sum(i.fix_prompt_tokens for i in items),
                "completion_tokens": sum(i.fix_completion_tokens for i in items),
                "cost": round(sum(i.fix_cost for i in items), 6),
                "endpoint": fixer_stats or {}},
        "filter": {"kept": n(lambda i: i.filter_status == "kept"),
                   "dropped": n(lambda i: i.filter_status == "dropped"), "rules": rules},
        "review": {"approved": n(lambda i: i.review == "approved"), "edited": n(lambda i: i.review == "edited"),
                   "rejected": n(lambda i: i.review == "rejected"),
                   "pending": n(lambda i: i.filter_status == "kept" and i.review is None),
                   "by_reviewer": _by_reviewer(items)},
        "review_required": require_review,
        "exported": n(lambda i: selected(i, require_review)),
        "bad": [{"image_id": i.id, "source": i.source, "error": i.error} for i in items
                if i.describe_status == "bad"],
        "fix_failures": [{"image_id": i.id, "error": i.fix_error} for i in items if i.fix_status == "failed"],
    }
    rv = report["review"]
    review_step = ""
    if rv["approved"] + rv["edited"] + rv["rejected"]:
        # The paper's "5,000 -> 3,500": what the review (a person or an automatic reviewer) let through.
        review_step = (f"{rv['approved'] + rv['edited']} passed review ({rv['approved']} approved, {rv['edited']} "
                       f"edited, {rv['rejected']} rejected" + (f", {rv['pending']} pending" if rv["pending"] else "")
                       + ") -> ")
    report["funnel"] = (f"{report['images']} images -> {report['describe']['done']} described -> "
                        f"{report['fix']['done']} fixed -> {report['filter']['kept']} kept by the rules -> "
                        f"{review_step}{report['exported']} exported"
                        + (" (approved in review)" if require_review else " (no review)"))
    return report


def report_markdown(r: dict[str, Any]) -> str:
    lines = ["# Stage-2 curation report", "", f"**{r['funnel']}**", "",
             "| step | count |", "|---|---:|",
             f"| images | {r['images']} |", f"| bad images (skipped) | {r['bad_images']} |",
             f"| described | {r['describe']['done']} |",
             f"| ... of which continued (short first answer) | {r['describe']['continued']} |",
             f"| describe pending | {r['describe']['pending']} |",
             f"| fixed | {r['fix']['done']} |", f"| fix failed (kept, retried next run) | {r['fix']['failed']} |",
             f"| fix pending | {r['fix']['pending']} |",
             f"| kept by the filter rules | {r['filter']['kept']} |", f"| dropped by the rules | {r['filter']['dropped']} |",
             f"| review: approved | {r['review']['approved']} |", f"| review: edited | {r['review']['edited']} |",
             f"| review: rejected | {r['review']['rejected']} |", f"| review: pending | {r['review']['pending']} |",
             f"| exported to filter_cap.json | {r['exported']} |", ""]
    by = r["review"].get("by_reviewer") or {}
    if by:
        lines += ["## Review", "", "| reviewer | approved | edited | rejected |", "|---|---:|---:|---:|"]
        lines += [f"| {name} | {c['approved']} | {c['edited']} | {c['rejected']} |" for name, c in by.items()]
        reasons = [(name, rule, k) for name, c in by.items() for rule, k in c["rules"].items()]
        if reasons:
            lines += ["", "| reviewer | decision: reason | count |", "|---|---|---:|"]
            lines += [f"| {name} | {rule} | {k} |" for name, rule, k in reasons]
        lines.append("")
    lines += ["## Filter rules", "", "| rule | repaired | dropped |", "|---|---:|---:|"]
    lines += [f"| {name} | {c['repaired']} | {c['dropped']} |" for name, c in r["filter"]["rules"].items()]
    f = r["fix"]
    lines += ["", "## Fixer", "", f"fixers: {', '.join(f['fixers']) or '-'}; requests (incl. retries): {f['attempts']}; "
              f"prompt tokens: {f['prompt_tokens']}; completion tokens: {f['completion_tokens']}; cost: {f['cost']:.4f}"]
    if f["endpoint"].get("errors"):
        lines += ["", "endpoint errors (all retried or counted as failures): " +
                  ", ".join(f"{k} {v}" for k, v in sorted(f["endpoint"]["errors"].items()))]
    if r["bad"]:
        lines += ["", "## Bad images (skipped)", ""]
        lines += [f"- `{b['image_id']}` ({b['source'].get('path')}): {b['error']}" for b in r["bad"]]
    if r["fix_failures"]:
        lines += ["", "## Fix failures (descriptions kept; re-run to retry)", ""]
        lines += [f"- `{b['image_id']}`: {b['error']}" for b in r["fix_failures"]]
    return "\n".join(lines) + "\n"


def export(store: Store, require_review: bool = True) -> dict[str, Any]:
    """Write filter_cap.json, provenance.jsonl, report.json and report.md; return the report."""
    out = store.out_dir
    items = store.items()
    annotations = [{"image_id": i.id, "caption": i.caption} for i in items if selected(i, require_review)]
    atomic_write_json(out / "filter_cap.json", {"annotations": annotations})
    lines = []
    for i in items:
        rec = i.to_dict()
        rec["exported"] = selected(i, require_review)
        rec["caption"] = i.caption if rec["exported"] else None
        lines.append(json.dumps(rec, ensure_ascii=False))
    atomic_write_text(out / "provenance.jsonl", "\n".join(lines) + ("\n" if lines else ""))
    report = build_report(items, require_review, store.get_meta("fixer_stats"))
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", report_markdown(report))
    return report


def load_report(out_dir: str | Path) -> dict[str, Any]:
    return json.loads((Path(out_dir) / "report.json").read_text())
