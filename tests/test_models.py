import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tiltlm.errors import TiltError
from tiltlm.models import ASSET_DIR, load_model_and_tokenizer, save_pretrained_atomic


def test_char_tokenizer_roundtrip(tokenizer):
    text = "12+345=\nHello, world! (x*y)"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and len(ids) == len(text) + 1
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_save_load_roundtrip(tmp_path, tiny_model, tokenizer):
    out = save_pretrained_atomic(tiny_model, tokenizer, tmp_path / "m")
    assert (out / "model.safetensors").exists() and not list(out.glob("*.bin"))
    # plain transformers loads it (what users will do with run/final)
    model = AutoModelForCausalLM.from_pretrained(out)
    tok = AutoTokenizer.from_pretrained(out)
    ids = torch.tensor([tokenizer("1+2=")["input_ids"]])
    assert tok("1+2=")["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, tiny_model(ids).logits, atol=1e-6)
    m2, t2 = load_model_and_tokenizer(str(out))
    assert t2.padding_side == "left" and t2.pad_token_id == tokenizer.pad_token_id
    # saving again over an existing directory replaces it atomically, leaving no temp dirs behind
    save_pretrained_atomic(m2, t2, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_embedded_base_is_shipped_and_small():
    weights = ASSET_DIR / "model.safetensors"
    assert weights.exists() and weights.stat().st_size < 10 * 2**20
    cfg = json.loads((ASSET_DIR / "config.json").read_text())
    assert cfg["model_type"] == "llama"


@pytest.mark.parametrize("setup, message", [
    (lambda d: None, "model path not found"),
    (lambda d: d.mkdir(), "has no config.json"),
    (lambda d: (d.mkdir(), (d / "config.json").write_text("{}")), "no *.safetensors"),
])
def test_bad_model_paths(tmp_path, setup, message):
    d = tmp_path / "model"
    setup(d)
    with pytest.raises(TiltError, match=message.replace("*", r"\*")):
        load_model_and_tokenizer(str(d))


def test_pickled_weights_are_refused(tmp_path, tiny_model, tokenizer):
    d = tmp_path / "pickled"
    tiny_model.config.save_pretrained(d)
    tokenizer.save_pretrained(d)
    torch.save(tiny_model.state_dict(), d / "pytorch_model.bin")  # a pickle: must never be loaded
    with pytest.raises(TiltError, match="pickled weights are refused"):
        load_model_and_tokenizer(str(d))


def test_broken_checkpoint_is_one_line_error(tmp_path, tiny_model, tokenizer):
    d = save_pretrained_atomic(tiny_model, tokenizer, tmp_path / "m")
    (d / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(TiltError, match="cannot load model from"):
        load_model_and_tokenizer(str(d))
