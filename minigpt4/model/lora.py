"""LoRA on the LLM through PEFT (MiniGPT-v2 style: r 64, alpha 16 on q/v)."""
from __future__ import annotations

from minigpt4.utils import require


def add_lora(model, spec: dict) -> None:
    """Inject LoRA adapters into `model.llm` in place; only the adapter weights train."""
    require("peft", "pip install peft")
    from peft import LoraConfig, inject_adapter_in_model
    if any("lora_" in n for n, _ in model.llm.named_parameters()):
        return
    cfg = LoraConfig(r=spec.get("r", 64), lora_alpha=spec.get("alpha", 16),
                     lora_dropout=spec.get("dropout", 0.05),
                     target_modules=list(spec.get("target_modules", ["q_proj", "v_proj"])))
    inject_adapter_in_model(cfg, model.llm)
    for name, p in model.llm.named_parameters():
        p.requires_grad_("lora_" in name)


def lora_pairs(tensors: dict) -> dict[str, dict[str, "torch.Tensor"]]:
    """{'llm.model.layers.0.self_attn.q_proj': {'A': ..., 'B': ...}} from PEFT adapter keys
    ('...q_proj.lora_A.default.weight' or '...q_proj.lora_A.weight'). Raises on a half pair."""
    import re
    pairs: dict[str, dict] = {}
    for key, t in tensors.items():
        m = re.fullmatch(r"(.+)\.lora_([AB])(?:\.[^.]+)?\.weight", key)
        if m is None:
            raise ValueError(f"'{key}' is not a LoRA adapter weight (expected '<module>.lora_A|B[.name].weight')")
        pairs.setdefault(m.group(1), {})[m.group(2)] = t
    half = sorted(k for k, ab in pairs.items() if set(ab) != {"A", "B"})
    if half:
        raise ValueError(f"LoRA adapters without their A/B partner: {half[:3]}; the file is incomplete")
    return pairs


def merge_lora(model, tensors: dict, spec: dict) -> int:
    """Fold trained LoRA adapters into the frozen LLM's own weights, W += (alpha / r) * B @ A, for
    inference: the model stays a plain LLM (same decode speed, int8 still applies, no PEFT needed).
    Every adapter must name an existing Linear weight of the right shape. Returns the count merged."""
    import torch
    scale = float(spec.get("alpha", 16)) / float(spec.get("r", 64))
    params = dict(model.named_parameters())
    pairs = lora_pairs(tensors)
    for module, ab in pairs.items():
        w = params.get(f"{module}.weight")
        if w is None:
            raise ValueError(f"LoRA adapter for '{module}', but the model has no such weight: the adapters "
                             f"belong to another LLM")
        delta = ab["B"].float() @ ab["A"].float()
        if delta.shape != w.shape:
            raise ValueError(f"LoRA adapter for '{module}' makes {tuple(delta.shape)}, the weight is "
                             f"{tuple(w.shape)}: the adapters belong to another LLM")
        with torch.no_grad():
            w.add_((delta * scale).to(w.dtype))
    # The LLM no longer equals the file it was loaded from: saving must store it, not reference it.
    getattr(model, "llm", model).minigpt4_adapters_merged = True
    return len(pairs)
