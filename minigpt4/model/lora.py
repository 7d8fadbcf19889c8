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
