"""Stage-0 model: our ViT + ln_vision + Q-Former, and a small text tower used only here.

BLIP-2's first stage trains the Q-Former with three objectives; we keep two and add two
signals the world gives for free:
  * ITC  - image-text contrastive: each Q-Former query output vs the caption's [first-token]
           encoding, similarity = max over queries (as BLIP-2), in-batch negatives.
  * ITG  - image-grounded text generation: a small causal decoder reads the projected query
           outputs as a prefix (like MiniGPT-4 later feeds them to the LLM) and predicts QA
           answers and the caption.
  * aux  - multi-label heads on the mean query output for the world's ground truth (object
           names, colours, counts, positions, ...): a legitimate supervised pretraining signal
           on a procedural world, and a cheap probe.
  * cell - where and how many: a linear head on all query outputs (flattened) names each of the
           scene's 3x3 cells' count (0 = empty), colour and size. The aux labels above are an
           unordered bag over the mean query, so they never tie an object to its place or count:
           after 4k steps without this head a linear probe found position and count absent from
           the queries (14% vs 14% majority class). Linear on the flattened queries, because the
           LLM later reads them through one linear projection per query, and because a first try
           (a learned key per cell attending over the queries) sat at its symmetric start: every
           cell read the same mix and the head learned only the class frequencies.
  * cell_name - what: per cell, which object kind is there ("empty" or one of the world's names),
           through a low-rank head (flattened queries -> 9 x 64 -> names; a full per-cell softmax
           would cost ~12M weights). Every question names its object ("What color is the car?"),
           and the aux bag over the mean query had reached only F1 0.23 on names by 12,800 steps.
  * query_name - what, as MiniGPT-4 will read it: one linear head shared by all queries scores every
           name from each query alone; an image's score for a name is its best query's, trained as a
           softmax over all names per object present (the other present names masked). Why: the LLM
           reads each query through one shared linear projection, and on stage0-gpu's queries such a
           per-query map found only 45% of the objects present (session 16: recall@k of names against
           the LLM's own word embeddings) while the flattened-query cell_name head reached 75%: the
           names were spread over queries, where the projection cannot gather them.
  * query_word - what, as the FROZEN LLM reads it: a linear map of the projection's shape (hidden -> the
           LLM's width) puts, for each object present, one query's token on the LLM's own input embedding
           of the name's first token (queries matched to objects one-to-one, Hungarian on cosine), and the
           tokens of the other queries near zero. A surrogate for BLIP-2's second stage (Q-Former outputs
           read by the frozen LLM through a linear layer), which needs the LLM's forward and backward and
           so far more compute than stage 0 gets here: on 2 CPU cores 200 x 16 steps through the LLM
           (projection + LoRA) taught it almost no names (2.2%, session 17), while the frozen LLM given the
           exact name embeddings in the image slots names 64% (session 16). The map is then the projection's start.
ITM (hard-negative matching) is left out: on 2 CPU cores its extra forward passes cost more than
they teach here. Parameter names of the vision side equal `MiniGPT4`'s (`visual_encoder.*`,
`ln_vision.*`, `qformer.*`) so the export is a plain key filter.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from minigpt4.config import QFormerConfig, VisionConfig
from minigpt4.model.qformer import QFormer
from minigpt4.model.vision import VisionTransformer
from minigpt4.pretrain.config import TextTowerConfig
from minigpt4.pretrain.data import CELL_FIELDS, CELL_NAMES, IGNORE, PAD, Batch

VISION_PREFIXES = ("visual_encoder.", "ln_vision.", "qformer.")


def sincos_pos_embed(grid: int, width: int) -> torch.Tensor:
    """(1, 1 + grid*grid, width) 2D sin-cos position table (MAE's layout), centred, unit std; CLS
    row zero. Half the channels encode the row, half the column, each at width/4 frequencies spread
    geometrically from a quarter wave across the grid to a quarter wave per patch (MAE's 1/10000
    spread leaves most channels constant on a grid of 8)."""
    n = width // 4
    omega = (math.pi / 2) * grid ** (-torch.arange(n, dtype=torch.float64) / max(1, n - 1))
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                            indexing="ij")
    table = torch.cat([f(c.reshape(-1, 1) * omega) for c in (ys, xs) for f in (torch.sin, torch.cos)], dim=1)
    table = table - table.mean(0)
    table = torch.cat([torch.zeros(1, width, dtype=torch.float64), table / table.std()], dim=0)
    return table.unsqueeze(0).float()


def _layers(cfg: TextTowerConfig, n: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(cfg.width, cfg.heads, 4 * cfg.width, dropout=0.0,
                                       activation="gelu", batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, n, enable_nested_tensor=False)


class TextTower(nn.Module):
    def __init__(self, cfg: TextTowerConfig, vocab_size: int, query_width: int, num_queries: int):
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(vocab_size, cfg.width)
        self.pos = nn.Parameter(torch.zeros(1, num_queries + cfg.max_len, cfg.width))
        self.encoder = _layers(cfg, cfg.encoder_layers)
        self.enc_norm = nn.LayerNorm(cfg.width)
        self.query_in = nn.Linear(query_width, cfg.width)  # like MiniGPT-4's projection into the LLM
        self.decoder = _layers(cfg, cfg.decoder_layers)
        self.dec_norm = nn.LayerNorm(cfg.width)
        nn.init.normal_(self.tok.weight, std=0.02)
        nn.init.normal_(self.pos, std=0.01)

    def encode(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, T) caption ids -> (B, width) mean over real tokens of a bidirectional encoder."""
        keep = ids != PAD
        x = self.tok(ids) + self.pos[:, : ids.shape[1]]
        x = self.enc_norm(self.encoder(x, src_key_padding_mask=~keep))
        keep = keep.unsqueeze(-1).to(x.dtype)
        return (x * keep).sum(1) / keep.sum(1).clamp(min=1)

    def decode(self, queries: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Logits for every text position of [queries; ids] under a causal mask: (B, T, vocab).
        Position t's logits predict token t+1; trailing PADs are never attended by real tokens."""
        q = self.query_in(queries)
        x = torch.cat([q, self.tok(ids)], dim=1)
        x = x + self.pos[:, : x.shape[1]]
        n = x.shape[1]
        mask = torch.triu(torch.full((n, n), float("-inf"), device=x.device), diagonal=1)
        h = self.dec_norm(self.decoder(x, mask=mask, is_causal=True))
        return h[:, q.shape[1]:] @ self.tok.weight.T  # tied output head


def _weighted_ce(logits: torch.Tensor, gold: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Per-cell cross-entropy (logits (B, 9, C), gold (B, 9)), a `weight`-weighted mean over the cells
    whose target is not IGNORE; 0 (still in the graph) when there are none."""
    logits, gold = logits.flatten(0, 1), gold.flatten()
    keep = gold != IGNORE
    if not keep.any():
        return logits.sum() * 0
    ce = F.cross_entropy(logits[keep], gold[keep], reduction="none")
    return (ce * weight[keep]).sum() / weight[keep].sum()


def present_ce(scores: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over all K names of `scores` (B, K), once per name present (`present`, (B, K) bool),
    with the image's other present names masked out (each is a right answer too); 0 (in the graph) when
    nothing is present. Shared by the query_name loss and linear_probe's word readout."""
    pos = present.nonzero()
    if not len(pos):
        return scores.sum() * 0
    others = present[pos[:, 0]] & ~F.one_hot(pos[:, 1], present.shape[1]).bool()
    return F.cross_entropy(scores[pos[:, 0]].masked_fill(others, float("-inf")), pos[:, 1])


def recall_at_k(scores: torch.Tensor, present: list) -> tuple[int, int]:
    """(hits, total): per row, how many of its present ids are among its k best scores (k = how many are
    present). Shared by the stage-0 probe and linear_probe's word readout."""
    hit = total = 0
    for row, ids in zip(scores, present):
        ids = set(ids)
        if ids:
            hit += len(ids & set(row.topk(len(ids)).indices.tolist()))
            total += len(ids)
    return hit, total


class Stage0Model(nn.Module):
    def __init__(self, vision: VisionConfig, qformer: QFormerConfig, text: TextTowerConfig,
                 vocab_size: int, num_labels: int, cell_sizes: list[int], num_names: int = 1,
                 name_rank: int = 64, word_dim: int = 0):
        super().__init__()
        self.visual_encoder = VisionTransformer(vision)
        self.ln_vision = nn.LayerNorm(vision.width)
        self.qformer = QFormer.for_vision(qformer, vision)
        self.text = TextTower(text, vocab_size, qformer.hidden, qformer.num_query_tokens)
        self.itc_image = nn.Linear(qformer.hidden, text.embed_dim)
        self.itc_text = nn.Linear(text.width, text.embed_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))  # BLIP-2's temp 0.07
        self.aux = nn.Linear(qformer.hidden, max(1, num_labels))
        self.cell_sizes = [max(1, n) for n in cell_sizes]
        self.cell_head = nn.Linear(qformer.num_query_tokens * qformer.hidden, len(CELL_NAMES) * sum(self.cell_sizes))
        self.cell_name_cells = nn.Linear(qformer.num_query_tokens * qformer.hidden, len(CELL_NAMES) * name_rank)
        self.cell_name_out = nn.Linear(name_rank, max(1, num_names))
        self.query_name = nn.Linear(qformer.hidden, max(1, num_names))
        if word_dim:  # the LLM's input embedding of each name's first token (row 0, "empty": never a target)
            self.query_word = nn.Linear(qformer.hidden, word_dim)
            self.register_buffer("word_targets", torch.zeros(max(1, num_names), word_dim))
        self._init_vision()

    def _init_vision(self) -> None:
        # The shared modules use PyTorch's default Linear init (made for loading weights);
        # ViT-style truncated normal trains noticeably better from scratch.
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear) and name.startswith(("visual_encoder", "qformer")):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @torch.no_grad()
    def seed_pos_embed(self, pixels: torch.Tensor, scale: float, only_if_weak: bool = False) -> None:
        """Set the position tables (the ViT's, and the Q-Former's image table when it has one) to
        2D sin-cos at `scale` times the std of the tokens they are added to, measured on these
        pixels; `only_if_weak`: only tables under a tenth of that (new, or from an export made
        before seeding existed). Why: with ViT's usual init
        (std 0.02) the table stayed ~1% of the patch tokens through 4,000 steps (0.066 vs 5.7), so
        the tokens barely knew where they were and a linear probe found no position in the queries."""
        ve = self.visual_encoder
        # Each table with the tokens it is added to (the ViT's is set first: the Q-Former reads its output).
        tables = [(ve.pos_embed, lambda: ve.patch_embed(pixels))]
        if getattr(self.qformer, "image_pos", None) is not None:
            tables.append((self.qformer.image_pos, lambda: self.ln_vision(ve(pixels))))
        for table, tokens in tables:
            target = scale * float(tokens().std())
            if only_if_weak and float(table[0, 1:].std()) >= target / 10:
                continue
            grid = int(round((table.shape[1] - 1) ** 0.5))
            table.copy_(sincos_pos_embed(grid, table.shape[2]) * target)

    def queries(self, pixels: torch.Tensor) -> torch.Tensor:
        """What MiniGPT-4 will see: pixels -> ViT -> ln_vision -> Q-Former outputs."""
        return self.qformer(self.ln_vision(self.visual_encoder(pixels)))

    def cell_logits(self, q: torch.Tensor) -> list[torch.Tensor]:
        """Per-cell logits from the query outputs: one (B, 9, classes) tensor per CELL_FIELDS."""
        logits = self.cell_head(q.flatten(1)).view(q.shape[0], len(CELL_NAMES), -1)
        return list(logits.split(self.cell_sizes, dim=-1))

    def cell_name_logits(self, q: torch.Tensor) -> torch.Tensor:
        """(B, 9, names) logits of the object kind in each cell."""
        per_cell = self.cell_name_cells(q.flatten(1)).view(q.shape[0], len(CELL_NAMES), -1)
        return self.cell_name_out(F.gelu(per_cell))

    def query_name_scores(self, q: torch.Tensor) -> torch.Tensor:
        """(B, names): each name's score from the single query that shows it best."""
        return self.query_name(q).amax(1)

    def query_name_loss(self, q: torch.Tensor, cell_names: torch.Tensor) -> torch.Tensor:
        """Per object present (a cell's name id > 0), cross-entropy over all names of the best-query
        scores, with the image's other present names masked out; 0 (in the graph) without objects."""
        present = torch.zeros(q.shape[0], self.query_name.out_features, dtype=torch.bool, device=q.device)
        ok = (cell_names > 0) & (cell_names != IGNORE)
        rows = torch.arange(q.shape[0], device=q.device).unsqueeze(1).expand_as(cell_names)
        present[rows[ok], cell_names[ok]] = True
        present[:, 0] = False  # "empty" is no object
        return present_ce(self.query_name_scores(q), present)

    def query_word_match(self, tokens: torch.Tensor, cell_names: torch.Tensor):
        """One query per object present, one object per query: (image, query, name) index tensors of the
        pairs that maximise the summed cosine of query tokens (B, Q, D) to name embeddings (Hungarian per image)."""
        from scipy.optimize import linear_sum_assignment
        cos = torch.einsum("bqd,kd->bqk", F.normalize(tokens.detach().float(), dim=-1),
                           F.normalize(self.word_targets.float(), dim=-1)).cpu()
        rows, queries, names = [], [], []
        for b, cells in enumerate(cell_names.tolist()):
            ids = sorted({c for c in cells if 0 < c != IGNORE})[:tokens.shape[1]]
            if ids:
                qi, ni = linear_sum_assignment(-cos[b][:, ids].numpy())
                rows += [b] * len(qi)
                queries += qi.tolist()
                names += [ids[j] for j in ni]
        as_long = lambda xs: torch.tensor(xs, dtype=torch.long, device=tokens.device)
        return as_long(rows), as_long(queries), as_long(names)

    def query_word_loss(self, q: torch.Tensor, cell_names: torch.Tensor, rest: float = 0.1,
                        tau: float = 0.0) -> torch.Tensor:
        """Matched queries: 1 - cosine to the name's embedding, plus the squared log of their norm ratio (a word's
        norm, not a direction at any scale); the other queries: `rest` x their squared norm over a word's.
        `tau` > 0 adds a softmax over all names of cosine / tau per matched query: the names' embeddings lie close
        together (a token at their centroid has cosine ~0.65 to every name: session 17), so the cosine alone is won
        by generic tokens the LLM reads as no name in particular."""
        tokens = self.query_word(q)
        b, qi, ni = self.query_word_match(tokens, cell_names)
        word_sq = self.word_targets[1:].pow(2).sum(-1).mean()
        unmatched = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        unmatched[b, qi] = False
        loss = rest * (tokens[unmatched].pow(2).sum(-1) / word_sq).mean() if unmatched.any() else tokens.sum() * 0
        if len(b):
            t, e = tokens[b, qi], self.word_targets[ni]
            loss = loss + (1 - F.cosine_similarity(t, e, dim=-1)).mean() \
                + (t.norm(dim=-1) / e.norm(dim=-1)).log().pow(2).mean()
            if tau > 0:
                cos = F.normalize(t, dim=-1) @ F.normalize(self.word_targets[1:], dim=-1).T
                loss = loss + F.cross_entropy(cos / tau, ni - 1)
        return loss

    def query_word_scores(self, q: torch.Tensor) -> torch.Tensor:
        """(B, names): each name's best cosine over the query tokens."""
        return torch.einsum("bqd,kd->bkq", F.normalize(self.query_word(q), dim=-1),
                            F.normalize(self.word_targets, dim=-1)).amax(-1)

    def losses(self, batch: Batch, cell_occupied: float = 1.0, skip: tuple[str, ...] = (),
               word_rest: float = 0.1, word_tau: float = 0.0) -> dict[str, torch.Tensor]:
        """Every stage-0 loss by name; `skip`: names not computed at all (weight 0: saves their time)."""
        q = self.queries(batch.pixels)
        out = {}
        if "itc" not in skip:
            out["itc"] = self._itc(q, batch)
        if "itg" not in skip:
            out["itg"] = self._itg(q, batch)
        # Labels are sparse (~10 of hundreds per image): a plain mean is won by predicting "absent"
        # everywhere, so positives are up-weighted to count as much as all negatives together.
        pos = batch.labels.sum().clamp(min=1)
        out["aux"] = F.binary_cross_entropy_with_logits(self.aux(q.mean(1)), batch.labels,
                                                        pos_weight=(batch.labels.numel() - pos) / pos)
        # Occupied cells weigh `cell_occupied` times an empty one: 3/4 of the cells are empty, and
        # at equal weights the count head sat near "empty everywhere" (session-5 probe).
        occupied = (batch.cells[..., 0] > 0).flatten()
        weight = torch.where(occupied, cell_occupied, 1.0)
        out["cell"] = sum(_weighted_ce(logits, batch.cells[..., j], weight)
                          for j, logits in enumerate(self.cell_logits(q))) / len(CELL_FIELDS)
        # The name head is weighted the same way ("empty" is 3/4 of its targets too).
        out["cell_name"] = _weighted_ce(self.cell_name_logits(q), batch.cell_names, weight)
        if "query_name" not in skip:
            out["query_name"] = self.query_name_loss(q, batch.cell_names)
        if "query_word" not in skip and hasattr(self, "query_word"):
            out["query_word"] = self.query_word_loss(q, batch.cell_names, word_rest, word_tau)
        return out

    def _itc(self, q: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Max over queries of the query-text similarity (BLIP-2), symmetric cross-entropy."""
        img = F.normalize(self.itc_image(q), dim=-1)                       # (B, Q, D)
        txt = F.normalize(self.itc_text(self.text.encode(batch.caption_ids)), dim=-1)  # (B, D)
        sim = torch.einsum("iqd,jd->ijq", img, txt).amax(-1) * self.logit_scale.exp().clamp(max=100)
        # Identical captions in a batch are both right answers: use soft targets over them.
        same = (batch.caption_ids.unsqueeze(1) == batch.caption_ids.unsqueeze(0)).all(-1).float()
        target = same / same.sum(1, keepdim=True)
        return (F.cross_entropy(sim, target) + F.cross_entropy(sim.T, target)) / 2

    def _itg(self, q: torch.Tensor, batch: Batch) -> torch.Tensor:
        """The decoder's logits at position t predict token t+1."""
        logits = self.text.decode(q, batch.itg_ids)[:, :-1]
        targets = batch.itg_labels[:, 1:]
        keep = targets != IGNORE
        return F.cross_entropy(logits[keep], targets[keep]) if keep.any() else logits.sum() * 0

    def vision_state_dict(self) -> dict[str, torch.Tensor]:
        """The frozen vision side in `MiniGPT4` key names."""
        return {k: v for k, v in self.state_dict().items() if k.startswith(VISION_PREFIXES)}
