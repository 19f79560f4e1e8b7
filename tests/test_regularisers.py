"""Divergences toward the initial / reference policy used as RLVR regularisers: DPH-RL generators (spec
objectives.md section 4) and the RAPO-style forward-KL penalty (section 5), with hand-computed values."""

import math

import pytest
import torch

from tiltlm.batch import RolloutBatch
from tiltlm.objectives import GENERATORS, ClippedPolicyGradient, FDivergence
from tiltlm.objectives.dph import DivergencePreservingHybrid
from tiltlm.target import RewardEvidence, Target

# u = pi_theta / pi0 -> (forward KL generator u - 1 - log u, JS generator u log u - (u+1) log((u+1)/2))
GOLDEN = {2.0: (0.30685, 0.16990), 0.5: (0.19315, 0.08495), 1.0: (0.0, 0.0)}


def test_every_generator_has_golden_values():
    assert set(GENERATORS) == {"fkl", "js"}


@pytest.mark.parametrize("u", sorted(GOLDEN))
def test_dph_generator_golden(u):
    log_u = torch.tensor([math.log(u)], dtype=torch.float64, requires_grad=True)
    fwd, js = GOLDEN[u]
    assert GENERATORS["fkl"](log_u).item() == pytest.approx(fwd, abs=1e-5)
    assert GENERATORS["js"](log_u).item() == pytest.approx(js, abs=1e-5)
    GENERATORS["fkl"](log_u).backward()
    assert log_u.grad.item() == pytest.approx(u - 1, abs=1e-12)  # negative when pi_theta < pi0: pushes mass back


def test_dph_generators_expectations_are_divergences():
    pi0 = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    pi = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
    log_u = (pi / pi0).log()
    kl_pi0_pi = float((pi0 * (pi0 / pi).log()).sum())
    m = (pi + pi0) / 2
    js = 0.5 * float((pi * (pi / m).log()).sum()) + 0.5 * float((pi0 * (pi0 / m).log()).sum())
    assert float((pi0 * GENERATORS["fkl"](log_u)).sum()) == pytest.approx(kl_pi0_pi, abs=1e-12)
    assert float((pi0 * GENERATORS["js"](log_u)).sum()) == pytest.approx(2 * js, abs=1e-12)


def _rows(tokens, logp_old, rewards, rehearsal=None, ref=None):
    n = len(tokens)
    return RolloutBatch(
        prompt_ids=torch.zeros(n, 0, dtype=torch.long), prompt_mask=torch.zeros(n, 0, dtype=torch.long),
        completion_ids=torch.tensor(tokens).view(n, 1), completion_mask=torch.ones(n, 1, dtype=torch.long),
        sample_logprobs=torch.tensor(logp_old, dtype=torch.float32).view(n, 1), group_ids=torch.zeros(n, dtype=torch.long),
        finished=torch.ones(n, dtype=torch.bool), rewards=torch.tensor(rewards, dtype=torch.float32),
        ref_logprobs=None if ref is None else torch.tensor(ref, dtype=torch.float32).view(n, 1),
        rehearsal=None if rehearsal is None else torch.tensor(rehearsal),
    )


def test_dph_loss_on_rehearsal_rows_only():
    obj = DivergencePreservingHybrid(coef=0.1, divergence="fkl")
    batch = _rows([0, 1], [math.log(0.5), math.log(0.25)], [1.0, 0.0], rehearsal=[False, True])
    batch.advantages = torch.tensor([0.7, 0.0])
    logp = torch.tensor([[math.log(0.5)], [math.log(0.5)]], requires_grad=True)  # rehearsal row: u = 0.5/0.25 = 2
    loss, stats = obj.token_loss(logp, batch)
    assert loss[0, 0].item() == pytest.approx(-0.7, abs=1e-6)  # RL row: -A * rho, rho = 1
    assert loss[1, 0].item() == pytest.approx(0.30685, abs=1e-5)  # rehearsal row: generator at u = 2
    assert obj.rows_with_gradient(batch).tolist() == [True, True]
    w = obj.rehearsal_weights(torch.tensor([[1, 1, 0], [1, 0, 0]]))
    assert torch.allclose(w, torch.tensor([[0.1 / 3, 0.1 / 3, 0], [0.1 / 3, 0, 0]]))


def test_rapo_forward_kl_gradient_spares_tokens_outside_reference_support():
    # pi = [.5,.3,.2], pi_ref = [.6,.4,0], r = 0 (so pi~ = pi_ref). Rows replicate pi exactly (5 a, 3 b, 2 c) so the
    # group's self-normalised Z is exact; the expected gradient of -lambda KL(pi~||pi) wrt logits is pi - pi~ =
    # [-0.1, -0.1, 0.2]: token c (outside the support) is pushed down only by renormalisation, never directly.
    tokens = [0] * 5 + [1] * 3 + [2] * 2
    pi = torch.tensor([0.5, 0.3, 0.2])
    ref = torch.tensor([0.6, 0.4, 1e-30]).log()
    batch = _rows(tokens, [math.log(pi[t]) for t in tokens], [0.0] * 10, ref=[ref[t].item() for t in tokens])
    rapo = ClippedPolicyGradient(forward_kl=FDivergence(Target(RewardEvidence(1.0)), "fkl"), forward_kl_coef=1.0)
    assert rapo.needs == {"ref"}
    signal = rapo.sequence_signal(batch)
    assert torch.allclose(signal[[0, 5, 8]], torch.tensor([1.2, 4 / 3, 0.0]), atol=1e-5)  # w~ = pi~/pi
    logits = torch.zeros(3, requires_grad=True)
    logp = torch.log_softmax(logits + pi.log(), -1)[torch.tensor(tokens)]
    loss = -((signal - signal.mean()) * logp).mean()  # REINFORCE with the group-mean baseline, rows ~ pi
    loss.backward()
    assert torch.allclose(-logits.grad, -(pi - torch.tensor([0.6, 0.4, 0.0])), atol=1e-5)


def test_truncated_sequence_importance_weight():
    # off-policy f-DPG: the detached sequence weight pi/q = 3 is truncated at 1.5 -> loss -1.5 * A * log pi
    batch = _rows([0], [math.log(0.1)], [1.0], ref=[math.log(0.1)])
    batch.advantages = torch.tensor([0.4])
    logp = torch.tensor([[math.log(0.3)]], requires_grad=True)
    for cap, weight in [(0.0, 3.0), (1.5, 1.5)]:
        obj = FDivergence(Target(RewardEvidence(1.0)), "fkl", max_seq_weight=cap)
        loss, stats = obj.token_loss(logp, batch)
        assert stats["loss/seq_ratio"].item() == pytest.approx(weight, abs=1e-5)
        assert loss.item() == pytest.approx(-weight * 0.4 * math.log(0.3), abs=1e-5)
