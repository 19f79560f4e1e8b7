"""On-policy distillation (spec objectives.md section 7.2-7.3): token advantages and the G-OPD optimum."""

import math

import pytest
import torch

from tiltlm.batch import RolloutBatch
from tiltlm.objectives import OnPolicyDistillation


def _batch(tokens, old, teacher, ref=None, weights=None):
    n = len(tokens)
    col = lambda v: torch.as_tensor(v, dtype=torch.float32).view(n, 1)  # noqa: E731
    return RolloutBatch(
        prompt_ids=torch.zeros(n, 0, dtype=torch.long), prompt_mask=torch.zeros(n, 0, dtype=torch.long),
        completion_ids=torch.tensor(tokens).view(n, 1), completion_mask=torch.ones(n, 1, dtype=torch.long),
        sample_logprobs=col(old), group_ids=torch.zeros(n, dtype=torch.long), finished=torch.ones(n, dtype=torch.bool),
        rewards=torch.zeros(n), advantages=torch.zeros(n), teacher_logprobs=col(teacher),
        ref_logprobs=None if ref is None else col(ref), loss_weights=None if weights is None else col(weights),
    )


def test_opd_token_advantage_is_negative_single_sample_reverse_kl():
    # student 0.5, teacher 0.25 on the sampled token -> A = log 0.25 - log 0.5 = -0.69315 (push down)
    b = _batch([0], [math.log(0.5)], [math.log(0.25)])
    obj = OnPolicyDistillation()
    assert obj.needs == {"teacher"}
    assert obj.token_advantages(b).item() == pytest.approx(-math.log(2), abs=1e-6)
    # G-OPD, lambda 2, ref 0.4: 2 (log .25 - log .4) - (log .5 - log .4) = -1.16315
    g = OnPolicyDistillation(lam=2.0)
    assert g.needs == {"teacher", "ref"}
    b = _batch([0], [math.log(0.5)], [math.log(0.25)], ref=[math.log(0.4)])
    assert g.token_advantages(b).item() == pytest.approx(2 * math.log(0.25 / 0.4) - math.log(0.5 / 0.4), abs=1e-6)


@pytest.mark.parametrize("lam, optimum", [(0.5, [0.6667, 0.3333]), (1.0, [0.8, 0.2]), (1.25, [0.8498, 0.1502]),
                                          (2.0, [0.9412, 0.0588])])
def test_gopd_gradient_ascent_reaches_the_closed_form_optimum(lam, optimum):
    # pi_ref = [.5, .5], pi_T = [.8, .2]: maximising J with the objective's own loss (expected over y ~ pi by
    # enumeration) converges to pi_ref^(1-lambda) pi_T^lambda, normalised (spec golden values).
    ref, teacher = torch.tensor([0.5, 0.5]).log(), torch.tensor([0.8, 0.2]).log()
    logits = torch.zeros(2, requires_grad=True)
    obj = OnPolicyDistillation(lam=lam)
    opt = torch.optim.SGD([logits], lr=0.5)
    for _ in range(3000):
        logp = torch.log_softmax(logits, -1)
        b = _batch([0, 1], logp.detach(), teacher, ref=ref, weights=logp.detach().exp())
        token_loss, _ = obj.token_loss(logp.view(2, 1), b)
        opt.zero_grad()
        (token_loss * b.loss_weights).sum().backward()
        opt.step()
    pi = torch.softmax(logits.detach(), -1)
    assert pi.tolist() == pytest.approx(optimum, abs=2e-4)


def test_reward_mix_adds_the_group_advantage():
    b = _batch([0], [math.log(0.5)], [math.log(0.5)])
    b.advantages = torch.tensor([0.8])
    assert OnPolicyDistillation(reward_coef=0.5).token_advantages(b).item() == pytest.approx(0.4)


def test_teacher_sft_loss_is_token_nll_and_samples_come_from_the_teacher(tmp_path):
    from tiltlm.config import load_config
    from tiltlm.objectives import TeacherSFT
    from tiltlm.run import prepare

    b = _batch([0, 1], [math.log(0.5), math.log(0.25)], [0.0, 0.0])
    loss, _ = TeacherSFT().token_loss(torch.tensor([[math.log(0.5)], [math.log(0.25)]]), b)
    assert loss.view(-1).tolist() == pytest.approx([math.log(2), math.log(4)])
    s = prepare(load_config(None, [f"log.run_dir={tmp_path}", "objective.name=sft_teacher"]))
    assert s.engine.model is s.teacher and s.teacher is not None


def _pg_batch(adv, old, teacher, correct=None):
    b = _batch(list(range(len(old))), old, teacher)
    b.advantages = torch.tensor(adv, dtype=torch.float32)
    b.correct = torch.tensor(correct if correct is not None else [False] * len(old))
    return b


def test_rlad_alpha_zero_is_grpo_and_the_anchor_extends_the_trust_region():
    from tiltlm.objectives import ClippedPolicyGradient, TrustRegionRatioDistillation

    old, teacher = [math.log(0.2), math.log(0.2)], [math.log(0.6), math.log(0.6)]
    b = _pg_batch([1.0, -1.0], old, teacher)
    logp = torch.tensor([[math.log(0.26)], [math.log(0.26)]], requires_grad=True)  # rho_old = 1.3: GRPO clips
    grpo, _ = ClippedPolicyGradient().token_loss(logp, b)
    same, _ = TrustRegionRatioDistillation(anchor_alpha=0.0).token_loss(logp, b)
    assert torch.equal(grpo, same)
    rlad, _ = TrustRegionRatioDistillation(anchor_alpha=0.5).token_loss(logp, b)
    rlad.sum().backward()
    # A > 0: anchor = sqrt(.2 * .6) = 0.3464 > pi_theta -> rho = 0.75, unclipped: gradient -A rho pushes pi up
    assert logp.grad[0, 0].item() == pytest.approx(-0.26 / math.sqrt(0.12), abs=1e-5)
    # A < 0: rho = 0.75 < 0.8 -> clipped at 0.8, zero gradient: the teacher never pulls a penalised token up
    assert logp.grad[1, 0].item() == 0.0 and rlad[1, 0].item() == pytest.approx(0.8, abs=1e-6)
    lin = TrustRegionRatioDistillation(anchor_alpha=0.5, anchor_mixture="linear").anchor(b)
    assert lin[0, 0].item() == pytest.approx(math.log(0.4), abs=1e-6)  # .5 * .6 + .5 * .2


def test_kdrl_masks_rewarded_responses_and_anneals():
    from tiltlm.objectives import KDRL

    obj = KDRL(kd_coef_start=0.01, kd_coef_end=0.0)
    assert obj.needs == {"teacher"}
    obj.schedule(1, 11)
    assert obj.kd_coef == pytest.approx(0.01)
    b = _pg_batch([0.0, 0.0], [math.log(0.5)] * 2, [math.log(0.25)] * 2, correct=[True, False])
    logp = torch.full((2, 1), math.log(0.5), requires_grad=True)
    loss, _ = obj.token_loss(logp, b)
    loss.sum().backward()
    assert logp.grad[0, 0].item() == 0.0  # rewarded response: no distillation gradient
    assert logp.grad[1, 0].item() == pytest.approx(0.01 * math.log(2), abs=1e-6)  # coef * d k2 / d logp
    assert obj.rows_with_gradient(b).tolist() == [False, True]
    obj.schedule(11, 11)
    assert obj.kd_coef == pytest.approx(0.0)
