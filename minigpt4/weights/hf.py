"""The LLM half of a converted folder: copy a Hugging Face directory, or save an in-memory LLM
(random, GGUF-dequantised, LoRA-wrapped) as config + safetensors + tokenizer; count its parameters
without allocating them.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from minigpt4.model.llm import save_llm_folder

# Files of a Hugging Face model directory that a converted folder needs (weights as safetensors).
HF_FILES = ("*.safetensors", "*.safetensors.index.json", "config.json", "generation_config.json",
            "tokenizer*", "special_tokens_map.json", "chat_template.jinja", "*.model", "vocab.json",
            "merges.txt", "added_tokens.json")


def copy_hf_dir(src: Path, dst: Path) -> bool:
    """Copy the safetensors + config + tokenizer files of `src` into `dst`. Returns False when the
    directory has no safetensors (old `.bin` pickles): the caller loads and re-saves instead."""
    if not list(src.glob("*.safetensors")):
        return False
    dst.mkdir(parents=True, exist_ok=True)
    for pattern in HF_FILES:
        for f in src.glob(pattern):
            if f.is_file():
                shutil.copy2(f, dst / f.name)
    return True


def save_llm(llm, tokenizer, out: Path) -> None:
    """Save the base LLM (without LoRA adapters, which live in the model's own safetensors)."""
    if not any("lora_" in n for n, _ in llm.named_parameters()):
        save_llm_folder(llm, tokenizer, out)
        return
    # PEFT-injected layers hold the original Linear as `.base_layer`: save under the plain names.
    from minigpt4.utils import atomic_save_safetensors, atomic_write_text
    out.mkdir(parents=True, exist_ok=True)
    state = {k.replace(".base_layer.", "."): v for k, v in llm.state_dict().items() if "lora_" not in k}
    if getattr(llm.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)
    atomic_save_safetensors(state, out / "model.safetensors")
    cfg = llm.config.to_dict()
    cfg.pop("quantization_config", None)
    atomic_write_text(out / "config.json", json.dumps(cfg, indent=2))
    tokenizer.save_pretrained(out)


def count_params_from_config(config_dir: Path) -> int | None:
    """Parameter count of the causal LM in `config_dir`: from the safetensors headers when present
    (no tensor is read), else by building the model from config.json on the meta device."""
    if not (config_dir / "config.json").is_file():
        return None
    shards = sorted(config_dir.glob("*.safetensors"))
    if shards:
        from safetensors import safe_open
        total = 0
        for f in shards:
            with safe_open(str(f), "pt") as sf:
                for k in sf.keys():
                    n = 1
                    for d in sf.get_slice(k).get_shape():
                        n *= d
                    total += n
        return total
    from transformers import AutoConfig, AutoModelForCausalLM
    cfg = AutoConfig.from_pretrained(config_dir, local_files_only=True)
    with torch.device("meta"):
        llm = AutoModelForCausalLM.from_config(cfg)
    return sum(p.numel() for p in llm.parameters())


def count_params_from_arch(arch: dict) -> int:
    from transformers import LlamaConfig, LlamaForCausalLM
    with torch.device("meta"):
        llm = LlamaForCausalLM(LlamaConfig(**arch))
    return sum(p.numel() for p in llm.parameters())
