"""Golden values for reward shaping (spec rlvr.md sections 1.3 and 10) and overlong filtering."""

import json
from pathlib import Path

import pytest
import torch

from tiltlm.config import ShapingConfig, load_config
from tiltlm.objectives import AGGREGATIONS
from tiltlm.shaping import SHAPINGS, shape_rewards
from tiltlm.trainer import train


def _run(name, lengths, correct, **kw):
    c = ShapingConfig(**kw)
    rewards = torch.tensor([float(x) for x in correct])
    groups = torch.zeros(len(correct), dtype=torch.long)
    return SHAPINGS[name](rewards, torch.tensor(correct, dtype=torch.bool), torch.tensor(lengths), groups, c).tolist()


GOLDEN = {
    # DAPO: L_max 10, L_buf 4, factor 1 on reward 0: L=6 -> 0, L=8 -> -0.5, L=10 -> -1.0
    "overlong_penalty": (dict(lengths=[6, 8, 10], correct=[0, 0, 0], overlong_max=10, overlong_buffer=4),
                         [0.0, -0.5, -1.0]),
    # LASER: alpha 0.5, L_T 100: correct L=90 -> 1.5, correct L=120 -> 1.0, wrong L=50 -> -0.5
    "laser": (dict(lengths=[90, 120, 50], correct=[1, 1, 0], laser_alpha=0.5, laser_target=100), [1.5, 1.0, -0.5]),
    # LASER-D, one group of 8 with 6 correct (high bucket, n_b = 5): lengths 3,4,4,5,5,6,6,6 -> coverage(3) = 1/8
    # (floor .625 = 0), coverage(4) = 3/8 (floor 1.875 = 1) -> L_T = 4: correct rows with L <= 4 get +0.5
    "laser_d": (dict(lengths=[3, 4, 4, 5, 5, 6, 6, 6], correct=[1, 1, 1, 1, 1, 1, 0, 0], laser_d_min=3,
                     laser_d_max=8), [1.5, 1.5, 1.5, 1.0, 1.0, 1.0, -0.5, -0.5]),
}


def test_every_shaping_has_a_golden_row():
    assert set(SHAPINGS) == set(GOLDEN)


@pytest.mark.parametrize("name", sorted(SHAPINGS))
def test_shaping_golden(name):
    kw, want = GOLDEN[name]
    kw = dict(kw)
    assert _run(name, kw.pop("lengths"), kw.pop("correct"), **kw) == pytest.approx(want)


def test_laser_modes_and_order():
    assert _run("laser", [90, 120], [1, 1], laser_target=100, laser_mode="penalty") == pytest.approx([1.0, 0.5])
    assert _run("laser", [90, 120], [1, 1], laser_target=100, laser_mode="hybrid") == pytest.approx([1.5, 0.5])
    # composition: LASER first, then the overlong penalty on top
    c = ShapingConfig(names=["laser", "overlong_penalty"], laser_target=3, overlong_max=6, overlong_buffer=2)
    out = shape_rewards(torch.tensor([1.0, 1.0]), torch.tensor([True, True]), torch.tensor([2, 6]),
                        torch.tensor([0, 1]), c)
    assert out.tolist() == pytest.approx([1.5, 1.0 - 1.0])


def test_overlong_filtering_drops_truncated_rows_from_the_normaliser():
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    finished = torch.tensor([True, False])
    w = AGGREGATIONS["token_mean"](mask * finished.unsqueeze(-1), 0.0)
    assert torch.allclose(w, torch.tensor([[0.5, 0.5, 0.0], [0.0, 0.0, 0.0]]))


def test_shaping_in_training(tmp_path):
    r = train(load_config(None, [f"log.run_dir={tmp_path}", "log.progress=false", "eval.prompts=0", "train.steps=2",
                                 "rollout.prompts_per_step=8", "rollout.samples_per_prompt=4", "task.max_digits=2",
                                 "shaping.names=[laser_d, overlong_penalty]", "shaping.filter_truncated=true"]))
    rows = [json.loads(x) for x in Path(r.run_dir, "metrics.jsonl").read_text().splitlines()]
    # LASER maps wrong answers to -0.5, so the shaped mean reward can be negative while pass@1 stays in [0, 1]
    assert all(-0.5 - 1.0 <= m["rollout/reward"] <= 1.5 and 0 <= m["rollout/pass@1"] <= 1 for m in rows)


def test_laser_d_bucket_target_spec_golden():
    from tiltlm.shaping import bucket_target

    # spec: n = 8, high bucket n_b = 5, coverage 4096: .1, 5120: .25, 6144: .5 -> floor(.5) = 0, floor(1.25) = 1
    lengths = torch.tensor([4000] * 2 + [5000] * 3 + [6000] * 5 + [9000] * 10)  # 20 responses: .1, .25, .5
    assert bucket_target(lengths, 5, [4096, 5120, 6144]) == 5120
