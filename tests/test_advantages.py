"""Golden values for advantage estimators (spec rlvr.md sections 1.1-1.4), hand-computed."""

import pytest
import torch

from tiltlm.advantages import ADVANTAGES, group_mean, group_zscore, rloo

# One golden row per registered estimator: rewards [1,0,0,1] (one group) -> advantages.
# group_zscore: mean .5, unbiased std sqrt(1/3)=0.57735 -> +-0.5/0.57735 = +-0.86603
# group_mean: +-0.5;  rloo: r_i - mean(others): 1 - 1/3 = 0.66667, 0 - 2/3 = -0.66667
GOLDEN = {
    "group_zscore": [0.86603, -0.86603, -0.86603, 0.86603],
    "group_mean": [0.5, -0.5, -0.5, 0.5],
    "rloo": [0.66667, -0.66667, -0.66667, 0.66667],
}


def test_every_registered_advantage_has_a_golden_row():
    assert set(ADVANTAGES) == set(GOLDEN)


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_golden_fixture(name):
    adv = ADVANTAGES[name](torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.zeros(4, dtype=torch.long), 1e-6)
    assert torch.allclose(adv, torch.tensor(GOLDEN[name]), atol=1e-4)


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_all_equal_group_gives_zero_advantage_without_nan(name):
    adv = ADVANTAGES[name](torch.ones(4), torch.zeros(4, dtype=torch.long), 1e-6)
    assert torch.equal(adv, torch.zeros(4))


def test_groups_are_normalised_separately():
    # g0 = [1,0,0,1] -> +-0.86603; g1 = [1,1,1,0]: mean .75, std sqrt(.25/3*... ) = 0.5 -> [0.5,0.5,0.5,-1.5]
    rewards = torch.tensor([1.0, 0, 0, 1, 1, 1, 1, 0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    adv = group_zscore(rewards, groups)
    assert torch.allclose(adv, torch.tensor([0.86603, -0.86603, -0.86603, 0.86603, 0.5, 0.5, 0.5, -1.5]), atol=1e-4)
    assert torch.allclose(group_mean(rewards, groups), torch.tensor([0.5, -0.5, -0.5, 0.5, 0.25, 0.25, 0.25, -0.75]))


def test_interleaved_group_ids():
    # group membership, not row order, defines the baseline
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0])
    groups = torch.tensor([0, 1, 0, 1])
    assert torch.allclose(rloo(rewards, groups), torch.tensor([1.0, 1.0, -1.0, -1.0]))
