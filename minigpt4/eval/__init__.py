"""Evaluation on the held-out image world (issue 6): `minigpt4 eval`.

    from minigpt4.eval import EvalConfig, run_eval, write_report
    report = run_eval(model, EvalConfig(split="test", n=50))   # metrics + per-answer records
    write_report(report, "eval-report")                          # report.json, report.md, thumbs/

Parts: `runner` (tasks, batched generation, scoring), `scoring` (QA answers fair to free text),
`broken` (repetition / gibberish / junk / cut-off detector), `report` (markdown, comparison table),
`words` (shipped common-English list + the world's vocabulary).
"""
from minigpt4.eval.broken import REASONS, BrokenConfig, broken_reasons, is_broken
from minigpt4.eval.report import compare_markdown, write_compare, write_report
from minigpt4.eval.runner import TASKS, EvalConfig, measure_speed, run_eval
from minigpt4.eval.scoring import answer_correct, qa_scores

__all__ = ["EvalConfig", "TASKS", "run_eval", "measure_speed", "write_report", "write_compare",
           "compare_markdown", "broken_reasons", "is_broken", "BrokenConfig", "REASONS",
           "answer_correct", "qa_scores"]
