"""`--quantize int8`: the LLM's Linear layers in int8 for CPU inference (vision side stays fp32).

Decode on CPU is bound by reading weights, so fewer bytes per weight is the lever. What was measured
on the project's 2-core Xeon (benchmarks/results/answer_speed.md has the numbers):
  * fbgemm's dynamic int8 linear (int8 weights, activations quantized per call) is 4-7x faster
    than fp32 on the decode shapes; torch._weight_int8pack_mm and a torch.compile'd weight-only
    int8 linear are 3-6x *slower* than fp32 there, so they are not used;
  * quantizing activations hurts a 135M model badly (top-1 agreement with fp32 0.60) because a few
    hidden channels carry huge values. SmoothQuant (Xiao et al. 2022) moves that range into the
    weights: each input channel j is divided by s_j in the op before and multiplied into column j of
    the Linear (exact in fp32), with s = act_max^a / weight_max^(1-a), act_max from a few calibration
    sentences. That lifts agreement to ~0.84;
  * down_proj's input (act(gate) * up) still does not quantize well, so it keeps its weights in
    fp16 (fbgemm fp16-weight linear: lossless here, ~1.5x faster than fp32). With it: ~0.94
    top-1 agreement, close to the 0.956 of int8 weights with exact fp32 activations.
The tied LM head (SmolLM2 shares it with the input embeddings) gets its own smoothed int8 copy;
the embedding table stays fp32. A quantized model is for inference only (no training, no saving).
"""
from __future__ import annotations

import functools
import logging
import warnings

import torch
from torch import nn

log = logging.getLogger(__name__)

CPU_MODES = ("int8",)          # ours, CPU only
CUDA_MODES = ("8bit", "4bit")  # bitsandbytes, CUDA only
ALL_MODES = CPU_MODES + CUDA_MODES

# SmoothQuant's migration strength; 0.5 and 0.75 measured alike on SmolLM2, 0.5 is the paper's default.
ALPHA = 0.5
CALIBRATION = (
    "Describe this image in detail: a red ball lies on green grass next to a small wooden house.",
    "A photo of a busy city street at night, with cars, bright shop signs and people walking.",
    "What is the capital of France? Paris is the capital and the most populous city of France.",
    "Question: how many cats are there? Answer: two. 1, 2, 3, 4, 5, 6, 7, 8, 9, 10.",
)


def int8_unsupported_reason() -> str | None:
    """Why the int8 path cannot run in this torch build, or None when it can."""
    engines = torch.backends.quantized.supported_engines
    if "fbgemm" not in engines and "x86" not in engines:
        return (f"this torch build has no x86 int8 kernels (quantized engines: {engines}); "
                f"drop --quantize int8")
    return None


def int8_problem(device: str | torch.device, dtype: str | torch.dtype) -> str | None:
    """Why `--quantize int8` cannot run on this device/dtype (or this torch build), or None. The one
    check behind the CLI's early error and `load_model`'s, made before the LLM is read."""
    if torch.device(device).type != "cpu":
        return ("--quantize int8 needs device cpu, dtype fp32: it is the CPU path (fbgemm int8 kernels); on "
                "CUDA use --quantize 8bit or 4bit (bitsandbytes), or add --device cpu")
    if dtype not in ("fp32", torch.float32):
        name = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, dtype)
        return (f"--quantize int8 needs device cpu, dtype fp32: it computes in fp32 around int8 weights; "
                f"drop --dtype {name} (or use --dtype fp32)")
    return int8_unsupported_reason()


@functools.lru_cache(maxsize=1)
def _reduce_range() -> bool:
    """fbgemm's int8 kernels without VNNI add u8*s8 pairs in int16 and can saturate; 7-bit activations
    avoid that at some accuracy cost. With VNNI (32-bit accumulate) the full 8 bits are safe."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return True
    return not ("avx512_vnni" in flags or "avx_vnni" in flags)


class Int8Linear(nn.Module):
    """y = x W^T + b with W int8 per output channel (prepacked for fbgemm), x quantized per call."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        w = weight.detach().float()
        scale = (w.abs().amax(1).clamp(min=1e-8) / 127).double()
        with warnings.catch_warnings():  # quantized tensors are deprecated, but fbgemm's prepack still takes one
            warnings.simplefilter("ignore", UserWarning)
            q = torch.quantize_per_channel(w, scale, torch.zeros(w.shape[0], dtype=torch.long), 0, torch.qint8)
        self._packed = torch.ops.quantized.linear_prepack(q, None if bias is None else bias.detach().float())
        self.in_features, self.out_features = w.shape[1], w.shape[0]
        self.reduce_range = _reduce_range()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic(x.float(), self._packed, self.reduce_range)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


class Fp16WeightLinear(nn.Module):
    """y = x W^T + b with W stored in fp16 (fbgemm), x and the accumulation in fp32."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self._packed = torch.ops.quantized.linear_prepack_fp16(
            weight.detach().float(), None if bias is None else bias.detach().float())
        self.in_features, self.out_features = weight.shape[1], weight.shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.quantized.linear_dynamic_fp16(x.float(), self._packed)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, fp16 weights"


def _layers(llm):
    """The decoder layers of a Llama-style causal LM (SmolLM2, LLaMA, Vicuna), or a clear error."""
    need = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
            "mlp.up_proj", "mlp.down_proj", "input_layernorm", "post_attention_layernorm")
    inner = getattr(llm, "model", None)
    layers = getattr(inner, "layers", None)

    def fits(layer) -> bool:
        return all(_has(layer, n) and (n.endswith("layernorm") or type(layer.get_submodule(n)) is nn.Linear)
                   for n in need)
    if (layers is None or getattr(inner, "norm", None) is None
            or type(getattr(llm, "lm_head", None)) is not nn.Linear or not all(fits(layer) for layer in layers)):
        raise ValueError(f"--quantize int8 supports Llama-style LLMs with plain Linear layers (q/k/v/o + "
                         f"gate/up/down); {type(llm).__name__} is not one (or is already quantized): drop "
                         f"--quantize int8")
    return layers


def _has(module, name: str) -> bool:
    try:
        module.get_submodule(name)
        return True
    except AttributeError:
        return False


@torch.inference_mode()
def _activation_max(llm, tokenizer) -> dict[str, torch.Tensor]:
    """Per-input-channel max |x| of every Linear over the calibration sentences."""
    seen: dict[str, torch.Tensor] = {}
    hooks = []
    for name, mod in llm.named_modules():
        if isinstance(mod, nn.Linear):
            def hook(mod, inp, out, name=name):
                a = inp[0].detach().abs().reshape(-1, inp[0].shape[-1]).amax(0).float()
                seen[name] = torch.maximum(seen[name], a) if name in seen else a
            hooks.append(mod.register_forward_hook(hook))
    try:
        for text in CALIBRATION:
            ids = tokenizer(text, return_tensors="pt")["input_ids"].to(next(llm.parameters()).device)
            llm(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    return seen


def _smooth_scales(act: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> torch.Tensor:
    w = torch.stack([x.detach().abs().amax(0).float() for x in weights]).amax(0)
    return (act.clamp(min=1e-5) ** alpha / w.clamp(min=1e-5) ** (1 - alpha)).clamp(min=1e-5)


@torch.no_grad()
def quantize_llm_int8(llm, tokenizer, alpha: float = ALPHA) -> None:
    """Smooth (exact in fp32), then swap the LLM's Linear layers for int8 ones, in place."""
    if (reason := int8_unsupported_reason()) is not None:
        raise RuntimeError(reason)
    if any("lora_" in n for n, _ in llm.named_parameters()):
        raise ValueError("--quantize int8 does not support LoRA adapters on the LLM; run this model in fp32")
    p = next(llm.parameters())
    if p.device.type != "cpu" or p.dtype != torch.float32:
        raise ValueError(f"--quantize int8 needs the LLM in fp32 on the CPU (it is {p.dtype} on {p.device}); "
                         f"use --device cpu --dtype fp32")
    layers = _layers(llm)
    act = _activation_max(llm, tokenizer)
    cfg = llm.config
    heads = cfg.num_attention_heads
    groups = getattr(cfg, "num_key_value_heads", None) or heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    for i, layer in enumerate(layers):
        pre = f"model.layers.{i}."
        at, mlp = layer.self_attn, layer.mlp
        # norm -> q/k/v and norm -> gate/up: fold 1/s into the norm weight
        s = _smooth_scales(act[pre + "self_attn.q_proj"], [at.q_proj.weight, at.k_proj.weight, at.v_proj.weight], alpha)
        layer.input_layernorm.weight.div_(s)
        for lin in (at.q_proj, at.k_proj, at.v_proj):
            lin.weight.mul_(s)
        s = _smooth_scales(act[pre + "mlp.gate_proj"], [mlp.gate_proj.weight, mlp.up_proj.weight], alpha)
        layer.post_attention_layernorm.weight.div_(s)
        for lin in (mlp.gate_proj, mlp.up_proj):
            lin.weight.mul_(s)
        # v -> o: attention mixes positions, not channels, so 1/s folds into v's rows; heads sharing a
        # kv head (GQA) must share one scale per channel
        s = _smooth_scales(act[pre + "self_attn.o_proj"], [at.o_proj.weight], alpha)
        s = s.view(groups, heads // groups, head_dim).amax(1)
        at.v_proj.weight.div_(s.reshape(-1, 1))
        at.o_proj.weight.mul_(s[:, None, :].expand(groups, heads // groups, head_dim).reshape(-1))
        for parent, name in ((at, "q_proj"), (at, "k_proj"), (at, "v_proj"), (at, "o_proj"),
                             (mlp, "gate_proj"), (mlp, "up_proj")):
            lin = getattr(parent, name)
            setattr(parent, name, Int8Linear(lin.weight, lin.bias))
        mlp.down_proj = Fp16WeightLinear(mlp.down_proj.weight, mlp.down_proj.bias)
    # LM head: its weight may be the input embedding table (tied), so scale a private copy
    head = llm.lm_head
    s = _smooth_scales(act["lm_head"], [head.weight], alpha)
    llm.model.norm.weight.div_(s)
    llm.lm_head = Int8Linear(head.weight.detach() * s, head.bias)
    llm.minigpt4_quantized = "int8"  # save/train code can refuse a model whose weights changed form
    log.info("LLM quantized to int8 (SmoothQuant a=%.2f, down_proj fp16, reduce_range=%s)", alpha, _reduce_range())
