"""Stage-2 data curation (MiniGPT-4 paper, section 3.2): describe -> fix -> filter -> human review.

    from minigpt4.curate import RunConfig, run, Describer, RuleFixer, OpenAIFixer, OpenAIFixerConfig
    run(RunConfig(out="cur", images="imgs/"), lambda: Describer(ChatEngine(model)), RuleFixer())

Every item's state lives in `OUT/state.sqlite` (see `store.py`), so runs resume after any kill.
"""
from minigpt4.curate.clean import clean
from minigpt4.curate.describe import Describer, Description
from minigpt4.curate.export import build_report, export
from minigpt4.curate.filters import RULES, FilterConfig, FilterResult, apply_filters
from minigpt4.curate.fixers import (FixOutcome, Fixer, FixerConfigError, LocalFixer, OpenAIFixer,
                                    OpenAIFixerConfig, RuleFixer)
from minigpt4.curate.pipeline import RunConfig, run
from minigpt4.curate.prompts import CONTINUE_PROMPT, DESCRIBE_PROMPT, FIX_PROMPT
from minigpt4.curate.store import Item, Store

__all__ = ["clean", "Describer", "Description", "build_report", "export", "RULES", "FilterConfig",
           "FilterResult", "apply_filters", "FixOutcome", "Fixer", "FixerConfigError", "LocalFixer",
           "OpenAIFixer", "OpenAIFixerConfig", "RuleFixer", "RunConfig", "run", "CONTINUE_PROMPT",
           "DESCRIBE_PROMPT", "FIX_PROMPT", "Item", "Store"]
