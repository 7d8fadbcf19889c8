"""How much of what the LLM gets is about this image? The gate for a new projection fit.

    python -m minigpt4.eval.image_signal default@stage2 default@runs/default/stage1 --n 64

For held-out scenes (val split) it reports, at the Q-Former outputs and at the projected image tokens,
the image-specific share of the energy: 1 - |mean over images|^2 / mean |x|^2, per token slot, summed
over slots. 0% means every image gives the same tokens (the LLM sees a constant soft prompt); 100%
means nothing is shared. It also prints the image tokens' mean norm next to the LLM's mean text
token norm: RMSNorm hides the norm from each layer's input, but the residual stream keeps it, so
tokens far above text norm barely change through the layers.
Session 6 found the shipped projection passing on 11% while its queries held 17%, and a refit on
the session-6 stage 0 passing on 19-25% of the 41% its queries held.

A share says what reaches the LLM, not whether the LLM uses it. `--reliance` measures that: the
loss on each question's ground-truth answer (asked exactly as the eval asks it) with the image's
own tokens, and with the next image's tokens in their place. The gap (nats) is what reading this
image is worth to the answer; near 0 means the model answers from priors.
"""
from __future__ import annotations

import argparse

import torch


def specific_share(x: torch.Tensor) -> float:
    """x: (images, slots, dim) -> the image-specific share of its energy."""
    x = x.double()
    shared = x.mean(0).pow(2).sum()
    return float(1 - shared / x.pow(2).sum(dim=(1, 2)).mean())


@torch.no_grad()
def measure(model, images, batch_size: int = 32) -> dict:
    feats = torch.cat([model.vision_features(model.preprocess(images[i:i + batch_size])).float()
                       for i in range(0, len(images), batch_size)])
    tokens = model.project(feats).float()
    text = model.llm.get_input_embeddings().weight.float()
    return {"queries": specific_share(feats), "tokens": specific_share(tokens),
            "token_norm": float(tokens.norm(dim=-1).mean()), "text_norm": float(text.norm(dim=-1).mean())}


@torch.no_grad()
def answer_reliance(model, samples, batch_size: int = 32) -> dict[str, dict[str, float]]:
    """Per question type (and "all"): mean answer loss with the matched image, with the next
    sample's image instead, and their gap. `samples`: world samples with `.image` and `.qa`."""
    from minigpt4.chat.presets import SHORT_ANSWER
    from minigpt4.chat.templates import Message, encode_conversation, get_template
    tmpl = get_template(model.cfg.template)
    tokens = torch.cat([model.encode_pixels(model.preprocess([s.image for s in samples[i:i + batch_size]]))
                        for i in range(0, len(samples), batch_size)]).float()
    sums: dict[str, list[float]] = {}
    for i, s in enumerate(samples):
        for q in s.qa:
            msgs = [Message("user", f"{q['question']} {SHORT_ANSWER}", images=[None]),
                    Message("assistant", q["answer"])]
            ids, labels = encode_conversation(model.tokenizer, tmpl, msgs, model.cfg.num_image_tokens,
                                              system=model.cfg.system)
            ids, labels = torch.tensor([ids]), torch.tensor([labels])
            mask = torch.ones_like(ids)
            own = float(model(ids, mask, labels, image_embeds=tokens[i:i + 1]))
            other = float(model(ids, mask, labels, image_embeds=tokens[(i + 1) % len(samples)][None]))
            for key in ("all", q["type"]):
                acc = sums.setdefault(key, [0.0, 0.0, 0])
                acc[0] += own
                acc[1] += other
                acc[2] += 1
    return {k: {"matched": a / n, "shuffled": b / n, "gap": (b - a) / n, "n": n} for k, (a, b, n) in sums.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m minigpt4.eval.image_signal", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="model specs (default@stage2, a folder, default@RUN_DIR)")
    ap.add_argument("--n", type=int, default=64, help="val scenes (default 64)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reliance", action="store_true",
                    help="also the answer loss with the matched vs the next image, per question type")
    args = ap.parse_args(argv)
    from minigpt4.weights import load_model
    from minigpt4.world.core import generate
    samples = [generate("scene", args.seed + i, "val", 128) for i in range(args.n)]
    images = [s.image for s in samples]
    print(f"| model | queries: image-specific | image tokens: image-specific | token norm | text norm |")
    print("|---|---:|---:|---:|---:|")
    for spec in args.models:
        r = measure(load_model(spec), images)
        print(f"| {spec} | {r['queries']:.1%} | {r['tokens']:.1%} | {r['token_norm']:.1f} | {r['text_norm']:.1f} |",
              flush=True)
    if args.reliance:
        print("\nAnswer loss (nats) with the image's own tokens / the next image's / gap, per question type:\n")
        rows = {spec: answer_reliance(load_model(spec), samples) for spec in args.models}
        types = sorted({t for r in rows.values() for t in r}, key=lambda t: (t != "all", t))
        print("| model | " + " | ".join(types) + " |")
        print("|---|" + "---:|" * len(types))
        for spec, r in rows.items():
            cells = [f"{r[t]['matched']:.2f} / {r[t]['shuffled']:.2f} / {r[t]['gap']:+.2f}" if t in r else "-"
                     for t in types]
            print(f"| {spec} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
