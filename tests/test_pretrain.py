import json

import torch
from safetensors.torch import load_file

from tiltlm.models import ASSET_DIR
from tiltlm.pretrain import PretrainConfig, pretrain


def test_pretrain_is_deterministic(tmp_path):
    cfg = PretrainConfig(steps=4, batch_size=8, hidden=32, heads=2)
    pretrain(cfg, tmp_path / "a", log=lambda *_: None)
    pretrain(cfg, tmp_path / "b", log=lambda *_: None)
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((tmp_path / "a" / "pretrain.json").read_text())["steps"] == 4


def test_shipped_base_records_its_recipe():
    recipe = json.loads((ASSET_DIR / "pretrain.json").read_text())
    assert recipe == {"recipe": "tiltlm pretrain", **PretrainConfig().__dict__}, "defaults must rebuild the shipped base"


def test_shipped_teacher_is_the_same_recipe_trained_longer():
    from tiltlm.models import EMBEDDED_MODELS

    recipe = json.loads((EMBEDDED_MODELS["embedded-teacher"] / "pretrain.json").read_text())
    assert recipe == {"recipe": "tiltlm pretrain", **{**PretrainConfig().__dict__, "steps": 1000}}
