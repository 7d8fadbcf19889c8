"""Prove the key maps: random checkpoints in the ORIGINAL layout, loaded through our loaders, give
the same image embeddings as an independent plain implementation of the original forward pass
(tests/reference_minigpt4.py). Plus the strictness and error messages, our folder format, and the
`convert` / `info` commands as real subprocesses."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import reference_minigpt4 as ref
from minigpt4.config import get_config
from minigpt4.weights import CheckpointError, from_pretrained, load_model, save_pretrained
from minigpt4.weights.pretrained import assemble, convert, convert_state

ROOT = Path(__file__).resolve().parents[1]
TINY = get_config("tiny")
V, Q = TINY.vision, TINY.qformer


def pixels(size=56, n=2, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
    """Tiny checkpoints in the original files' layout, written with torch.save."""
    d = tmp_path_factory.mktemp("originals")
    eva = ref.make_eva_state(V.width, V.depth, V.mlp_dim, V.patch_size, V.image_size, extra=("norm", "head"))
    blip2 = ref.make_blip2_model_state(V.width, Q.hidden, Q.layers, Q.intermediate, Q.num_query_tokens)
    stage = ref.make_stage_ckpt(Q.hidden, TINY.llm.hidden_size)
    stage_l2 = ref.make_stage_ckpt(V.width * 4, TINY.llm.hidden_size, seed=4)
    paths = Namespace(eva=d / "eva_vit_g.pth", blip2=d / "blip2_pretrained_flant5xxl.pth",
                      ckpt=d / "pretrained_minigpt4_7b.pth", ckpt_l2=d / "pretrained_minigpt4_llama2_7b.pth", dir=d)
    torch.save(eva, paths.eva)
    torch.save({"model": blip2}, paths.blip2)
    torch.save(stage, paths.ckpt)
    torch.save(stage_l2, paths.ckpt_l2)
    return Namespace(paths=paths, eva=eva, blip2=blip2, stage=stage["model"], stage_l2=stage_l2["model"])


@pytest.fixture(scope="module")
def loaded_tiny(originals):
    p = originals.paths
    return load_model("tiny", eva=str(p.eva), blip2=str(p.blip2), ckpt=str(p.ckpt))


def expected_vicuna(o, x, cfg=TINY):
    return ref.minigpt4_vicuna_image_embeds(x, o.eva, o.blip2, o.stage, cfg.vision.heads, cfg.qformer.heads,
                                            cfg.qformer.cross_attention_freq)


# --- outputs match the reference implementation ---------------------------------------------


@torch.no_grad()
def test_vicuna_layout_matches_reference(originals, loaded_tiny):
    x = pixels()
    ours = loaded_tiny.encode_pixels(x)
    want = expected_vicuna(originals, x)
    assert ours.shape == (2, Q.num_query_tokens, TINY.llm.hidden_size)
    torch.testing.assert_close(ours, want, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_deeper_qformer_cross_attention_every_second_layer(tmp_path):
    """4 Q-Former layers (cross-attention on 0 and 2) and 3 ViT blocks: the map holds beyond layer 1."""
    cfg = get_config("tiny")
    cfg.vision.depth, cfg.qformer.layers = 3, 4
    v, q = cfg.vision, cfg.qformer
    o = Namespace(eva=ref.make_eva_state(v.width, v.depth, v.mlp_dim, v.patch_size, v.image_size, seed=5),
                  blip2=ref.make_blip2_model_state(v.width, q.hidden, q.layers, q.intermediate, q.num_query_tokens, seed=6),
                  stage=ref.make_stage_ckpt(q.hidden, cfg.llm.hidden_size, seed=7))
    torch.save(o.eva, tmp_path / "e.pth")
    torch.save({"model": o.blip2}, tmp_path / "b.pth")
    torch.save(o.stage, tmp_path / "c.pth")
    o.stage = o.stage["model"]
    model = assemble(cfg, convert_state(cfg, str(tmp_path / "e.pth"), str(tmp_path / "b.pth"), str(tmp_path / "c.pth")))
    x = pixels(seed=1)
    torch.testing.assert_close(model.encode_pixels(x), expected_vicuna(o, x, cfg), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_llama2_layout_matches_reference(originals):
    p = originals.paths
    model = load_model("tiny-llama2", eva=str(p.eva), ckpt=str(p.ckpt_l2))
    assert model.proj.in_features == V.width * 4
    x = pixels(seed=2)
    want = ref.minigpt4_llama2_image_embeds(x, originals.eva, originals.stage_l2, V.heads)
    assert want.shape == (2, V.num_patches // 4, TINY.llm.hidden_size)
    torch.testing.assert_close(model.encode_pixels(x), want, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_fp16_checkpoint_is_upcast(originals, tmp_path):
    """The released eva_vit_g.pth is fp16: it loads into an fp32 model as the rounded values."""
    eva16 = {k: v.half() for k, v in originals.eva.items()}
    path = save_variant(tmp_path, "eva16.pth", eva16)
    model = load_model("tiny", eva=path, blip2=str(originals.paths.blip2), ckpt=str(originals.paths.ckpt))
    assert model.visual_encoder.pos_embed.dtype == torch.float32
    o = Namespace(eva={k: v.float() for k, v in eva16.items()}, blip2=originals.blip2, stage=originals.stage)
    x = pixels(seed=7)
    torch.testing.assert_close(model.encode_pixels(x), expected_vicuna(o, x), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_pos_embed_interpolated_for_a_larger_image(originals, tmp_path):
    cfg = get_config("tiny")
    cfg.vision.image_size = 84  # 6x6 patches; the checkpoint has 4x4
    model = assemble(cfg, convert_state(cfg, str(originals.paths.eva), str(originals.paths.blip2),
                                        str(originals.paths.ckpt)))
    eva = dict(originals.eva, pos_embed=ref.interpolate_pos_embed(originals.eva["pos_embed"], 36))
    o = Namespace(eva=eva, blip2=originals.blip2, stage=originals.stage)
    x = pixels(84)
    torch.testing.assert_close(model.encode_pixels(x), expected_vicuna(o, x, cfg), atol=1e-5, rtol=1e-5)


# --- strictness: every problem names its keys and the fix ------------------------------------


def save_variant(tmp_path, name, obj):
    path = tmp_path / name
    torch.save(obj, path)
    return str(path)


def test_missing_vit_key_is_named(originals, tmp_path):
    eva = {k: v for k, v in originals.eva.items() if k != "blocks.1.attn.q_bias"}
    with pytest.raises(CheckpointError, match=r"missing keys \(1\).*blocks\.1\.attn\.q_bias"):
        load_model("tiny", eva=save_variant(tmp_path, "e.pth", eva))


def test_unknown_vit_key_is_named(originals, tmp_path):
    eva = dict(originals.eva, **{"blocks.0.attn.relative_position_bias_table": torch.zeros(3, 4)})
    with pytest.raises(CheckpointError, match=r"unexpected keys.*relative_position_bias_table"):
        load_model("tiny", eva=save_variant(tmp_path, "e.pth", eva))


def test_vit_of_another_size_names_the_mismatch(tmp_path):
    eva = ref.make_eva_state(48, 3, 96)  # one block more than the tiny preset
    with pytest.raises(CheckpointError, match=r"(?s)unexpected keys.*blocks\.2\..*3 blocks.*wants width 48, patch 14, 2 blocks"):
        load_model("tiny", eva=save_variant(tmp_path, "e.pth", eva))


def test_qformer_missing_cross_attention_and_unknown_key(originals, tmp_path):
    blip2 = {k: v for k, v in originals.blip2.items() if ".layer.0.crossattention.self.key." not in k}
    blip2["Qformer.bert.pooler.dense.weight"] = torch.zeros(2, 2)
    with pytest.raises(CheckpointError) as e:
        load_model("tiny", blip2=save_variant(tmp_path, "b.pth", {"model": blip2}))
    msg = str(e.value)
    assert "qformer.layers.0.cross_attn.key.weight" in msg and "qformer.layers.0.cross_attn.key.bias" in msg
    assert "Qformer.bert.pooler.dense.weight" in msg and "missing keys (2)" in msg


def test_qformer_wrong_shape_is_named(originals, tmp_path):
    blip2 = dict(originals.blip2, query_tokens=torch.zeros(1, 32, Q.hidden))
    with pytest.raises(CheckpointError, match=r"query_tokens is \[1, 32, 32\], model wants \[1, 8, 32\]"):
        load_model("tiny", blip2=save_variant(tmp_path, "b.pth", {"model": blip2}))


def test_projection_for_another_llm_names_the_preset(tmp_path):
    ckpt = {"model": {"llama_proj.weight": torch.zeros(5120, 768), "llama_proj.bias": torch.zeros(5120)}}
    with pytest.raises(CheckpointError, match=r"llama_proj is 768->5120 but the model's projection \(preset "
                                              r"'vicuna-7b'\) is 768->4096: .*use --preset vicuna-13b"):
        convert_state(get_config("vicuna-7b"), ckpt=save_variant(tmp_path, "c.pth", ckpt))
    from minigpt4.weights.minigpt4_ckpt import map_stage_ckpt
    llama2 = {"llama_proj.weight": torch.zeros(4096, 5632), "llama_proj.bias": torch.zeros(4096)}
    with pytest.raises(CheckpointError, match=r"llama_proj is 5632->4096 .* is 768->4096: .*use --preset llama2-7b"):
        map_stage_ckpt(llama2, get_config("vicuna-7b"))
    assert set(map_stage_ckpt(llama2, get_config("llama2-7b"))) == {"proj.weight", "proj.bias"}


def test_stage_checkpoint_with_other_keys(tmp_path):
    ckpt = {"model": {"llama_proj.weight": torch.zeros(64, 32), "llama_proj.bias": torch.zeros(64),
                      "llama_model.base_model.model.layers.0.q_proj.lora_A.weight": torch.zeros(2, 2)}}
    with pytest.raises(CheckpointError, match=r"unexpected keys.*lora_A.*MiniGPT-v2"):
        load_model("tiny", ckpt=save_variant(tmp_path, "c.pth", ckpt))
    with pytest.raises(CheckpointError, match=r"no 'model' dict.*pretrained_minigpt4_7b.pth"):
        load_model("tiny", ckpt=save_variant(tmp_path, "d.pth", {"llama_proj.weight": torch.zeros(64, 32)}))


def test_truncated_checkpoint(originals, tmp_path):
    data = originals.paths.blip2.read_bytes()
    (tmp_path / "b.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"not a readable torch checkpoint.*truncated"):
        load_model("tiny", blip2=str(tmp_path / "b.pth"))


def test_pickle_with_code_is_refused(tmp_path):
    path = save_variant(tmp_path, "evil.pth", {"model": Namespace(x=1)})
    with pytest.raises(CheckpointError, match=r"holds more than plain weights.*weights_only=True"):
        load_model("tiny", ckpt=path)


def test_missing_file_and_blip2_for_llama2(originals):
    with pytest.raises(CheckpointError, match="not found"):
        load_model("tiny", eva="/nonexistent/eva_vit_g.pth")
    with pytest.raises(CheckpointError, match="no Q-Former.*drop --blip2"):
        load_model("tiny-llama2", blip2=str(originals.paths.blip2))


def test_released_preset_needs_all_weights(originals):
    with pytest.raises(CheckpointError, match=r"preset 'llama2-7b' .* needs its weights .*--ckpt.*--eva"):
        load_model("llama2-7b")


def test_unknown_preset_or_folder(tmp_path):
    with pytest.raises(CheckpointError, match=r"unknown model 'vicuna-70b'.*tiny, tiny-llama2"):
        load_model("vicuna-70b")
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(str(tmp_path))


# --- our folder format -----------------------------------------------------------------------


def run_cli(*args, check=True):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "minigpt4", *args], capture_output=True, text=True,
                       env=env, timeout=300)
    if check:
        assert r.returncode == 0, r.stderr
    return r


@pytest.fixture(scope="module")
def converted(originals, tmp_path_factory):
    """`python -m minigpt4 convert` run as a real process on the original-layout files."""
    out = tmp_path_factory.mktemp("conv") / "tiny-minigpt4"
    p = originals.paths
    r = run_cli("convert", "--preset", "tiny", "--eva", str(p.eva), "--blip2", str(p.blip2), "--ckpt", str(p.ckpt),
                "--out", str(out))
    assert "wrote" in r.stdout and "image tokens 8" in r.stdout
    return out


@torch.no_grad()
def test_convert_round_trip_gives_identical_outputs(converted, loaded_tiny):
    assert sorted(f.name for f in converted.iterdir()) == ["config.json", "llm", "model.safetensors"]
    assert not converted.with_name(converted.name + ".tmp").exists()
    model = from_pretrained(converted)
    x = pixels(seed=3)
    assert torch.equal(model.encode_pixels(x), loaded_tiny.encode_pixels(x))
    ids = torch.tensor([[1, 5, 9, 200]])
    assert torch.equal(model.llm(ids).logits, loaded_tiny.llm(ids).logits)
    assert model.cfg.template == "vicuna_v0" and model.cfg.num_image_tokens == 8
    assert not any(p.requires_grad for p in model.visual_encoder.parameters())
    assert all(p.requires_grad for p in model.proj.parameters())


def test_info_subprocess_json(converted):
    info = json.loads(run_cli("info", str(converted), "--json").stdout)
    assert info["image_tokens"] == 8 and info["template"] == "vicuna_v0"
    assert info["parameters"]["proj"] == {"params": Q.hidden * 64 + 64, "trainable": Q.hidden * 64 + 64}
    assert info["parameters"]["vision"]["trainable"] == 0
    n_llm = sum(t.numel() for t in load_file(converted / "llm" / "model.safetensors").values())
    assert info["parameters"]["llm"]["params"] == n_llm  # tied lm_head is stored once
    assert info["folder_bytes"] > n_llm * 4 and info["dtype"] == "F32"


def test_convert_refuses_to_overwrite_and_cleans_up(converted, originals, tmp_path, capsys):
    from minigpt4.cli import main
    assert main(["convert", "--preset", "tiny", "--ckpt", str(originals.paths.ckpt), "--out", str(converted)]) == 2
    assert "already exists" in capsys.readouterr().err
    bad = tmp_path / "bad"
    with pytest.raises(CheckpointError):
        convert("tiny", bad, eva=str(originals.paths.eva), ckpt=str(originals.paths.blip2), progress=False)
    assert not bad.exists() and not (tmp_path / "bad.tmp").exists()


def test_convert_needs_every_part_of_a_released_preset(originals, tmp_path):
    with pytest.raises(CheckpointError, match=r"no weights for \['ln_vision', 'proj', 'qformer'\].*--blip2.*--ckpt"):
        convert("vicuna-7b", tmp_path / "x", eva=str(originals.paths.eva), progress=False)


def test_folder_is_strict(converted, tmp_path):
    import shutil
    folder = tmp_path / "copy"
    shutil.copytree(converted, folder)
    state = load_file(folder / "model.safetensors")
    state.pop("qformer.layers.1.ffn.fc2.bias")
    state["qformer.extra.weight"] = torch.zeros(1)
    save_file(state, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"(?s)missing keys \(1\).*ffn\.fc2\.bias.*unexpected keys \(1\).*extra"):
        from_pretrained(folder)
    doc = json.loads((folder / "config.json").read_text())
    doc["config"]["vision"]["widht"] = 3
    (folder / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"unknown field\(s\) \['widht'\] in config section 'vision'"):
        from_pretrained(folder)
    doc["config"]["vision"].pop("widht")
    doc["format_version"] = 99
    (folder / "config.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="format version 99.*upgrade"):
        from_pretrained(folder)


@torch.no_grad()
def test_linked_checkpoints_keep_only_the_projection(originals, loaded_tiny, tmp_path):
    """A small folder: trained projection + references to the original vision checkpoints."""
    p = originals.paths
    out = convert("tiny", tmp_path / "linked", eva=str(p.eva), blip2=str(p.blip2), ckpt=str(p.ckpt),
                  link_checkpoints=True, progress=False)
    assert set(load_file(out / "model.safetensors")) == {"proj.weight", "proj.bias"}
    model = load_model(str(out))
    x = pixels(seed=4)
    assert torch.equal(model.encode_pixels(x), loaded_tiny.encode_pixels(x))


@torch.no_grad()
def test_save_pretrained_round_trip_after_training_step(loaded_tiny, tmp_path):
    model = load_model("tiny-llama2", seed=1)
    with torch.no_grad():
        model.proj.weight.add_(1.0)  # stands in for a training update
    out = save_pretrained(model, tmp_path / "m")
    again = from_pretrained(out)
    x = pixels(seed=5)
    assert torch.equal(again.encode_pixels(x), model.encode_pixels(x))
    assert again.cfg.to_dict()["llm"]["source"] == "folder" and again.qformer is None
    with pytest.raises(FileExistsError, match="overwrite"):
        save_pretrained(model, out)


@torch.no_grad()
def test_lora_adapters_round_trip(tmp_path):
    model = load_model("tiny", seed=2)
    model.set_trainable(["proj", "lora"])
    for n, p in model.llm.named_parameters():
        if "lora_B" in n:
            p.normal_()  # LoRA B starts at zero; make the adapters matter
    out = save_pretrained(model, tmp_path / "lora")
    assert any("lora_" in k for k in load_file(out / "model.safetensors"))
    assert not any("lora_" in k or "base_layer" in k for k in load_file(out / "llm" / "model.safetensors"))
    again = from_pretrained(out)
    assert again.trainable == ["proj", "lora"]
    ids = torch.tensor([[1, 5, 9, 200]])
    torch.testing.assert_close(again.llm(ids).logits, model.llm(ids).logits, atol=1e-5, rtol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("link", [False, True])
def test_convert_with_a_hugging_face_llm_folder(originals, loaded_tiny, tmp_path, link):
    """The Vicuna path: --llm points at a Hugging Face folder, copied into llm/ or linked."""
    hf = tmp_path / "vicuna-like"
    loaded_tiny.llm.save_pretrained(hf)
    loaded_tiny.tokenizer.save_pretrained(hf)
    p = originals.paths
    out = convert("tiny", tmp_path / "out", eva=str(p.eva), blip2=str(p.blip2), ckpt=str(p.ckpt), llm=str(hf),
                  link_llm=link, progress=False)
    doc = json.loads((out / "config.json").read_text())
    assert doc["config"]["llm"]["source"] == "hf"
    assert doc["config"]["llm"]["path"] == (str(hf.resolve()) if link else "llm")
    assert (out / "llm").exists() != link
    model = load_model(str(out))
    ids = torch.tensor([[1, 5, 9, 200]])
    assert torch.equal(model.llm(ids).logits, loaded_tiny.llm(ids).logits)
    x = pixels(seed=6)
    assert torch.equal(model.encode_pixels(x), loaded_tiny.encode_pixels(x))
