"""Golden values for the clipped policy-gradient loss, aggregation modes and KL estimators (spec rlvr.md 1.1, 1.2;
objectives.md 3), and invariance of the loss/gradient to micro-batching and padding."""

import math

import pytest
import torch

from tiltlm.advantages import AdvantageInputs, group_zscore
from tiltlm.batch import RolloutBatch
from tiltlm.config import AdvantageConfig
from tiltlm.objectives import AGGREGATIONS, KL_ESTIMATORS, SURROGATES, ClippedPolicyGradient

LENGTHS = [3, 2, 1, 2]  # the shared golden fixture: G=4, rewards [1,0,0,1], 8 valid tokens


def zscore(rewards, groups):
    return group_zscore(AdvantageInputs(rewards, groups), AdvantageConfig()).float()


def fixture_batch(logp_old: torch.Tensor | None = None) -> RolloutBatch:
    C = 3
    mask = torch.tensor([[1 if t < L else 0 for t in range(C)] for L in LENGTHS])
    old = torch.full((4, C), -1.0) if logp_old is None else logp_old
    return RolloutBatch(
        prompt_ids=torch.ones(4, 2, dtype=torch.long), prompt_mask=torch.ones(4, 2, dtype=torch.long),
        completion_ids=torch.ones(4, C, dtype=torch.long), completion_mask=mask, sample_logprobs=old,
        group_ids=torch.zeros(4, dtype=torch.long), finished=torch.ones(4, dtype=torch.bool),
        rewards=torch.tensor([1.0, 0, 0, 1]), advantages=zscore(torch.tensor([1.0, 0, 0, 1]), torch.zeros(4, dtype=torch.long)),
    )


# aggregation -> (loss value at rho = 1, d loss / d logp for seq 0 token 0), hand-computed in the spec
GOLDEN_AGG = {
    "seq_mean_token_mean": (0.0, -0.86603 / (4 * 3)),
    "token_mean": (-(3 - 2 - 1 + 2) * 0.86603 / 8, -0.86603 / 8),
    "seq_mean_token_sum": (-0.43301, -0.86603 / 4),
    "seq_sum_const": (-(3 - 2 - 1 + 2) * 0.86603 / 4 / 4, -0.86603 / (4 * 4)),
}


def test_every_aggregation_has_a_golden_row():
    assert set(AGGREGATIONS) == set(GOLDEN_AGG)


@pytest.mark.parametrize("agg", sorted(AGGREGATIONS))
def test_aggregation_golden_on_policy(agg):
    batch = fixture_batch()
    batch.loss_weights = AGGREGATIONS[agg](batch.completion_mask, 4.0)
    logp = torch.full((4, 3), -1.0, requires_grad=True)
    token_loss, stats = ClippedPolicyGradient().token_loss(logp, batch)
    loss = (token_loss * batch.loss_weights).sum()
    loss.backward()
    want_loss, want_grad0 = GOLDEN_AGG[agg]
    assert loss.item() == pytest.approx(want_loss, abs=1e-5)
    assert logp.grad[0, 0].item() == pytest.approx(want_grad0, abs=1e-5)
    assert torch.all(logp.grad[batch.completion_mask == 0] == 0)  # padding carries no gradient
    assert stats["loss/clip_frac"].sum() == 0


def test_dr_grpo_token_gradient_independent_of_length():
    # Dr.GRPO golden: advantages +-0.5, constant 4 -> every token gradient is -A_i / 16 whatever L_i is.
    batch = fixture_batch()
    batch.advantages = torch.tensor([0.5, -0.5, -0.5, 0.5])
    batch.loss_weights = AGGREGATIONS["seq_sum_const"](batch.completion_mask, 4.0)
    logp = torch.full((4, 3), -1.0, requires_grad=True)
    token_loss, _ = ClippedPolicyGradient().token_loss(logp, batch)
    loss = (token_loss * batch.loss_weights).sum()
    loss.backward()
    assert loss.item() == pytest.approx(-0.0625, abs=1e-7)
    want = torch.tensor([[-1, -1, -1], [1, 1, 0], [1, 0, 0], [-1, -1, 0]]) * 0.03125
    assert torch.allclose(logp.grad, want.float(), atol=1e-7)


def test_clipping_golden():
    # A = +A, rho = e^0.5 = 1.6487 > 1.2 -> clipped: loss = -A * 1.2, zero gradient on that token.
    # A = -A, rho = e^-0.5 = 0.60653 < 0.8 -> max(-A*0.6065, -A*0.8) = 0.69282 (clipped, zero gradient).
    # A = -A, rho = e^0.5 -> unclipped side is larger: loss = A*1.6487 = 1.42785, gradient A*rho.
    A = math.sqrt(3) / 2  # the fixture's advantage magnitude
    batch = fixture_batch()
    logp = torch.tensor([[-0.5, -1.0, -1.0], [-1.5, -1.0, -1.0], [-0.5, -1.0, -1.0], [-1.0, -1.0, -1.0]], requires_grad=True)
    token_loss, stats = ClippedPolicyGradient(0.2, 0.2).token_loss(logp, batch)
    assert token_loss[0, 0].item() == pytest.approx(-A * 1.2, abs=1e-5)
    assert token_loss[1, 0].item() == pytest.approx(A * 0.8, abs=1e-5)
    assert token_loss[2, 0].item() == pytest.approx(A * math.exp(0.5), abs=1e-5)
    token_loss[:, 0].sum().backward()
    assert logp.grad[0, 0].item() == 0.0 and logp.grad[1, 0].item() == 0.0
    assert logp.grad[2, 0].item() == pytest.approx(A * math.exp(0.5), abs=1e-5)
    assert stats["loss/clip_frac"][:3, 0].tolist() == [1.0, 1.0, 0.0]


def test_clip_higher_widens_upper_bound_only():
    batch = fixture_batch()
    logp = torch.full((4, 3), -1.0)
    logp[0, 0] = -1.0 + math.log(1.25)  # rho = 1.25: clipped at 1.2, not at 1.28
    sym, _ = ClippedPolicyGradient(0.2, 0.2).token_loss(logp, batch)
    hi, _ = ClippedPolicyGradient(0.2, 0.28).token_loss(logp, batch)
    assert sym[0, 0].item() == pytest.approx(-0.86603 * 1.2, abs=1e-5)
    assert hi[0, 0].item() == pytest.approx(-0.86603 * 1.25, abs=1e-5)


def test_kl_estimator_golden():
    # pi = 0.5, pref = 0.25: log r = -0.69315; k1 = 0.69315, k2 = 0.24023, k3 = 0.19315
    logp = torch.tensor([math.log(0.5)], requires_grad=True)
    ref = torch.tensor([math.log(0.25)])
    values = {"k1": 0.69315, "k2": 0.24023, "k3": 0.19315}
    grads = {"k1": 1.0, "k2": 0.69315, "k3": 0.5}  # d/d log pi
    assert set(KL_ESTIMATORS) == set(values)
    for name, fn in KL_ESTIMATORS.items():
        if logp.grad is not None:
            logp.grad = None
        v = fn(logp, ref)
        v.sum().backward()
        assert v.item() == pytest.approx(values[name], abs=1e-5)
        assert logp.grad.item() == pytest.approx(grads[name], abs=1e-5)


def test_grpo_kl_in_loss_golden():
    # logp = -1.0, reflogp = -1.2 -> k3 = e^-0.2 + 0.2 - 1 = 0.0187308; beta * k3 is added per token.
    batch = fixture_batch()
    batch.advantages = torch.zeros(4)
    batch.ref_logprobs = torch.full((4, 3), -1.2)
    obj = ClippedPolicyGradient(beta=0.5, kl_estimator="k3")
    assert obj.needs == {"ref"}
    token_loss, stats = obj.token_loss(torch.full((4, 3), -1.0), batch)
    assert token_loss[0, 0].item() == pytest.approx(0.5 * 0.0187308, abs=1e-7)
    assert stats["kl/ref_k3"][0, 0].item() == pytest.approx(0.0187308, abs=1e-7)
    assert ClippedPolicyGradient(beta=0.0).needs == set()


def test_zero_gradient_rows():
    batch = fixture_batch()
    batch.advantages = torch.tensor([0.5, 0.0, -0.5, 0.0])
    assert ClippedPolicyGradient(beta=0.0).rows_with_gradient(batch).tolist() == [True, False, True, False]
    assert ClippedPolicyGradient(beta=0.1).rows_with_gradient(batch).all()


def _surrogate(name, log_ratio, adv, clip_low=0.2, clip_high=0.28, mask=None, c=3.0):
    old = torch.full((1, len(log_ratio)), -1.0)
    logp = (old + torch.tensor([log_ratio])).requires_grad_(True)
    m = torch.ones_like(old) if mask is None else torch.tensor([mask])
    loss, clipped = SURROGATES[name](logp, old, torch.full_like(old, adv), m, clip_low, clip_high, c)
    loss.sum().backward()
    return loss.detach()[0].tolist(), logp.grad[0].tolist(), clipped[0].tolist()


def _approx(values, expected, tol=1e-5):
    return all(abs(a - b) < tol for a, b in zip(values, expected)) and len(values) == len(expected)


SURROGATE_GOLDEN = {
    # spec rlvr.md 1.3 (DAPO): A=+1, rho=1.30 -> clip-higher loss -1.28, gradient 0; rho=1.25 -> -1.25, gradient
    # -1.25 (inside the wider bound); A=-1, rho=0.75 -> clipped at 0.8: loss 0.8, gradient 0.
    "ppo": [((math.log(1.30), 1.0), [-1.28], [0.0]), ((math.log(1.25), 1.0), [-1.25], [-1.25]),
            ((math.log(0.75), -1.0), [0.8], [0.0])],
    # A=-1: rho=5 -> ppo loss 5 is capped at -A*c = 3 (gradient 0); rho=2 -> 2 stays (gradient -A*rho = 2).
    "dual_clip": [((math.log(5.0), -1.0), [3.0], [0.0]), ((math.log(2.0), -1.0), [2.0], [2.0]),
                  ((math.log(5.0), 1.0), [-1.28], [0.0])],
    # spec 1.6: token log-ratios [0.1, 0.3] -> s = exp(0.2) = 1.22140; with eps_high = 4e-4: loss -1.0004 per token,
    # gradient 0; with eps_high = 0.5 (unclipped): loss -1.22140 per token and gradient -s on every token.
    "gspo": [(([0.1, 0.3], 1.0, 3e-4, 4e-4), [-1.0004, -1.0004], [0.0, 0.0]),
             (([0.1, 0.3], 1.0, 0.2, 0.5), [-1.22140, -1.22140], [-1.22140, -1.22140])],
    # CISPO: rho=1.5 -> weight clipped to 1.28, loss -1.28 * logp (logp = -1 + log 1.5), gradient -1.28 (PPO: 0)
    "cispo": [((math.log(1.5), 1.0), [-1.28 * (-1 + math.log(1.5))], [-1.28]),
              ((math.log(1.1), 1.0), [-1.1 * (-1 + math.log(1.1))], [-1.1])],
}


def test_every_surrogate_has_golden_rows():
    assert set(SURROGATES) == set(SURROGATE_GOLDEN)


@pytest.mark.parametrize("name", sorted(SURROGATES))
def test_surrogate_golden(name):
    for args, want_loss, want_grad in SURROGATE_GOLDEN[name]:
        log_ratio, adv, *clip = args
        log_ratio = log_ratio if isinstance(log_ratio, list) else [log_ratio]
        loss, grad, _ = _surrogate(name, log_ratio, adv, *clip)
        assert _approx(loss, want_loss) and _approx(grad, want_grad), (name, args, loss, grad)


def test_gspo_ratio_is_per_sequence_and_ignores_padding():
    # a padded third token with a wild log-ratio must not enter the sequence ratio
    loss, grad, _ = _surrogate("gspo", [0.1, 0.3, 5.0], 1.0, 0.2, 0.5, mask=[1, 1, 0])
    assert _approx(loss[:2], [-1.22140, -1.22140])


def test_grpo_objective_selects_the_surrogate():
    batch = fixture_batch()
    logp = torch.full((4, 3), -1.0)
    logp[0, 0] = -1.0 + math.log(5.0)
    batch.advantages = -batch.advantages  # row 0 now has A < 0 and rho = 5
    ppo_loss, _ = ClippedPolicyGradient(surrogate="ppo").token_loss(logp, batch)
    dual_loss, stats = ClippedPolicyGradient(surrogate="dual_clip").token_loss(logp, batch)
    assert ppo_loss[0, 0].item() == pytest.approx(math.sqrt(3) / 2 * 5, abs=1e-5)
    assert dual_loss[0, 0].item() == pytest.approx(math.sqrt(3) / 2 * 3, abs=1e-5)
    assert stats["loss/clip_frac"][0, 0] == 1.0


@pytest.mark.parametrize("name, want", [("weighted_pn", 0.3125), ("psr", -1.0), ("nsr", 1.0)])
def test_w_reinforce_psr_nsr_loss_golden(name, want):
    # spec rlvr.md section 2, fixture, token-mean, rho = 1: W-REINFORCE (lambda 0.1) -(0.3-2-1+0.2)/8 = 0.3125 over all
    # rows; PSR / NSR train on their subset only (normalise_over=kept_rows): loss -1.0 / +1.0.
    from tiltlm.advantages import ADVANTAGES

    batch = fixture_batch()
    x = AdvantageInputs(batch.rewards, batch.group_ids, batch.lengths)
    batch.advantages = ADVANTAGES[name](x, AdvantageConfig(positive_weight=0.1)).float()
    obj = ClippedPolicyGradient()
    keep = obj.rows_with_gradient(batch) if name != "weighted_pn" else torch.ones(4, dtype=torch.bool)
    batch.loss_weights = AGGREGATIONS["token_mean"](batch.completion_mask * keep.unsqueeze(-1), 0.0)
    token_loss, _ = obj.token_loss(torch.full((4, 3), -1.0), batch)
    assert (token_loss * batch.loss_weights).sum().item() == pytest.approx(want, abs=1e-6)


def test_entropy_bonus_golden():
    # p = [.5, .3, .2]: H = 1.029653; the term -coef * H has logit gradient coef * p_k (log p_k + H)
    # = 0.01 * [0.168252, -0.052296, -0.115956]
    logits = torch.tensor([0.5, 0.3, 0.2]).log().requires_grad_(True)
    lsm = torch.log_softmax(logits, -1)
    ent = -(lsm.exp() * lsm).sum().view(1, 1)
    batch = fixture_batch()
    batch.advantages = torch.zeros(4)
    batch.token_stats = {"entropy": ent.expand(4, 3)}
    obj = ClippedPolicyGradient(entropy_coef=0.01)
    assert obj.token_stats == {"entropy"} and obj.rows_with_gradient(batch).all()
    token_loss, stats = obj.token_loss(torch.full((4, 3), -1.0), batch)
    assert token_loss[0, 0].item() == pytest.approx(-0.01 * 1.029653, abs=1e-6)
    token_loss[0, 0].backward()
    assert logits.grad.tolist() == pytest.approx([0.00168252, -0.00052296, -0.00115956], abs=1e-7)


def test_update_steps_untouched_and_empty_batches_with_zero_gradients():
    """Gradients start as None (the first backward stores, not adds), yet a parameter no row reaches -- or every
    parameter, on an empty batch -- still steps with a zero gradient, so AdamW's momentum carries on."""
    from tiltlm.objectives import AGGREGATIONS
    from tiltlm.trainer import update

    used, unused = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    opt = torch.optim.AdamW([used, unused], lr=0.1, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    objective = ClippedPolicyGradient()

    def logprob_fn(mb, stats):
        return (mb.sample_logprobs + used).clone(), {}  # pi_theta = pi_old * exp(used[t]): ratio exp(used)

    batch = fixture_batch()
    batch.loss_weights = AGGREGATIONS["token_mean"](batch.completion_mask, 3.0)
    update(logprob_fn, batch, objective, opt, sched, [used, unused], 4, 0.0)
    assert used.grad is not None and used.grad.abs().sum() > 0
    assert unused.grad is not None and torch.equal(unused.grad, torch.zeros(3))
    moved = used.detach().clone()
    update(logprob_fn, batch.select(torch.zeros(4, dtype=torch.bool)), objective, opt, sched, [used, unused], 4, 0.0)
    assert torch.equal(used.grad, torch.zeros(3))  # empty batch: zero gradient ...
    assert not torch.equal(used.detach(), moved)  # ... but the step still moves the parameter (momentum)
