"""Stage-2 data curation (MiniGPT-4 paper, section 3.2): describe -> fix -> filter -> human review
(or `check`: the review against ground truth, for world exports).

    from minigpt4.curate import RunConfig, run, Describer, RuleFixer, OpenAIFixer, OpenAIFixerConfig
    run(RunConfig(out="cur", images="imgs/"), lambda: Describer(ChatEngine(model)), RuleFixer())

Every item's state lives in `OUT/state.sqlite` (see `store.py`), so runs resume after any kill.
Names are imported lazily: the review server and `curate report` never pay for torch.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "clean": "clean",
    "CheckConfig": "check", "check": "check", "judge": "check",
    "Describer": "describe", "Description": "describe",
    "build_report": "export", "export": "export",
    "RULES": "filters", "FilterConfig": "filters", "FilterResult": "filters", "apply_filters": "filters",
    "FixOutcome": "fixers", "Fixer": "fixers", "FixerConfigError": "fixers", "LocalFixer": "fixers",
    "OpenAIFixer": "fixers", "OpenAIFixerConfig": "fixers", "RuleFixer": "fixers",
    "RunConfig": "pipeline", "run": "pipeline",
    "CONTINUE_PROMPT": "prompts", "DESCRIBE_PROMPT": "prompts", "FIX_PROMPT": "prompts",
    "Item": "store", "Store": "store",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'minigpt4.curate' has no attribute '{name}'")
    return getattr(importlib.import_module(f"minigpt4.curate.{_EXPORTS[name]}"), name)
