"""`--quantize int8` (CPU): the tiny model quantized, compared with fp32; flags and bad combinations."""
from __future__ import annotations

import argparse

import pytest
import torch
from PIL import Image

from minigpt4.model import quantize as q


@pytest.fixture(scope="module")
def pair():
    from minigpt4.weights import load_model
    return load_model("tiny").eval(), load_model("tiny", quantize="int8").eval()


def _image_prompt_embeds(model):
    from minigpt4.data.image import preprocess
    from minigpt4.model.minigpt4 import IMAGE_TOKEN_ID
    img = Image.new("RGB", (64, 64), (200, 60, 40))
    pixels = preprocess([img], model.cfg.vision.image_size, model.cfg.image_mean, model.cfg.image_std)
    text = model.tokenizer("Describe the image: a red square on a plain background, in detail.")["input_ids"]
    ids = torch.tensor([[IMAGE_TOKEN_ID] * model.cfg.num_image_tokens + text])
    with torch.inference_mode():
        return model.embed(ids, model.encode_pixels(pixels))


def test_int8_replaces_the_llm_linears_and_keeps_the_vision_side(pair):
    m32, m8 = pair
    kinds = {type(m).__name__ for n, m in m8.llm.named_modules() if n.endswith("_proj") or n == "lm_head"}
    assert kinds == {"Int8Linear", "Fp16WeightLinear"}
    assert not any(isinstance(m, torch.nn.Linear) for m in m8.llm.modules())
    assert m8.llm.model.embed_tokens.weight.dtype == torch.float32
    # tied head: the int8 head got a smoothed copy, the input embeddings are untouched
    assert torch.equal(m8.llm.model.embed_tokens.weight, m32.llm.model.embed_tokens.weight)
    assert all(p.dtype == torch.float32 for p in m8.visual_encoder.parameters())
    assert torch.equal(m8.proj.weight, m32.proj.weight)


def test_int8_logits_close_to_fp32(pair):
    m32, m8 = pair
    embeds = _image_prompt_embeds(m32)
    with torch.inference_mode():
        a = m32.llm(inputs_embeds=embeds).logits[0]
        b = m8.llm(inputs_embeds=embeds).logits[0]
    assert not torch.equal(a, b)  # really quantized
    assert (a - b).abs().max() < 0.05 * a.abs().max()
    assert (a.argmax(-1) == b.argmax(-1)).float().mean() >= 0.9


def test_smoothing_alone_is_exact(monkeypatch):
    """With the int8/fp16 modules swapped for fp32 ones, the smoothed model must equal fp32: the
    scales folded into norms, v/o (grouped heads) and the tied head's copy cancel exactly."""
    from minigpt4.weights import load_model

    def plain(weight, bias=None):
        lin = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
        lin.weight.data = weight.detach().clone()
        if bias is not None:
            lin.bias.data = bias.detach().clone()
        return lin
    m32 = load_model("tiny").eval()
    monkeypatch.setattr(q, "Int8Linear", plain)
    monkeypatch.setattr(q, "Fp16WeightLinear", plain)
    ms = load_model("tiny", quantize="int8").eval()
    cfg = ms.llm.config
    assert cfg.num_key_value_heads < cfg.num_attention_heads  # the grouped v -> o fold is exercised
    norm_before = m32.llm.model.layers[0].input_layernorm.weight
    assert not torch.allclose(ms.llm.model.layers[0].input_layernorm.weight, norm_before)  # scales were applied
    embeds = _image_prompt_embeds(m32)
    with torch.inference_mode():
        a = m32.llm(inputs_embeds=embeds).logits
        b = ms.llm(inputs_embeds=embeds).logits
    torch.testing.assert_close(b, a, atol=1e-4, rtol=1e-4)


def test_int8_model_generates(pair):
    from minigpt4.chat.engine import ChatEngine
    from minigpt4.eval.runner import measure_speed
    _, m8 = pair
    res = measure_speed(m8, Image.new("RGB", (64, 64), (20, 200, 40)), runs=1, tokens=12)
    assert res["tokens"] == 12
    engine = ChatEngine(m8)
    assert engine.tokenizer is m8.tokenizer


def test_quantized_model_refuses_to_save(pair, tmp_path):
    from minigpt4.weights import save_pretrained
    with pytest.raises(ValueError, match="quantized at load time"):
        save_pretrained(pair[1], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _args(*argv):
    from minigpt4.cli_common import add_model_args
    p = argparse.ArgumentParser()
    add_model_args(p)
    return p.parse_args(list(argv))


def test_flag_parses_and_checks_combinations():
    from minigpt4.cli_common import CLIError, check_device_args
    assert check_device_args(_args("--quantize", "int8", "--device", "cpu")) == ("cpu", "fp32")
    with pytest.raises(CLIError, match="drop --dtype bf16"):
        check_device_args(_args("--quantize", "int8", "--device", "cpu", "--dtype", "bf16"))
    with pytest.raises(CLIError, match="--quantize int8"):  # bitsandbytes modes point CPU users at int8
        check_device_args(_args("--quantize", "4bit", "--device", "cpu"))
    with pytest.raises(CLIError):
        check_device_args(_args("--quantize", "int8", "--device", "cuda"))  # no GPU here, or int8 on CUDA
    with pytest.raises(SystemExit):
        _args("--quantize", "int4")


def test_auto_quantize_makes_only_the_shipped_model_int8_on_the_cpu():
    from minigpt4.cli_common import check_device_args
    def resolved(*argv):
        args = _args(*argv)
        return check_device_args(args), args.quantize
    assert _args().quantize == "auto"
    assert resolved("--model", "default", "--device", "cpu") == (("cpu", "fp32"), "int8")
    assert resolved("--model", "default@stage1", "--device", "cpu") == (("cpu", "fp32"), "int8")
    assert resolved("--model", "default", "--device", "cpu", "--quantize", "none") == (("cpu", "fp32"), None)
    assert resolved("--model", "default", "--device", "cpu", "--dtype", "bf16") == (("cpu", "bf16"), None)
    assert resolved("--model", "tiny", "--device", "cpu") == (("cpu", "fp32"), None)
    assert resolved("--model", "default", "--device", "cpu", "--llm", "other.gguf") == (("cpu", "fp32"), None)


def test_library_path_rejects_bad_combinations():
    from minigpt4.weights import load_model
    with pytest.raises(ValueError, match="device cpu, dtype fp32"):
        load_model("tiny", dtype="bf16", quantize="int8")
    with pytest.raises(ValueError, match="Llama-style"):
        q.quantize_llm_int8(torch.nn.Sequential(torch.nn.Linear(4, 4)), tokenizer=None)


def test_describe_cli_with_int8(capsys, tmp_path):
    from minigpt4.cli import main
    img = tmp_path / "a.png"
    Image.new("RGB", (80, 60), (220, 40, 40)).save(img)
    assert main(["describe", str(img), "--model", "tiny", "--quantize", "int8", "--device", "cpu",
                 "--max-new-tokens", "5"]) == 0
    assert main(["describe", str(img), "--model", "tiny", "--quantize", "int8", "--dtype", "fp16",
                 "--device", "cpu"]) == 2
    assert "--quantize int8" in capsys.readouterr().err
