import pytest

from tiltlm.config import Config, describe, load_config
from tiltlm.errors import TiltError


def test_defaults_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("optim:\n  lr: 0.001\nrollout:\n  samples_per_prompt: 4\n")
    cfg = load_config(p, ["optim.lr=1e-4", "train.steps=7", "eval.k=[1,2]", "task.options={a: 1}"])
    assert cfg.optim.lr == 1e-4 and cfg.rollout.samples_per_prompt == 4 and cfg.train.steps == 7
    assert cfg.eval.k == [1, 2] and cfg.task.options == {"a": 1}
    assert isinstance(cfg.optim.lr, float)
    assert load_config(None, ["optim.lr=1"]).optim.lr == 1.0  # int accepted for float
    assert Config().model.path == "embedded"


def test_mutable_defaults_are_not_shared():
    a, b = Config(), Config()
    a.eval.k.append(99)
    assert 99 not in b.eval.k


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.lrr=1"], "unknown config key 'optim.lrr' (did you mean 'optim.lr'?)"),
        (["optimm.lr=1"], "unknown config key 'optimm' (did you mean 'optim'?)"),
        (["optim.lr=fast"], "config key 'optim.lr' expects float, got 'fast'"),
        (["train.steps=1.5"], "config key 'train.steps' expects int, got 1.5"),
        (["train.skip_zero_gradient_rows=3"], "expects bool"),
        (["task.path=[1]"], "config key 'task.path' expects str or null"),
        (["optim=3"], "config key 'optim' expects a mapping"),
        (["lr"], "must look like section.key=value"),
    ],
)
def test_bad_keys_and_types(overrides, message):
    with pytest.raises(TiltError) as e:
        load_config(None, overrides)
    assert message in str(e.value)


def test_malformed_yaml_names_file_and_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("optim:\n  lr: 0.1\n  betas: [0.9, 0.99\ntrain:\n  steps: 3\n")
    with pytest.raises(TiltError) as e:
        load_config(p)
    assert str(p) in str(e.value) and "malformed YAML" in str(e.value)
    assert f"{p}:" in str(e.value)


def test_yaml_is_loaded_safely(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("model: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(TiltError, match="malformed YAML"):
        load_config(p)


def test_every_field_is_documented():
    rows = describe()
    assert len(rows) > 30
    assert all(doc for _, _, doc in rows), [k for k, _, d in rows if not d]
