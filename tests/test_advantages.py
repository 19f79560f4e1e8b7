"""Golden values for every advantage estimator (spec rlvr.md sections 1-3, 13), hand-computed.

Shared fixture: one group G=4, rewards [1,0,0,1], lengths [3,2,1,2] (8 tokens)."""

import math

import pytest
import torch

from tiltlm.advantages import ADVANTAGE_NEEDS, ADVANTAGES, AdvantageInputs, make_advantage
from tiltlm.config import AdvantageConfig

S = math.sqrt(3) / 2  # 0.5 / unbiased std sqrt(1/3)
SP0, SPM1 = math.log(2), math.log1p(math.exp(-1))  # softplus(0) = 0.693147, softplus(-1) = 0.313262


def fixture(**kw) -> AdvantageInputs:
    return AdvantageInputs(torch.tensor([1.0, 0, 0, 1]), torch.zeros(4, dtype=torch.long), torch.tensor([3, 2, 1, 2]), **kw)


# One golden row per registered estimator, on the fixture.
GOLDEN = {
    "group_zscore": [S, -S, -S, S],  # +-0.86603
    "group_mean": [0.5, -0.5, -0.5, 0.5],  # Dr.GRPO
    "rloo": [2 / 3, -2 / 3, -2 / 3, 2 / 3],  # r_i - mean of the other three
    "weighted_group_mean": [0.25, -0.75, -0.75, 0.25],  # weights [3,1,0,0]: baseline (3*1 + 0)/4 = 0.75
    # REINFORCE++: token-weighted batch mean 5/8 = 0.625, unbiased token variance (5*.375^2 + 3*.625^2)/7 = 0.267857
    # -> 0.72457 / -1.20761: one group, so centring first (the -baseline variant below) changes nothing here
    "batch_whiten": [0.375 / math.sqrt(1.875 / 7), -0.625 / math.sqrt(1.875 / 7), -0.625 / math.sqrt(1.875 / 7),
                     0.375 / math.sqrt(1.875 / 7)],
    # REINFORCE++-baseline (spec): centred tokens 5 x (+.5), 3 x (-.5); mean .125, std .517549 -> 0.72457, -1.20761
    "group_mean_batch_whiten": [0.72457, -1.20761, -1.20761, 0.72457],
    # Lite PPO: group mean .5, batch std (4 rewards, unbiased) 0.57735 -> +-0.86603
    "group_mean_batch_std": [S, -S, -S, S],
    "weighted_pn": [0.1, -1.0, -1.0, 0.1],  # W-REINFORCE lambda = 0.1
    "psr": [1.0, 0.0, 0.0, 1.0],
    "nsr": [0.0, -1.0, -1.0, 0.0],
    # ACE (working form, alpha = 1): wrong rollouts with c = 0 and -1 -> -S (1 + softplus(c)): -1.46630, -1.13731
    "ace": [S, -S * (1 + SP0), -S * (1 + SPM1), S],
    # shrinkage with the uninformative Beta(1,1): b0 = .5 = rbar, so the fused baseline is .5 whatever w is
    "shrinkage": [0.5, -0.5, -0.5, 0.5],
}


def _inputs(name):
    if name == "weighted_group_mean":
        return fixture(weights=torch.tensor([3.0, 1.0, 0.0, 0.0]))
    return fixture(confidence=torch.tensor([5.0, 0.0, -1.0, 5.0])) if name == "ace" else fixture()


def test_every_registered_advantage_has_a_golden_row():
    assert set(ADVANTAGES) == set(GOLDEN)


@pytest.mark.parametrize("name", sorted(ADVANTAGES))
def test_golden_fixture(name):
    adv = make_advantage(ADVANTAGES[name])(_inputs(name), AdvantageConfig())
    assert torch.allclose(adv.double(), torch.tensor(GOLDEN[name], dtype=torch.float64), atol=1e-4), adv


def test_spec_decimals():
    # the spec's printed values, not derived here: ACE -> [0.86602, -1.46630, -1.13731, 0.86602]
    adv = make_advantage(ADVANTAGES["ace"])(_inputs("ace"), AdvantageConfig())
    assert torch.allclose(adv, torch.tensor([0.86602, -1.46630, -1.13731, 0.86602], dtype=torch.float64), atol=1e-4)
    assert ADVANTAGE_NEEDS["ace"] == {"ref"}


@pytest.mark.parametrize("name", ["group_zscore", "group_mean", "rloo", "group_mean_batch_std", "ace", "shrinkage"])
def test_all_equal_group_gives_zero_advantage_without_nan(name):
    x = AdvantageInputs(torch.ones(4), torch.zeros(4, dtype=torch.long), torch.tensor([3, 2, 1, 2]),
                        confidence=torch.zeros(4))
    assert torch.equal(make_advantage(ADVANTAGES[name])(x, AdvantageConfig()), torch.zeros(4, dtype=torch.float64))


def test_lite_ppo_uses_the_batch_std_across_groups():
    # spec section 13: g1 = [1,0,0,1], g2 = [1,1,1,0]; batch std over 8 rewards 0.517549 -> g1 +-0.96609,
    # g2 0.48305 / -1.44914 (GRPO would give g2 [0.5,0.5,0.5,-1.5])
    x = AdvantageInputs(torch.tensor([1.0, 0, 0, 1, 1, 1, 1, 0]), torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]))
    adv = ADVANTAGES["group_mean_batch_std"](x, AdvantageConfig())
    want = [0.96609, -0.96609, -0.96609, 0.96609, 0.48305, 0.48305, 0.48305, -1.44914]
    assert torch.allclose(adv, torch.tensor(want, dtype=torch.float64), atol=1e-4)
    grpo = ADVANTAGES["group_zscore"](x, AdvantageConfig())
    assert torch.allclose(grpo[4:], torch.tensor([0.5, 0.5, 0.5, -1.5], dtype=torch.float64), atol=1e-4)


def test_reinforce_pp_whitening_is_token_weighted():
    # the same rewards with equal lengths give the sequence-weighted answer, which differs
    x = AdvantageInputs(torch.tensor([1.0, 0, 0, 1]), torch.zeros(4, dtype=torch.long), torch.ones(4))
    adv = ADVANTAGES["group_mean_batch_whiten"](x, AdvantageConfig())
    assert torch.allclose(adv, torch.tensor([S, -S, -S, S], dtype=torch.float64), atol=1e-4)


def test_groups_are_normalised_separately_and_by_membership():
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0])
    groups = torch.tensor([0, 1, 0, 1])  # interleaved: membership, not row order, defines the baseline
    adv = ADVANTAGES["rloo"](AdvantageInputs(rewards, groups), AdvantageConfig())
    assert torch.allclose(adv, torch.tensor([1.0, 1.0, -1.0, -1.0], dtype=torch.float64))


def test_weighted_pn_uses_correctness_not_reward_sign():
    x = AdvantageInputs(torch.tensor([0.3, 0.3]), torch.zeros(2, dtype=torch.long), correct=torch.tensor([True, False]))
    adv = ADVANTAGES["weighted_pn"](x, AdvantageConfig(positive_weight=0.5))
    assert adv.tolist() == [0.5, -1.0]


def test_shrinkage_baseline_golden_and_state():
    # spec rlvr.md section 4 (reconstruction): prior Beta(8,2) -> b0 = .8, tau^2 = 0.0145455; rewards [1,0,0,1]:
    # v = .04, z = -1.5 (accepted), w = 0.73333, b = 0.72 -> A = [0.28, -0.72, -0.72, 0.28]
    est = make_advantage(ADVANTAGES["shrinkage"])
    c = AdvantageConfig(prior_a=8, prior_b=2, forget=0.9)
    keys = torch.full((4,), 7)
    x = AdvantageInputs(torch.tensor([1.0, 0, 0, 1]), torch.zeros(4, dtype=torch.long), prompt_keys=keys)
    assert est(x, c).tolist() == pytest.approx([0.28, -0.72, -0.72, 0.28], abs=1e-5)
    assert est.alpha[7] == pytest.approx(0.9 * 8 + 2) and est.beta[7] == pytest.approx(0.9 * 2 + 2)
    # a fresh estimator on [0,0,0,0] with b0 = .8: z = -4 -> prior rejected, baseline = group mean 0 -> A = 0
    est = make_advantage(ADVANTAGES["shrinkage"])
    x = AdvantageInputs(torch.zeros(4), torch.zeros(4, dtype=torch.long), prompt_keys=keys)
    assert est(x, c).tolist() == [0.0] * 4 and est.rejections == 1
    # state is per run: a second make_advantage starts empty
    assert make_advantage(ADVANTAGES["shrinkage"]).alpha == {}
