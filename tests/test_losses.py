"""The fused frozen-head cross-entropy gives the plain path's loss and gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minigpt4.model.losses import head_cross_entropy
from minigpt4.model.minigpt4 import IGNORE_INDEX


def plain(head, hidden, targets):
    return F.cross_entropy(head(hidden).float(), targets)


def setup(n=13, h=16, v=97, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    head = nn.Linear(h, v, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.randn(v, h, generator=g) * scale)
    head.weight.requires_grad_(False)
    hidden = torch.randn(n, h, generator=g)
    targets = torch.randint(0, v, (n,), generator=g)
    return head, hidden, targets


@pytest.mark.parametrize("block_elems", [1 << 23, 97 * 4, 1])  # one block, blocks of 4 rows, one row each
@pytest.mark.parametrize("scale", [1.0, 30.0])  # 30: logits in the hundreds (exp overflows without the max)
def test_fused_loss_and_hidden_grad_match_plain(block_elems, scale):
    head, hidden, targets = setup(scale=scale)
    a = hidden.clone().requires_grad_()
    b = hidden.clone().requires_grad_()
    la = head_cross_entropy(head, a, targets, block_elems=block_elems)
    lb = plain(head, b, targets)
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-5)
    (la * 3.0).backward()  # an upstream scale (the trainer's token weighting) must pass through
    (lb * 3.0).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    assert torch.isfinite(la)


def test_no_grad_and_trained_head_fall_back_or_skip_the_gradient():
    head, hidden, targets = setup()
    with torch.no_grad():
        torch.testing.assert_close(head_cross_entropy(head, hidden, targets), plain(head, hidden, targets))
    head.weight.requires_grad_(True)  # a trained head needs its own gradient: plain path
    a = hidden.clone().requires_grad_()
    head_cross_entropy(head, a, targets).backward()
    assert head.weight.grad is not None and a.grad is not None


def test_model_forward_loss_is_the_mean_over_label_tokens(tiny_model):
    """The model's training loss equals full-vocabulary logits + cross-entropy at label positions."""
    torch.manual_seed(0)
    n_img = tiny_model.cfg.num_image_tokens
    ids = torch.tensor([[1] + [-200] * n_img + [5, 6, 7, 8], [1] + [-200] * n_img + [9, 10, 0, 0]])
    labels = ids.clone()
    labels[:, : 1 + n_img] = IGNORE_INDEX
    labels[1, -2:] = IGNORE_INDEX
    mask = (labels != IGNORE_INDEX) | (torch.arange(ids.shape[1]) <= n_img)
    feats = torch.randn(2, n_img, tiny_model.cfg.proj_in_features)
    tiny_model.proj.weight.requires_grad_(True)
    loss = tiny_model(ids, mask.long(), labels, features=feats)
    loss.backward()
    got = tiny_model.proj.weight.grad.clone()
    tiny_model.proj.weight.grad = None
    # Reference: the HF LM computing logits everywhere, loss over shifted labels.
    emb = tiny_model.embed(ids, tiny_model.project(feats))
    ref = tiny_model.llm(inputs_embeds=emb, attention_mask=mask.long(), labels=labels).loss
    ref.backward()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, tiny_model.proj.weight.grad, rtol=1e-4, atol=1e-6)
    tiny_model.proj.weight.grad = None


def test_autocast_bf16_path_matches_plain_under_autocast():
    """The non-buffered path (autocast / GPU): same result as the plain head under the same autocast."""
    head, hidden, targets = setup(n=9, h=32, v=301)
    a = hidden.clone().requires_grad_()
    b = hidden.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        la = head_cross_entropy(head, a, targets, block_elems=301 * 4)
        lb = plain(head, b, targets)
    torch.testing.assert_close(la, lb, rtol=2e-2, atol=2e-2)
    la.backward()
    lb.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=5e-2, atol=5e-3)


@pytest.mark.parametrize("block_elems", [1 << 23, 97 * 4])
def test_row_weighted_fused_loss_and_grad_match_plain(block_elems):
    head, hidden, targets = setup()
    w = torch.rand(hidden.shape[0], generator=torch.Generator().manual_seed(1)) + 0.1
    a = hidden.clone().requires_grad_()
    b = hidden.clone().requires_grad_()
    la = head_cross_entropy(head, a, targets, w, block_elems=block_elems)
    lb = (F.cross_entropy(head(b).float(), targets, reduction="none") * w).sum() / w.sum()
    torch.testing.assert_close(la, lb, rtol=1e-5, atol=1e-5)
    la.backward()
    lb.backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)
    # Equal weights are the plain mean.
    torch.testing.assert_close(head_cross_entropy(head, hidden, targets, torch.full_like(w, 3.0)),
                               plain(head, hidden, targets), rtol=1e-5, atol=1e-5)


def test_sample_average_is_the_mean_of_each_samples_mean(tiny_model):
    """average=sample: a 2-token answer weighs as much as a 5-token one; token: by tokens."""
    torch.manual_seed(0)
    n_img = tiny_model.cfg.num_image_tokens
    ids = torch.tensor([[1] + [-200] * n_img + [5, 6, 7, 8, 9], [1] + [-200] * n_img + [9, 10, 0, 0, 0]])
    labels = ids.clone()
    labels[:, : 1 + n_img] = IGNORE_INDEX
    labels[1, -3:] = IGNORE_INDEX  # label tokens: sample 0 five, sample 1 two
    mask = (labels != IGNORE_INDEX) | (torch.arange(ids.shape[1]) <= n_img)
    feats = torch.randn(2, n_img, tiny_model.cfg.proj_in_features)
    with torch.no_grad():
        each = [tiny_model(ids[i:i + 1], mask[i:i + 1].long(), labels[i:i + 1], features=feats[i:i + 1])
                for i in range(2)]
        by_sample = tiny_model(ids, mask.long(), labels, features=feats, average="sample")
        by_token = tiny_model(ids, mask.long(), labels, features=feats)
    torch.testing.assert_close(by_sample, (each[0] + each[1]) / 2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(by_token, (5 * each[0] + 2 * each[1]) / 7, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="average"):
        tiny_model(ids, mask.long(), labels, features=feats, average="turn")
