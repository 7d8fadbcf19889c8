"""Rename a readout's page phrases from session 25's words ("nav 3 links logo") to block_phrase()'s HTML tokens
("<nav <img 3 <a"), keeping every classifier as it is: only the phrases' text and token ids change, and the page's
slots become a list that ends at an empty slot or its footer (words.PHRASE_ENDS; session 26).

    python recipes/default/relabel-page-phrases.py side stage0-effnet-picture stage0-effnet-html
    python recipes/default/relabel-page-phrases.py run runs/attrs/stage1     # every checkpoint of a training run

A side is a folder under checkpoints/default/ (proj.safetensors is rewritten, the rest copied); a run's checkpoints
are rewritten in place (a run carries the readout it was trained with) and name `--model` NEW_SIDE in meta.json.
`minigpt4 fit-words ... --phrases picture,page` fits the same phrases from scratch (make.sh's readout step).
"""
import argparse, json, shutil
from pathlib import Path

from safetensors import safe_open

from minigpt4.config import image_phrase_ids
from minigpt4.train.words import block_phrase, phrase_ends
from minigpt4.utils import atomic_save_safetensors, atomic_write_json

TOKENIZER = "minigpt4/assets/tokenizer-smollm2"


def old_block(phrase: str) -> dict:
    """Session 25's phrase -> the block it stood for (the parts block_phrase reads)."""
    w = phrase.split()
    if w[0] == "nav":
        return {"type": "nav", "links": [""] * int(w[1]), "logo": "logo" in w}
    if w[0] == "header":
        return {"type": "header", "subtitle": "subtitle" in w}
    if w[1:2] == ["columns"]:
        return {"type": "columns", "columns": [{"image": "image" in w, "button": "button" in w}] * int(w[0])}
    if w[0] == "form":
        return {"type": "form", "fields": [""] * int(w[1]), "textarea": "textarea" in w}
    if w[1:2] == ["buttons"]:
        return {"type": "buttons", "buttons": [""] * int(w[0])}
    if phrase not in ("image", "paragraph", "footer"):
        raise ValueError(f"{phrase!r} is not one of session 25's page phrases")
    return {"type": phrase}


def relabel(meta: dict, tokenizer) -> dict:
    groups = json.loads(meta["image_phrases"])
    page = next((g for g in groups if g["name"] == "page"), None)
    if page is None:
        raise ValueError("this readout has no page phrases")
    if not all(w.startswith("<") for w in page["words"]):  # not yet relabelled
        page["words"] = [block_phrase(old_block(w)) for w in page["words"]]
        page.update(image_phrase_ids(page["words"], page["text"], tokenizer))
    page["ends"] = phrase_ends("page", page["words"])  # the list ends at a footer (session 26)
    return {**meta, "image_phrases": json.dumps(groups)}


def rewrite(src: Path, dst: Path, tokenizer, renamed: tuple[str, str] | None = None) -> None:
    """src's tensors and metadata with the page phrases relabelled (and a side's own name `renamed` old -> new)."""
    with safe_open(str(src), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    meta = relabel(meta, tokenizer)
    if renamed and meta.get("vision") == renamed[0]:
        meta["vision"] = renamed[1]
    atomic_save_safetensors(tensors, dst, metadata=meta)


def page_words(side: Path) -> list[str]:
    with safe_open(str(side / "proj.safetensors"), "pt") as f:
        return next(g["words"] for g in json.loads(f.metadata()["image_phrases"]) if g["name"] == "page")


def main() -> None:
    from transformers import AutoTokenizer
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=["side", "run"])
    ap.add_argument("src", help="side: stage-0 folder name under checkpoints/default; run: a training output_dir")
    ap.add_argument("dst", nargs="?", help="side: the new folder's name; run: the side the run now loads onto")
    a = ap.parse_args()
    tok = AutoTokenizer.from_pretrained(TOKENIZER)
    if a.kind == "side":
        src, dst = Path("checkpoints/default") / a.src, Path("checkpoints/default") / a.dst
        dst.mkdir(exist_ok=True)
        for f in src.iterdir():
            if f.name not in ("proj.safetensors", "README.md"):
                shutil.copy(f, dst / f.name)
        rewrite(src / "proj.safetensors", dst / "proj.safetensors", tok, (a.src, a.dst))
        if (src / "fit.json").exists():  # the fit's record names the phrases too
            fit = json.loads((src / "fit.json").read_text())
            fit["image_phrases"]["page"] = [block_phrase(old_block(w)) for w in fit["image_phrases"]["page"]]
            atomic_write_json(dst / "fit.json", fit)
        print(f"wrote {dst}: page phrases {page_words(dst)}")
        return
    for ckpt in sorted((Path(a.src) / "checkpoints").glob("step_*")):
        rewrite(ckpt / "trainable.safetensors", ckpt / "trainable.safetensors", tok)
        meta = json.loads((ckpt / "meta.json").read_text())
        if a.dst:
            meta["model"] = meta["recipe"]["model"] = a.dst
        atomic_write_json(ckpt / "meta.json", meta)
        print(f"relabelled {ckpt}")


if __name__ == "__main__":
    main()
