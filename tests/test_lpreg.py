"""Lp-Reg goldens (spec objectives.md section 6)."""

import math

import pytest
import torch

from tiltlm.batch import RolloutBatch
from tiltlm.objectives import LpReg
from tiltlm.objectives.lpreg import minp_stats

PI = torch.tensor([0.60, 0.30, 0.08, 0.02])


def test_proxy_distribution_golden():
    # kappa 0.1 -> threshold 0.06 -> proxy [0.6122, 0.3061, 0.0816, 0]
    lsm = PI.log()
    log_thr, log_mass = minp_stats(lsm, 0.1).unbind(-1)
    assert log_thr.exp().item() == pytest.approx(0.06, abs=1e-6)
    proxy = torch.where(lsm >= log_thr, lsm - log_mass, torch.tensor(-math.inf)).exp()
    assert proxy.tolist() == pytest.approx([0.6122, 0.3061, 0.0816, 0.0], abs=1e-4)


def _batch(tokens, adv):
    n = len(tokens)
    lsm = PI.log().expand(n, 1, 4)
    b = RolloutBatch(
        prompt_ids=torch.zeros(n, 0, dtype=torch.long), prompt_mask=torch.zeros(n, 0, dtype=torch.long),
        completion_ids=torch.tensor(tokens).view(n, 1), completion_mask=torch.ones(n, 1, dtype=torch.long),
        sample_logprobs=PI.log()[torch.tensor(tokens)].view(n, 1), group_ids=torch.zeros(n, dtype=torch.long),
        finished=torch.ones(n, dtype=torch.bool), advantages=torch.tensor(adv),
    )
    b.token_stats = {"minp:0.1": minp_stats(lsm, 0.1)}
    return b


def test_selected_negative_spark_is_pushed_up_and_filtered_tokens_are_not():
    # 200 negative tokens (k = floor(1%) = 2 selected): the two lowest log-probs are token 3 (p .08, kept by the
    # filter) and token 4 (p .02, filtered). On token 3: ratio 1.0204, k3 = 2.05e-4, d/dlog pi = 1 - ratio = -0.0204
    # -> descent raises log pi. Token 4 gets nothing. Positive tokens are never regularised.
    tokens = [2, 3] + [0] * 198 + [2]
    adv = [-1.0] * 200 + [1.0]
    b = _batch(tokens, adv)
    logp = PI.log()[torch.tensor(tokens)].view(-1, 1).clone().requires_grad_(True)
    obj = LpReg(kappa=0.1, coef=1.0)
    loss, stats = obj.token_loss(logp, b)
    assert stats["loss/lpreg_frac"].view(-1).tolist()[:2] == [1.0, 0.0] and stats["loss/lpreg_frac"][-1].item() == 0
    ratio = 0.08 / (0.08 + 0.60 + 0.30) / 0.08
    k3 = ratio - math.log(ratio) - 1
    assert ratio == pytest.approx(1.0204, abs=1e-4) and k3 == pytest.approx(2.05e-4, abs=1e-6)
    assert loss[0, 0].item() == pytest.approx(1.0 * 1.0 + k3, abs=1e-6)  # -A rho + k3, rho = 1
    loss[0, 0].backward()
    assert logp.grad[0, 0].item() == pytest.approx(1.0 + (1 - ratio), abs=1e-5)  # -A rho' + (1 - ratio)


def test_single_candidate_is_never_regularised():
    b = _batch([2, 0], [-1.0, -1.0])  # 2 negative tokens -> k = 1 -> the authors' guard skips
    _, stats = LpReg(kappa=0.1).token_loss(PI.log()[torch.tensor([2, 0])].view(2, 1), b)
    assert stats["loss/lpreg_frac"].sum() == 0
