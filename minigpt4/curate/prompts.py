"""The prompts of the paper's stage-2 data curation (MiniGPT-4, section 3.2), word for word."""
from __future__ import annotations

from pathlib import Path

# Step 1: what the stage-1 model is asked about every image.
DESCRIBE_PROMPT = "Describe this image in detail. Give as many details as possible. Say everything you see."
# Asked in the same conversation when the first answer is shorter than CONTINUE_BELOW_TOKENS.
CONTINUE_PROMPT = "Continue"
CONTINUE_BELOW_TOKENS = 80

# Step 2: the instruction ChatGPT got with every description.
FIX_PROMPT = ("Fix the error in the given paragraph. Remove any repeating sentences, meaningless "
              "characters, not English sentences, and so on. Remove unnecessary repetition. Rewrite any "
              "incomplete sentences. Return directly the results without explanation. Return directly "
              "the input paragraph if it is already correct without explanation.")

PARAGRAPH_SLOT = "{paragraph}"


def fix_message(paragraph: str, prompt: str = FIX_PROMPT) -> str:
    """The one user message a fixer gets: the prompt, then the paragraph.

    A custom prompt may place the paragraph itself with a literal `{paragraph}`; otherwise the
    paragraph follows the prompt after a blank line."""
    if PARAGRAPH_SLOT in prompt:
        return prompt.replace(PARAGRAPH_SLOT, paragraph)
    return f"{prompt}\n\n{paragraph}"


def read_prompt_file(path: str | Path) -> str:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"prompt file '{p}' does not exist; pass a UTF-8 text file with the prompt")
    text = p.read_text(encoding="utf-8").strip()
    if not text:
        raise ValueError(f"prompt file '{p}' is empty; write the prompt into it")
    return text
