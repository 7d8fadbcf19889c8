"""`minigpt4 curate run|review|export|report`: the stage-2 data curation loop from the command line.

    minigpt4 curate run --images imgs/ --out cur/ --model tiny --fixer rules        # offline
    minigpt4 curate run --images imgs/ --out cur/ --base-url http://host/v1 --fixer-model gpt-4o-mini
    minigpt4 curate review cur/          # approve / edit / reject in the browser
    minigpt4 curate check cur/ --truth world/data.jsonl   # ... or let ground truth decide (world exports)
    minigpt4 curate export cur/          # filter_cap.json (cc_sbu_align) + provenance + report
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(subparsers) -> None:
    from minigpt4.cli_common import add_generation_args, add_model_args

    p = subparsers.add_parser("curate", help="the stage-2 data curation loop (describe -> fix -> filter -> review)",
                              description="Make stage-2 fine-tuning data as the MiniGPT-4 paper did.")
    sub = p.add_subparsers(dest="curate_cmd", required=True, metavar="<step>")

    r = sub.add_parser("run", help="describe, fix and filter images (resumable: re-run to continue)")
    r.add_argument("--images", help="a folder of images, a .jsonl list ({\"image\": path}) or webdataset "
                                    ".tar shards ('shards/cc-{000..009}.tar'); omit to continue a run")
    r.add_argument("--out", required=True, help="the run's folder (state, images, outputs)")
    r.add_argument("--limit", type=int, default=None, help="only the first N images of the source")
    r.add_argument("--batch-size", type=int, default=8, help="images described together (default 8)")
    add_model_args(r)
    add_generation_args(r)
    d = r.add_argument_group("describe")
    d.add_argument("--describe-prompt", default=None, help="instead of the paper's 'Describe this image in detail...'")
    d.add_argument("--continue-below", type=int, default=None,
                   help="ask 'Continue' when the first answer has fewer tokens (paper: 80; 0 disables)")
    f = r.add_argument_group("fix")
    f.add_argument("--fixer", choices=["openai", "local", "rules"], default=None,
                   help="openai: any OpenAI-compatible endpoint (default when one is configured); local: a local "
                        "model through the chat engine; rules: the rule-based cleaner")
    f.add_argument("--prompt-file", default=None, help="fix prompt (default: the paper's, word for word); "
                                                      "may place the paragraph with {paragraph}")
    f.add_argument("--base-url", default=None, help="endpoint base URL, e.g. http://localhost:8000/v1 "
                                                   "(env OPENAI_BASE_URL; default https://api.openai.com/v1)")
    f.add_argument("--api-key", default=None, help="API key (env MINIGPT4_FIXER_API_KEY or OPENAI_API_KEY)")
    f.add_argument("--fixer-model", default=None, help="model name at the endpoint (env MINIGPT4_FIXER_MODEL; "
                                                      "default gpt-3.5-turbo); for --fixer local: a preset or folder")
    f.add_argument("--concurrency", type=int, default=8, help="requests in flight at once (default 8)")
    f.add_argument("--timeout", type=float, default=60.0, help="seconds per request (default 60)")
    f.add_argument("--max-attempts", type=int, default=6, help="tries per item on 429/5xx/timeouts (default 6)")
    f.add_argument("--backoff", type=float, default=1.0, help="first retry delay in seconds, doubling (default 1)")
    f.add_argument("--fixer-temperature", type=float, default=None)
    f.add_argument("--price-in", type=float, default=0.0, help="price per 1M prompt tokens, for the cost count")
    f.add_argument("--price-out", type=float, default=0.0, help="price per 1M completion tokens")
    f.add_argument("--no-retry-failed", action="store_true", help="leave items whose fix failed earlier alone")
    g = r.add_argument_group("filter / export")
    g.add_argument("--min-words", type=int, default=None, help="drop fixed texts with fewer words (default 20)")
    g.add_argument("--min-chars", type=int, default=None, help="drop fixed texts with fewer characters (default 80)")
    g.add_argument("--no-review", action="store_true",
                   help="export every item the rules kept, without the human check")
    r.add_argument("--retry-bad", action="store_true", help="read again the images an earlier run could not "
                                                          "read (after you replaced the files)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.set_defaults(func=cmd_run)

    v = sub.add_parser("review", help="review page on localhost: approve / edit / reject with keyboard shortcuts")
    v.add_argument("out", help="the run's folder")
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8765)
    v.set_defaults(func=cmd_review)

    c = sub.add_parser(
        "check", help="review automatically against ground truth (world exports): cut hallucinated sentences, "
                      "reject short or low-recall texts, approve the rest",
        description="The review step without a person, for images with ground truth (a world export's "
                    "data.jsonl, or any JSONL whose records hold a world-style \"truth\"). For each item the rules "
                    "kept and nobody has decided yet: sentences naming objects the image does not hold are cut "
                    "(decision 'edited', the rest kept word for word); the item is rejected when nothing is left, "
                    "when the rest is shorter than --min-words, or when it names fewer than --min-recall of the "
                    "image's object kinds; otherwise approved. Decisions are stored like the review page's, "
                    "with the reviewer's name and reason (provenance.jsonl); a person's decision is never "
                    "overwritten, re-running repeats nothing, and outputs are re-exported at the end.",
        epilog="example: python -m minigpt4.world export --out world --n 1000 --size 128 --format jpg; "
               "minigpt4 curate run --images world/data.jsonl --out cur --fixer rules; "
               "minigpt4 curate check cur --truth world/data.jsonl")
    c.add_argument("out", help="the run's folder")
    c.add_argument("--truth", required=True, metavar="PATH/data.jsonl",
                   help="JSONL with a \"truth\" per image; matched to items by image path, then image_id, "
                        "then file name")
    c.add_argument("--max-hallucinated", type=int, default=0, metavar="N",
                   help="hallucinated object mentions a text may keep unedited (default 0: cut every one)")
    c.add_argument("--min-recall", type=float, default=0.5, metavar="R",
                   help="reject texts naming less than this fraction of the image's object kinds (default 0.5)")
    c.add_argument("--min-words", type=int, default=None, metavar="N",
                   help="reject texts with fewer words after the cut (default: the run's filter --min-words, 20)")
    c.add_argument("--reviewer", default="truth-check", help="name recorded with each decision (default truth-check)")
    c.add_argument("--redo", action="store_true",
                   help="first undo this reviewer's earlier decisions (after changing the limits or the checker); "
                        "a person's decisions are never touched")
    c.add_argument("--no-progress", action="store_true", help="no progress bar")
    c.set_defaults(func=cmd_check)

    e = sub.add_parser("export", help="write filter_cap.json (cc_sbu_align), provenance.jsonl and the report")
    e.add_argument("out", help="the run's folder")
    e.add_argument("--no-review", action="store_true", help="export every kept item, reviewed or not "
                                                            "(rejected ones stay out)")
    e.set_defaults(func=cmd_export)

    s = sub.add_parser("report", help="print the counts per step")
    s.add_argument("out", help="the run's folder")
    s.add_argument("--json", action="store_true", help="print report.json instead of the table")
    s.set_defaults(func=cmd_report)


# --- run -----------------------------------------------------------------------------------
def _fixer_kind(args: argparse.Namespace) -> str:
    if args.fixer:
        return args.fixer
    configured = args.base_url or args.api_key or any(
        os.environ.get(k) for k in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "MINIGPT4_FIXER_API_KEY"))
    if not configured:
        from minigpt4.cli_common import CLIError
        raise CLIError("no fixer endpoint is configured: pass --base-url/--api-key (or set OPENAI_BASE_URL / "
                       "OPENAI_API_KEY) for an OpenAI-compatible endpoint, or choose an offline fixer with "
                       "--fixer rules or --fixer local")
    return "openai"


def _make_fixer(args: argparse.Namespace, kind: str, prompt: str, get_model):
    from minigpt4.curate import fixers
    if kind == "rules":
        return fixers.RuleFixer()
    if kind == "local":
        from minigpt4.chat.engine import ChatEngine
        if args.fixer_model and args.fixer_model != args.model:
            from minigpt4.weights import load_model
            from minigpt4.cli_common import check_device_args
            device, dtype = check_device_args(args)
            model = load_model(args.fixer_model, device=device, dtype=dtype).eval()
        else:
            model = get_model()  # the describing model's LLM, text only
        return fixers.LocalFixer(ChatEngine(model), prompt=prompt)
    cfg = fixers.OpenAIFixerConfig.from_env(
        base_url=args.base_url, api_key=args.api_key, model=args.fixer_model, prompt=prompt,
        concurrency=args.concurrency, timeout=args.timeout, max_attempts=args.max_attempts,
        backoff_base=args.backoff, temperature=args.fixer_temperature, price_in=args.price_in,
        price_out=args.price_out)
    return fixers.OpenAIFixer(cfg)


def cmd_run(args: argparse.Namespace) -> int:
    from minigpt4.cli_common import generation_from_args, grounding_from_args, load_model_from_args
    from minigpt4.curate.describe import Describer
    from minigpt4.curate.filters import FilterConfig
    from minigpt4.curate.pipeline import RunConfig, run
    from minigpt4.curate.prompts import CONTINUE_BELOW_TOKENS, DESCRIBE_PROMPT, FIX_PROMPT, read_prompt_file

    kind = _fixer_kind(args)
    prompt = read_prompt_file(args.prompt_file) if args.prompt_file else FIX_PROMPT
    cache: dict = {}

    def get_model():
        if "model" not in cache:
            cache["model"] = load_model_from_args(args)
        return cache["model"]

    def make_describer():
        from minigpt4.chat.engine import ChatEngine
        model = get_model()
        gen = generation_from_args(args, model.cfg.generation)
        return Describer(ChatEngine(model), prompt=args.describe_prompt or DESCRIBE_PROMPT, gen=gen,
                         continue_below=CONTINUE_BELOW_TOKENS if args.continue_below is None else args.continue_below,
                         ground=grounding_from_args(args, model))

    defaults = FilterConfig()
    filters = FilterConfig(min_words=defaults.min_words if args.min_words is None else args.min_words,
                           min_chars=defaults.min_chars if args.min_chars is None else args.min_chars)
    cfg = RunConfig(out=args.out, images=args.images, limit=args.limit, batch_size=args.batch_size,
                    retry_failed=not args.no_retry_failed, retry_bad=args.retry_bad, require_review=not args.no_review, filters=filters,
                    progress=not args.no_progress)
    fixer = _make_fixer(args, kind, prompt, get_model)
    try:
        report = run(cfg, make_describer, fixer)
    finally:
        fixer.close()
    print(report["funnel"])
    if report["bad_images"]:
        print(f"{report['bad_images']} bad image(s) skipped; see {Path(args.out) / 'report.md'}")
    if report["fix"]["failed"]:
        print(f"{report['fix']['failed']} fix(es) failed (descriptions kept); re-run the same command to retry")
    if cfg.require_review:
        print(f"next: minigpt4 curate review {args.out}")
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    from minigpt4.curate.review import serve
    from minigpt4.curate.store import Store
    with Store(args.out, create=False) as store:
        require_review = store.get_meta("require_review", True)
    serve(args.out, args.host, args.port, require_review=require_review)
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from minigpt4.cli_common import CLIError
    from minigpt4.curate.check import CheckConfig, check
    from minigpt4.curate.export import export
    from minigpt4.curate.filters import FilterConfig
    from minigpt4.curate.store import Store

    with Store(args.out, create=False) as store:
        min_words = store.get_meta("filters", {}).get("min_words", FilterConfig().min_words)
        cfg = CheckConfig(max_hallucinated=args.max_hallucinated, min_recall=args.min_recall,
                          min_words=min_words if args.min_words is None else args.min_words, reviewer=args.reviewer)
        try:
            cfg.validate()
            if args.redo:
                from minigpt4.curate.check import undo_decisions
                print(f"{cfg.reviewer}: undid {undo_decisions(store, cfg.reviewer)} earlier decision(s)")
            summary = check(store, args.truth, cfg, progress=not args.no_progress)
        except (ValueError, FileNotFoundError) as e:
            raise CLIError(str(e)) from None
        report = export(store, store.get_meta("require_review", True))
    rules = ", ".join(f"{k} {v}" for k, v in sorted(summary["rules"].items()))
    print(f"{cfg.reviewer}: {summary['checked']} decided now ({summary['approved']} approved, {summary['edited']} "
          f"edited, {summary['rejected']} rejected{'; ' + rules if rules else ''}); "
          f"{summary['already_decided']} decided before, left as they were")
    if summary["no_truth"]:
        print(f"{len(summary['no_truth'])} item(s) have no record in {args.truth} and stay pending, e.g. "
              + ", ".join(summary["no_truth"][:5]))
    if summary["unknown_truth"]:
        print(f"{len(summary['unknown_truth'])} item(s) have a truth without objects, subjects, ingredients or "
              "blocks and stay pending for a person, e.g. " + ", ".join(summary["unknown_truth"][:5]))
    if summary["decided_meanwhile"]:
        print(f"{summary['decided_meanwhile']} item(s) were decided on the review page meanwhile; kept those")
    print(report["funnel"])
    print(f"wrote {Path(args.out) / 'filter_cap.json'} ({report['exported']} annotations), provenance.jsonl, report.md")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from minigpt4.curate.export import export
    from minigpt4.curate.store import Store
    with Store(args.out, create=False) as store:
        store.set_meta("require_review", not args.no_review)
        report = export(store, require_review=not args.no_review)
    print(report["funnel"])
    print(f"wrote {Path(args.out) / 'filter_cap.json'} ({report['exported']} annotations), provenance.jsonl, report.md")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import json

    from minigpt4.curate.export import build_report, report_markdown
    from minigpt4.curate.store import Store
    with Store(args.out, create=False) as store:
        report = build_report(store.items(), store.get_meta("require_review", True), store.get_meta("fixer_stats"))
    print(json.dumps(report, indent=2) if args.json else report_markdown(report), end="")
    return 0
