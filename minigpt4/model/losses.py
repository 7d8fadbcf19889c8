"""LM head + cross-entropy in one step, for a frozen LM head.

With a frozen LLM the only gradient the head has to pass back is d loss / d hidden =
(softmax(logits) - onehot(target)) @ W / N. Computing it right after the forward, while the
logits block is still in cache, replaces the plain path's log_softmax, its backward, the
zero-filled one-hot NLL gradient (each a full pass over N x vocab floats) with one softmax and
one matmul, and never keeps the N x vocab logits for the backward (peak memory: one row block).
Rows are processed in blocks of at most `block_elems` logits, so memory stays bounded for long
batches and big vocabularies.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

BLOCK_ELEMS = 1 << 23  # logits per row block: 32 MB in fp32


_WORKSPACES: dict[torch.device, torch.Tensor] = {}


def _workspace(device: torch.device, numel: int) -> torch.Tensor:
    """A reused fp32 logits buffer: a fresh N x vocab block every step costs page faults (glibc
    hands big blocks back to the OS), which on CPU took as long as the softmax itself."""
    buf = _WORKSPACES.get(device)
    if buf is None or buf.numel() < numel:
        buf = _WORKSPACES[device] = torch.empty(numel, dtype=torch.float32, device=device)
    return buf[:numel]


class _FrozenHeadCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, row_weights,
                want_grad: bool, block_elems: int):
        n, vocab = hidden.shape[0], weight.shape[0]
        denom = n if row_weights is None else row_weights.sum()
        rows = max(1, block_elems // vocab)
        loss = hidden.new_zeros((), dtype=torch.float32)
        grad = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if want_grad else None
        # CPU fp32: one reused buffer, softmax in place (the CPU kernel reads each row before
        # writing it). Elsewhere (CUDA's caching allocator has no page-fault cost) plain ops.
        reuse = (hidden.device.type == "cpu" and hidden.dtype == weight.dtype == torch.float32
                 and not torch.is_autocast_enabled("cpu"))
        for s in range(0, n, rows):
            h, t = hidden[s:s + rows], targets[s:s + rows]
            if reuse:
                logits = torch.mm(h, weight.t(), out=_workspace(h.device, h.shape[0] * vocab).view(-1, vocab))
            else:
                logits = (h @ weight.t()).float()
            r = torch.arange(h.shape[0], device=h.device)
            target_logit = logits[r, t]
            top = logits.amax(1)
            p = torch.ops.aten._softmax.out(logits, 1, False, out=logits) if reuse else torch.softmax(logits, 1)
            # log-sum-exp without another pass: softmax is 1/sum(exp(l - max)) at the max, and
            # that value is >= 1/vocab, so its log never underflows.
            lse = top - p.amax(1).log()
            w = None if row_weights is None else row_weights[s:s + rows]
            loss += (lse - target_logit).sum() if w is None else ((lse - target_logit) * w).sum()
            if want_grad:
                p[r, t] -= 1.0
                if w is not None:
                    p.mul_(w.unsqueeze(1))
                grad[s:s + rows] = p.to(weight.dtype) @ weight
        if want_grad:
            ctx.save_for_backward(grad.div_(denom))
        ctx.hidden_dtype = hidden.dtype
        return loss / denom

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        return (grad * grad_out).to(ctx.hidden_dtype), None, None, None, None, None


def head_cross_entropy(head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor,
                       row_weights: torch.Tensor | None = None, block_elems: int = BLOCK_ELEMS) -> torch.Tensor:
    """Mean cross-entropy of `head(hidden)` against `targets` (N rows, all valid labels), or with
    `row_weights` (N, >= 0) the weighted mean sum(w * ce) / sum(w).
    Uses the fused path when the head is a frozen bias-free Linear (the LM head of a frozen LLM);
    otherwise (a trained or LoRA-wrapped head) the plain one, which gives the head its gradient."""
    # type(...) is: a sharded/wrapped head (FSDP class swap, DTensor weight, LoRA) keeps its own forward.
    fused = (type(head) is nn.Linear and type(head.weight.data) is torch.Tensor and head.bias is None
             and not head.weight.requires_grad and hidden.shape[0] > 0)
    if row_weights is not None:
        row_weights = row_weights.to(device=hidden.device, dtype=torch.float32)
    if not fused:
        ce = F.cross_entropy(head(hidden).float(), targets, reduction="none" if row_weights is not None else "mean")
        return ce if row_weights is None else (ce * row_weights).sum() / row_weights.sum()
    want_grad = torch.is_grad_enabled() and hidden.requires_grad
    return _FrozenHeadCrossEntropy.apply(hidden, head.weight, targets, row_weights, want_grad, block_elems)
