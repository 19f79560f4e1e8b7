"""ROVER goldens (spec rlvr.md section 5)."""

import math

import pytest
import torch

from tiltlm.advantages import AdvantageInputs, group_zscore
from tiltlm.batch import RolloutBatch
from tiltlm.config import AdvantageConfig
from tiltlm.objectives import AGGREGATIONS, Rover

LENGTHS = [3, 2, 1, 2]


def fixture(mean_now=None, mean_old=None):
    mask = torch.tensor([[1 if t < n else 0 for t in range(3)] for n in LENGTHS])
    rewards = torch.tensor([1.0, 0, 0, 1])
    adv = group_zscore(AdvantageInputs(rewards, torch.zeros(4, dtype=torch.long)), AdvantageConfig()).float()
    b = RolloutBatch(
        prompt_ids=torch.zeros(4, 0, dtype=torch.long), prompt_mask=torch.zeros(4, 0, dtype=torch.long),
        completion_ids=torch.ones(4, 3, dtype=torch.long), completion_mask=mask, sample_logprobs=torch.full((4, 3), -1.0),
        group_ids=torch.zeros(4, dtype=torch.long), finished=torch.ones(4, dtype=torch.bool), rewards=rewards,
        advantages=adv, sample_mean_logsoftmax=torch.zeros(4, 3) if mean_old is None else mean_old,
    )
    b.token_stats = {"mean_logsoftmax": torch.zeros(4, 3) if mean_now is None else mean_now}
    b.loss_weights = AGGREGATIONS["token_mean"](mask, 0.0)
    return b


def test_on_policy_start_golden():
    # theta = old: Q = 0, Vbar = 0 -> loss = token mean of A^2 = 0.75; d loss / d logp = 2 (Q - y) / N = -2 A_i / 8
    b = fixture()
    logp = torch.full((4, 3), -1.0, requires_grad=True)
    loss, _ = Rover().token_loss(logp, b)
    total = (loss * b.loss_weights).sum()
    total.backward()
    assert total.item() == pytest.approx(0.75, abs=1e-5)  # A^2 = 0.75 up to the std eps
    a = math.sqrt(3) / 2
    assert logp.grad[0, 0].item() == pytest.approx(-2 * a / 8, abs=1e-6)
    assert logp.grad[1, 0].item() == pytest.approx(2 * a / 8, abs=1e-6)
    assert logp.grad[2, 1].item() == 0.0  # padding


def test_next_state_value_golden():
    # next-state logits theta [1,0,0] vs old [0,0,0]: mean log-softmax -1.218111 vs -1.098612 -> Vbar = -0.119499;
    # the target of the preceding token is A - 0.119499, the last token's target is exactly A
    now = torch.log_softmax(torch.tensor([1.0, 0.0, 0.0]), -1).mean().item()
    old = torch.log_softmax(torch.tensor([0.0, 0.0, 0.0]), -1).mean().item()
    assert now == pytest.approx(-1.218111, abs=1e-6) and old == pytest.approx(-1.098612, abs=1e-6)
    mean_now = torch.zeros(4, 3)
    mean_old = torch.zeros(4, 3)
    mean_now[0, 1], mean_old[0, 1] = now, old  # the state before row 0's second token
    b = fixture(mean_now, mean_old)
    _, stats = Rover().token_loss(torch.full((4, 3), -1.0), b)
    assert stats["loss/rover_next_v"][0, 0].item() == pytest.approx(-0.119499, abs=1e-6)
    assert stats["loss/rover_next_v"][0, 2].item() == 0.0  # last valid token: no successor
    # the squared loss at token (0, 0): (0 - (A - 0.119499))^2
    loss, _ = Rover().token_loss(torch.full((4, 3), -1.0), b)
    assert loss[0, 0].item() == pytest.approx((math.sqrt(3) / 2 - 0.119499) ** 2, abs=1e-5)
