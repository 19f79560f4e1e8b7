"""Golden values for the Bayesian-inference view of KL-regularised fine-tuning (spec objectives.md sections 1, 2, 3).

Every expected number here was re-derived in float64 by hand formulas (math / plain torch tensor algebra), never by
the library function under test:
- section 1: the posterior pi* = pi0 exp(r/beta) / Z, the identity J(pi) = beta log Z - beta KL(pi || pi*), the hard
  constraint target pi0 * phi / Z;
- section 2: f-DPG gradients g_k = pi_k (f'_k - sum_j pi_j f'_j) against autograd of D_f, the forward-KL
  pseudo-rewards, the importance-sampling Z estimator, off-/on-policy equivalence, an exact 27-sequence check of the
  whole FDivergence loss, MomentEvidence (information projection), and convergence on the exact test bed;
- section 3: the k1/k2/k3 values, derivatives and exact expected gradients, in and out of ClippedPolicyGradient.

"Exact expected gradient" means: enumerate every sequence y, weight its loss by the probability of sampling it (a
constant, detached) and differentiate. Two tricks make the library's own per-group Z estimator exact as well:
a batch whose rows appear in exact proportion to the sampling distribution q (e.g. 5 a, 3 b, 2 c for q = [.5,.3,.2]),
and a batch that enumerates every sequence once under a *uniform* proposal q (then mean P/q = sum P = Z).
"""

import math

import pytest
import torch

from tiltlm.batch import RolloutBatch
from tiltlm.objectives import AGGREGATIONS, ClippedPolicyGradient, FDivergence
from tiltlm.objectives.fdpg import F_DIVERGENCES, f_divergence
from tiltlm.objectives.kl import KL_ESTIMATORS
from tiltlm.target import ConstraintEvidence, MomentEvidence, ProductEvidence, RewardEvidence, Target
from tiltlm.testbed import TabularPolicy, all_sequences, divergences
from tiltlm.testbed import Testbed as Bed  # aliased: pytest would try to collect a class named Test*

D = torch.float64
E = math.e

# Section 1 toy: vocabulary {a, b, c}, single-token "sequences".
PI0 = [0.5, 0.3, 0.2]
R = [0.0, 1.0, 2.0]
Z_HAND = 0.5 + 0.3 * E + 0.2 * E**2  # = 2.793296...
P_HAND = [0.5 / Z_HAND, 0.3 * E / Z_HAND, 0.2 * E**2 / Z_HAND]  # = [0.17900, 0.29193, 0.52907]


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=D)


def kl(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) with 0 log 0 = 0."""
    mask = a > 0
    return (a[mask] * (a[mask].log() - b[mask].log())).sum()


def make_batch(ids: torch.Tensor, sample_lp: torch.Tensor, ref_lp=None, rewards=None, policy_lp=None,
               advantages=None) -> RolloutBatch:
    """One prompt-less group; ids [B, C], every token valid."""
    B, C = ids.shape
    return RolloutBatch(
        prompt_ids=torch.zeros(B, 0, dtype=torch.long), prompt_mask=torch.zeros(B, 0, dtype=torch.long),
        completion_ids=ids, completion_mask=torch.ones(B, C, dtype=torch.long), sample_logprobs=sample_lp,
        group_ids=torch.zeros(B, dtype=torch.long), finished=torch.ones(B, dtype=torch.bool),
        rewards=rewards, advantages=advantages, ref_logprobs=ref_lp, policy_logprobs=policy_lp,
    )


# ---------------------------------------------------------------------------------------------------------------------
# Section 1: the posterior, the KL-regularised objective and the hard constraint


def J(pi: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """KL-regularised RL objective E_pi[r] - beta KL(pi || pi0), by hand."""
    return (pi * t(R)).sum() - beta * kl(pi, t(PI0))


def posterior(beta: float) -> tuple[torch.Tensor, float]:
    """pi* and log Z from the library's Target (the code under test) plus a plain logsumexp."""
    log_w = Target(RewardEvidence(beta)).log_weights(t(PI0).log(), t(R))
    assert log_w.dtype == D
    log_z = torch.logsumexp(log_w, 0)
    return (log_w - log_z).exp(), float(log_z)


def test_posterior_goldens():
    pi_star, log_z = posterior(1.0)
    assert log_z == pytest.approx(1.02722, abs=1e-5)
    assert math.exp(log_z) == pytest.approx(2.79330, abs=1e-5)
    assert log_z == pytest.approx(math.log(Z_HAND), abs=1e-13)
    torch.testing.assert_close(pi_star, t([0.1790, 0.2919, 0.5291]), atol=1e-4, rtol=0)
    torch.testing.assert_close(pi_star, t(P_HAND), atol=1e-14, rtol=0)


def test_objective_values_and_collapse():
    pi_star, log_z = posterior(1.0)
    delta_c = t([0.0, 0.0, 1.0])
    assert float(J(pi_star)) == pytest.approx(log_z, abs=1e-12)  # the maximum is log Z
    assert float(J(pi_star)) == pytest.approx(1.02722, abs=1e-5)
    assert float(J(t(PI0))) == pytest.approx(0.7, abs=1e-12)
    assert float(J(delta_c)) == pytest.approx(0.39056, abs=1e-5)  # 2 - log(1/0.2)
    assert float(J(delta_c)) < float(J(pi_star)) - 0.6  # the collapsed policy is strictly worse


@pytest.mark.parametrize("beta", [1.0, 0.5, 2.0])
def test_objective_identity_for_random_policies(beta):
    """J(pi) = beta log Z - beta KL(pi || pi*) for every pi, to 1e-10 in float64."""
    pi_star, log_z = posterior(beta)
    g = torch.Generator().manual_seed(7)
    for _ in range(6):
        pi = torch.softmax(2 * torch.randn(3, generator=g, dtype=D), 0)
        assert float(J(pi, beta)) == pytest.approx(beta * log_z - beta * float(kl(pi, pi_star)), abs=1e-10)
    # and the maximiser is pi*: any other pi scores lower
    assert float(J(pi_star, beta)) > float(J(torch.softmax(torch.randn(3, generator=g, dtype=D), 0), beta))


def test_posterior_temperature_limits():
    cold, _ = posterior(1e-3)  # beta -> 0: collapse onto argmax r
    torch.testing.assert_close(cold, t([0.0, 0.0, 1.0]), atol=1e-12, rtol=0)
    hot, _ = posterior(1e4)  # beta -> inf: the prior
    torch.testing.assert_close(hot, t(PI0), atol=1e-4, rtol=0)


def test_hard_constraint_target():
    phi = t([0.0, 1.0, 1.0])
    log_w = Target(ConstraintEvidence(1.0)).log_weights(t(PI0).log(), phi)
    log_z = torch.logsumexp(log_w, 0)
    assert float(log_z.exp()) == pytest.approx(0.5, abs=1e-14)  # Z = P_pi0(phi = 1)
    torch.testing.assert_close((log_w - log_z).exp(), t([0.0, 0.6, 0.4]), atol=1e-14, rtol=0)
    # a reward tilt and a constraint together: potentials multiply (constraint r >= 1 is phi above)
    log_w2 = Target(ProductEvidence([RewardEvidence(1.0), ConstraintEvidence(1.0)])).log_weights(t(PI0).log(), t(R))
    z2 = 0.3 * E + 0.2 * E**2
    assert float(torch.logsumexp(log_w2, 0)) == pytest.approx(math.log(z2), abs=1e-13)
    torch.testing.assert_close((log_w2 - math.log(z2)).exp(), t([0.0, 0.3 * E / z2, 0.2 * E**2 / z2]), atol=1e-14,
                               rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Section 2.4: f-divergence gradients at pi = uniform, target p = pi* of section 1

SPEC_GRADS = {
    "fkl": [0.1543, 0.0414, -0.1957],
    "rkl": [0.1748, 0.0117, -0.1865],
    "js": [0.0800, 0.0136, -0.0936],
    "tv": [0.1111, 0.1111, -0.2222],
}


def fprime_gradient(fprime, pi: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """g_k = pi_k (f'_k - sum_j pi_j f'_j): the exact E_{y~pi}[f'(t(y)) grad_logits log pi(y)]."""
    fp = fprime((pi / p).log())
    return pi * (fp - (pi * fp).sum())


def autograd_gradient(f, logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """d/d logits of D_f(pi || p) = sum_y p f(pi/p), pi = softmax(logits)."""
    logits = logits.clone().requires_grad_(True)
    pi = torch.softmax(logits, 0)
    (grad,) = torch.autograd.grad((p * f((pi / p).log())).sum(), logits)
    return grad


def independent_divergence(name: str, pi: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """D_f(pi || p) from its textbook formula (no f(t) involved)."""
    if name == "fkl":
        return (p * (p.log() - pi.log())).sum()
    if name == "rkl":
        return (pi * (pi.log() - p.log())).sum()
    if name == "js":  # f-DPG's JS generator is 2 JS = KL(pi || m) + KL(p || m)
        m = (pi + p) / 2
        return (pi * (pi / m).log()).sum() + (p * (p / m).log()).sum()
    if name == "tv":
        return 0.5 * (pi - p).abs().sum()
    raise KeyError(name)


def test_every_divergence_has_a_golden():
    assert set(F_DIVERGENCES) == set(SPEC_GRADS)


@pytest.mark.parametrize("name", sorted(SPEC_GRADS))
def test_fdpg_logit_gradient_goldens(name):
    f, fprime = F_DIVERGENCES[name]
    p = t(P_HAND)
    uniform = torch.full((3,), 1 / 3, dtype=D)
    g = fprime_gradient(fprime, uniform, p)
    torch.testing.assert_close(g, t(SPEC_GRADS[name]), atol=1e-4, rtol=0)  # spec values are 4-decimal roundings
    # f and f' agree: autograd of sum_y p f(pi/p) is the same vector
    torch.testing.assert_close(autograd_gradient(f, torch.zeros(3, dtype=D), p), g, atol=1e-12, rtol=0)
    # and f really is the named divergence, normalised by f(1) = 0
    assert float((p * f((uniform / p).log())).sum()) == pytest.approx(
        float(independent_divergence(name, uniform, p)), abs=1e-13)
    assert float(f(torch.zeros((), dtype=D))) == 0.0
    if name == "fkl":  # the softmax cross-entropy check
        torch.testing.assert_close(g, uniform - p, atol=1e-14, rtol=0)


@pytest.mark.parametrize("alpha", [0.3, 0.7])
def test_alpha_divergence_f_and_fprime_agree(alpha):
    f, fprime = f_divergence("alpha", alpha)
    p = t(P_HAND)
    logits = t([0.3, -0.8, 0.1])
    pi = torch.softmax(logits, 0)
    # Amari alpha-divergence: (sum pi^a p^(1-a) - 1) / (a (a - 1))
    closed = ((pi**alpha * p ** (1 - alpha)).sum() - 1) / (alpha * (alpha - 1))
    assert float((p * f((pi / p).log())).sum()) == pytest.approx(float(closed), abs=1e-13)
    torch.testing.assert_close(autograd_gradient(f, logits, p), fprime_gradient(fprime, pi, p), atol=1e-12, rtol=0)


def test_alpha_divergence_limits():
    p = t(P_HAND)
    pi = torch.full((3,), 1 / 3, dtype=D)
    g_fkl = fprime_gradient(F_DIVERGENCES["fkl"][1], pi, p)
    g_rkl = fprime_gradient(F_DIVERGENCES["rkl"][1], pi, p)
    assert float((g_fkl - g_rkl).abs().max()) > 0.02  # the two limits are distinguishable
    for alpha, expected in [(1e-4, g_fkl), (1 - 1e-4, g_rkl)]:
        f, fprime = f_divergence("alpha", alpha)
        g = fprime_gradient(fprime, pi, p)
        torch.testing.assert_close(g, expected, atol=1e-4, rtol=0)
        torch.testing.assert_close(autograd_gradient(f, torch.zeros(3, dtype=D), p), expected, atol=1e-4, rtol=0)
    for bad in (0.0, 1.0):
        with pytest.raises(ValueError):
            f_divergence("alpha", bad)


# ---------------------------------------------------------------------------------------------------------------------
# Section 2.4: the optimum and the forward-KL pseudo-rewards


@pytest.mark.parametrize("name", [*sorted(F_DIVERGENCES), "alpha"])
def test_every_fdpg_gradient_vanishes_at_the_target(name):
    f, fprime = f_divergence(name, 0.4)
    p = t(P_HAND)
    assert float(fprime_gradient(fprime, p, p).abs().max()) < 1e-15
    if name != "tv":  # |t - 1| has no derivative at t = 1
        assert float(autograd_gradient(f, p.log(), p).abs().max()) < 1e-12
    # and a policy away from p has a nonzero gradient (the check above is not vacuous)
    assert float(fprime_gradient(fprime, torch.full((3,), 1 / 3, dtype=D), p).abs().max()) > 0.01


@pytest.mark.parametrize(("name", "constant"), [("fkl", 1.0), ("rkl", -1.0), ("js", 0.0)])
def test_objective_signal_is_constant_at_the_target(name, constant):
    """Sampling from pi = p itself, every P/p equals Z, so the per-group Z estimate is exact and the pseudo-reward is
    -f'(1) for every y: after baselining, no gradient. (TV has its own test below: sign(0) = 0.)"""
    obj = FDivergence(Target(RewardEvidence(1.0)), name)
    batch = three_token_batch(t(P_HAND).log(), [0, 1, 2])
    signal = obj.sequence_signal(batch).double()
    torch.testing.assert_close(signal, torch.full((3,), constant, dtype=D), atol=1e-7, rtol=0)


def test_tv_pseudo_reward_is_zero_at_the_target():
    assert float(F_DIVERGENCES["tv"][1](torch.zeros((), dtype=D))) == 0.0  # sign(0) = 0


def three_token_batch(log_q: torch.Tensor, rows: list[int], log_pi: torch.Tensor | None = None) -> RolloutBatch:
    ids = torch.tensor(rows)[:, None]
    return make_batch(
        ids, sample_lp=log_q[ids], ref_lp=t(PI0).log()[ids], rewards=t(R)[ids[:, 0]],
        policy_lp=None if log_pi is None else log_pi[ids],
    )


@pytest.mark.parametrize("z_estimate", ["group", "running"])
def test_forward_kl_pseudo_rewards_at_uniform_policy(z_estimate):
    """On-policy at pi = uniform with one row per token, mean P/pi = sum P = Z: the estimate is exact."""
    obj = FDivergence(Target(RewardEvidence(1.0)), "fkl", z_estimate=z_estimate)
    uniform = torch.full((3,), 1 / 3, dtype=D)
    signal = obj.sequence_signal(three_token_batch(uniform.log(), [0, 1, 2])).double()
    torch.testing.assert_close(signal, t([0.537, 0.876, 1.587]), atol=1e-3, rtol=0)
    torch.testing.assert_close(signal, t(P_HAND) / uniform, atol=1e-6, rtol=0)  # float32 signal
    assert float((uniform * signal).sum()) == pytest.approx(1.0, abs=1e-6)  # the perfect baseline is 1


# ---------------------------------------------------------------------------------------------------------------------
# Section 2.1: the importance-sampling Z estimator


def test_z_estimator_exact_expectation():
    log_iw = Target.log_importance_weights(Target(RewardEvidence(1.0)).log_weights(t(PI0).log(), t(R)), t(PI0).log())
    z = float((t(PI0) * log_iw.exp()).sum())  # E_{y~q}[P/q], q = pi0
    assert z == pytest.approx(2.7933, abs=1e-4)
    assert z == pytest.approx(Z_HAND, abs=1e-13)


def test_log_z_on_a_proportional_sample():
    """Rows in exact proportion to q = pi0 (5 a, 3 b, 2 c): the sample mean of P/q is exactly Z; ESS by hand."""
    rows = torch.tensor([0] * 5 + [1] * 3 + [2] * 2)
    log_w = Target(RewardEvidence(1.0)).log_weights(t(PI0).log()[rows], t(R)[rows])
    log_z, ess = Target.log_Z(Target.log_importance_weights(log_w, t(PI0).log()[rows]))
    assert log_z == pytest.approx(math.log(Z_HAND), abs=1e-13)
    w = [1.0] * 5 + [E] * 3 + [E**2] * 2  # P/q = exp(r)
    assert ess == pytest.approx(sum(w) ** 2 / sum(x * x for x in w), abs=1e-10)  # = 5.7217
    assert Target.log_Z(torch.full((4,), -math.inf, dtype=D)) == (-math.inf, 0.0)


def test_log_z_monte_carlo():
    n = 20000
    g = torch.Generator().manual_seed(0)
    ys = torch.multinomial(t(PI0), n, replacement=True, generator=g)
    log_w = Target(RewardEvidence(1.0)).log_weights(t(PI0).log()[ys], t(R)[ys])
    log_z, ess = Target.log_Z(Target.log_importance_weights(log_w, t(PI0).log()[ys]))
    # sd of the estimate: sqrt((E w^2 - Z^2) / n) = 0.017 (0.6 %), so 5 % is ~8 sd
    assert abs(math.exp(log_z) / 2.7933 - 1) < 0.05
    assert 1 <= ess <= n
    # ESS / n -> Z^2 / E_q[w^2] = 7.8025 / 13.636 = 0.572
    expected_ratio = Z_HAND**2 / (0.5 + 0.3 * E**2 + 0.2 * E**4)
    assert abs(ess / n - expected_ratio) < 0.03


# ---------------------------------------------------------------------------------------------------------------------
# Section 3: KL estimators

PI_K = [0.5, 0.3, 0.2]
PREF = [0.25, 0.25, 0.5]
KL_GOLDEN = {  # value and d/d log pi at pi = 0.5, pref = 0.25
    "k1": (0.69315, 1.0),
    "k2": (0.24023, 0.69315),
    "k3": (0.19315, 0.5),
}
EXPECTED_LOGIT_GRAD = {
    "k1": [0.0, 0.0, 0.0],
    "k2": [0.2376, -0.0107, -0.2269],  # grad KL(pi || pref)
    "k3": [0.25, 0.05, -0.30],  # pi - pref = grad KL(pref || pi)
}


@pytest.mark.parametrize("name", sorted(KL_GOLDEN))
def test_kl_estimator_value_and_derivative(name):
    value, derivative = KL_GOLDEN[name]
    logp = torch.tensor(math.log(0.5), dtype=D, requires_grad=True)
    k = KL_ESTIMATORS[name](logp, torch.tensor(math.log(0.25), dtype=D))
    (dk,) = torch.autograd.grad(k, logp)
    assert float(k.detach()) == pytest.approx(value, abs=1e-5)
    assert float(dk) == pytest.approx(derivative, abs=1e-5)


def grad_kl_reverse() -> torch.Tensor:
    logits = t(PI_K).log().requires_grad_(True)
    pi = torch.softmax(logits, 0)
    return torch.autograd.grad((pi * (pi.log() - t(PREF).log())).sum(), logits)[0]


def grad_kl_forward() -> torch.Tensor:
    logits = t(PI_K).log().requires_grad_(True)
    pref = t(PREF)
    return torch.autograd.grad((pref * (pref.log() - torch.log_softmax(logits, 0))).sum(), logits)[0]


def test_reference_gradients_of_the_two_kls():
    torch.testing.assert_close(grad_kl_reverse(), t(EXPECTED_LOGIT_GRAD["k2"]), atol=1e-4, rtol=0)
    torch.testing.assert_close(grad_kl_forward(), t(PI_K) - t(PREF), atol=1e-14, rtol=0)


@pytest.mark.parametrize("name", sorted(EXPECTED_LOGIT_GRAD))
def test_kl_estimator_expected_logit_gradient(name):
    """E_{y~pi}[grad_logits k(log pi(y), log pref(y))], y fixed: enumerate, weight by pi(y) detached."""
    logits = t(PI_K).log().requires_grad_(True)
    logp = torch.log_softmax(logits, 0)
    weights = logp.detach().exp()
    loss = (weights * KL_ESTIMATORS[name](logp, t(PREF).log())).sum()
    (grad,) = torch.autograd.grad(loss, logits)
    torch.testing.assert_close(grad, t(EXPECTED_LOGIT_GRAD[name]), atol=1e-4, rtol=0)
    exact = {"k1": torch.zeros(3, dtype=D), "k2": grad_kl_reverse(), "k3": grad_kl_forward()}[name]
    torch.testing.assert_close(grad, exact, atol=1e-12, rtol=0)


def pg_expected_gradient(objective: ClippedPolicyGradient, rewards: torch.Tensor | None = None) -> torch.Tensor:
    """Exact E_{y~pi} of the gradient of ClippedPolicyGradient.token_loss, one single-token row per y."""
    logits = t(PI_K).log().requires_grad_(True)
    ids = torch.arange(3)[:, None]
    logp = torch.log_softmax(logits, 0)[ids]  # [3, 1]
    batch = make_batch(ids, sample_lp=logp.detach(), ref_lp=t(PREF).log()[ids],
                       rewards=torch.zeros(3, dtype=D) if rewards is None else rewards)
    signal = objective.sequence_signal(batch).double()
    pi = t(PI_K)
    batch.advantages = signal - (pi * signal).sum()  # exact on-policy baseline (the mean of the signal)
    token_loss, _ = objective.token_loss(logp, batch)
    (grad,) = torch.autograd.grad((pi[:, None] * token_loss).sum(), logits)
    return grad


@pytest.mark.parametrize(
    ("estimator", "correction", "expected"),
    [("k3", True, "k2"), ("k3", False, "k3"), ("k2", False, "k2"), ("k1", False, "k1")],
)
def test_kl_in_loss_expected_gradient(estimator, correction, expected):
    """KL in the loss with zero advantages: k3 regularises the FORWARD KL unless corrected by pi/pi_old."""
    obj = ClippedPolicyGradient(beta=1.0, kl_estimator=estimator, kl_placement="loss", kl_correction=correction)
    grad = pg_expected_gradient(obj)
    torch.testing.assert_close(grad, t(EXPECTED_LOGIT_GRAD[expected]), atol=1e-4, rtol=0)
    exact = {"k1": torch.zeros(3, dtype=D), "k2": grad_kl_reverse(), "k3": grad_kl_forward()}[expected]
    torch.testing.assert_close(grad, exact, atol=1e-12, rtol=0)


def test_kl_in_reward_is_the_reverse_kl_gradient():
    """k1 as a reward penalty (never differentiated): REINFORCE gives grad KL(pi || pref) exactly."""
    obj = ClippedPolicyGradient(beta=1.0, kl_estimator="k1", kl_placement="reward")
    torch.testing.assert_close(pg_expected_gradient(obj), grad_kl_reverse(), atol=1e-12, rtol=0)
    # with a reward too: grad of beta KL(pi||pref) - E_pi[r]; E_pi[r] has gradient pi * (r - E_pi r)
    r = t([1.0, 0.0, 2.0])
    pi = t(PI_K)
    expected = grad_kl_reverse() - pi * (r - (pi * r).sum())
    torch.testing.assert_close(pg_expected_gradient(obj, rewards=r), expected, atol=1e-12, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Section 2.1 / 2.4: off-policy and on-policy DPG are the same gradient in expectation

PI_OFF = [0.1, 0.6, 0.3]  # the policy (rational, so a proportional on-policy batch exists)


def proportional_rows(probs: list[float], n: int = 10) -> list[int]:
    counts = [round(q * n) for q in probs]
    assert sum(counts) == n and all(abs(c / n - q) < 1e-12 for c, q in zip(counts, probs))
    return [y for y, c in enumerate(counts) for _ in range(c)]


def dpg_expected_gradient(proposal: list[float] | None) -> tuple[torch.Tensor, FDivergence, RolloutBatch]:
    """Exact expected gradient of FDivergence("fkl") with samples from ``proposal`` (None: on-policy).

    The batch holds each token in exact proportion to its sampling probability, so the library's per-group Z estimate
    (mean P/q) is exactly Z and the library's seq_mean_token_sum aggregation (a plain mean over rows) is exactly the
    expectation under q. Advantages = pseudo-reward minus its exact pi-weighted mean (any constant baseline leaves the
    exact expected gradient unchanged).
    """
    logits = t(PI_OFF).log().requires_grad_(True)
    log_pi = torch.log_softmax(logits, 0)
    q = PI_OFF if proposal is None else proposal
    rows = proportional_rows(q)
    batch = three_token_batch(t(q).log(), rows, None if proposal is None else log_pi.detach())
    obj = FDivergence(Target(RewardEvidence(1.0)), "fkl", z_estimate="group")
    signal = obj.sequence_signal(batch).double()
    per_token = torch.stack([signal[rows.index(y)] for y in range(3)])
    batch.advantages = signal - (t(PI_OFF) * per_token).sum()
    batch.loss_weights = AGGREGATIONS["seq_mean_token_sum"](batch.completion_mask, 0.0)
    token_loss, _ = obj.token_loss(log_pi[batch.completion_ids], batch)
    (grad,) = torch.autograd.grad((token_loss * batch.loss_weights).sum(), logits)
    return grad, obj, batch


def test_dpg_offline_equals_online():
    expected = t(PI_OFF) - t(P_HAND)  # grad_logits KL(p || pi) = pi - p
    on, _, _ = dpg_expected_gradient(None)
    off, obj, batch = dpg_expected_gradient(PI0)
    torch.testing.assert_close(on, expected, atol=1e-6, rtol=0)  # float32 pseudo-rewards
    torch.testing.assert_close(off, expected, atol=1e-6, rtol=0)
    # the ingredients: the per-group Z estimate is exact, and the pseudo-rewards are p/pi, not p/q
    log_q = batch.sample_logprobs.sum(-1)
    log_z = obj.log_z(batch, log_q, batch.ref_logprobs.sum(-1))
    torch.testing.assert_close(log_z, torch.full_like(log_z, math.log(Z_HAND)), atol=1e-13, rtol=0)
    ids = batch.completion_ids[:, 0]
    torch.testing.assert_close(obj.sequence_signal(batch).double(), (t(P_HAND) / t(PI_OFF))[ids], atol=1e-6, rtol=0)


def test_dpg_offline_one_weighted_row_per_token():
    """The same off-policy gradient from one row per token weighted by q(y), with the exact Z supplied (the per-group
    estimate over unweighted rows would not be Z here)."""
    logits = t(PI_OFF).log().requires_grad_(True)
    log_pi = torch.log_softmax(logits, 0)
    q = t(PI0)
    batch = three_token_batch(q.log(), [0, 1, 2], log_pi.detach())
    obj = FDivergence(Target(RewardEvidence(1.0)), "fkl")
    obj.log_z = lambda b, log_q, log_prior, update=False: torch.full_like(log_q, math.log(Z_HAND))
    signal = obj.sequence_signal(batch).double()
    batch.advantages = signal - (t(PI_OFF) * signal).sum()
    token_loss, stats = obj.token_loss(log_pi[batch.completion_ids], batch)
    torch.testing.assert_close(stats["loss/seq_ratio"][:, 0].double(), t(PI_OFF) / q, atol=1e-12, rtol=0)
    (grad,) = torch.autograd.grad((q[:, None] * token_loss).sum(), logits)
    torch.testing.assert_close(grad, t(PI_OFF) - t(P_HAND), atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Section 2.4: the whole FDivergence loss on an enumerable toy with length 3 (27 sequences)

TOY_BETA = 0.5


@pytest.fixture(scope="module")
def toy():
    bed = Bed(vocab=3, length=3, reward="count:0", seed=1)
    g = torch.Generator().manual_seed(3)
    policy = TabularPolicy(3, 3, torch.randn(13, 3, generator=g, dtype=D))
    return bed, policy, bed.exact(bed.target("reward", TOY_BETA))


def exact_divergence_gradient(name: str, bed: Bed, policy: TabularPolicy, log_p: torch.Tensor) -> torch.Tensor:
    policy.zero_grad()
    log_pi = policy.token_logprobs(bed.seqs).sum(-1)
    independent_divergence(name, log_pi.exp(), log_p.exp()).backward()
    grad = policy.logits.grad.clone()
    policy.zero_grad()
    return grad


@pytest.mark.parametrize("name", sorted(F_DIVERGENCES))
@pytest.mark.parametrize("mode", ["uniform_proposal", "on_policy_weighted"])
def test_fdivergence_loss_exact_gradient_on_27_sequences(toy, name, mode):
    """Expected gradient of the library's loss == autograd of the exact D_f(pi_theta || pi*), to 1e-6.

    uniform_proposal: every sequence once, sampled (in the batch's bookkeeping) from the uniform q = 1/27; the
      library's per-group Z estimate mean P/q = sum P is then exact, seq_ratio = pi/q, and the library's own
      seq_mean_token_sum aggregation (1/27 per row) gives the expectation. Nothing is overridden.
    on_policy_weighted: every sequence once as an on-policy sample, each row's loss weighted by pi_theta(y)
      (detached); the exact log Z is supplied by overriding the objective's log_z.
    """
    bed, policy, exact = toy
    seqs = bed.seqs
    n = seqs.shape[0]
    obj = FDivergence(bed.target("reward", TOY_BETA), name)
    ref_lp = bed.prior.token_logprobs(seqs)
    with torch.no_grad():
        pol_lp = policy.token_logprobs(seqs)
    if mode == "uniform_proposal":
        batch = make_batch(seqs, torch.full_like(pol_lp, -math.log(3)), ref_lp, bed.rewards, policy_lp=pol_lp)
        log_z = obj.log_z(batch, batch.sample_logprobs.sum(-1), ref_lp.sum(-1))
        torch.testing.assert_close(log_z, torch.full_like(log_z, exact.log_z), atol=1e-12, rtol=0)
    else:
        batch = make_batch(seqs, pol_lp, ref_lp, bed.rewards)
        obj.log_z = lambda b, log_q, log_prior, update=False: torch.full_like(log_q, exact.log_z)
    pi = pol_lp.sum(-1).exp()
    assert float(pi.sum()) == pytest.approx(1.0, abs=1e-12)
    signal = obj.sequence_signal(batch).double()
    batch.advantages = signal - (pi * signal).sum()
    policy.zero_grad()
    token_loss, _ = obj.token_loss(policy.token_logprobs(seqs), batch)
    if mode == "uniform_proposal":
        weights = AGGREGATIONS["seq_mean_token_sum"](batch.completion_mask, 0.0).double()
        assert float(weights.sum()) == pytest.approx(3.0)  # 1/27 per row, 3 tokens per row
    else:
        weights = pi[:, None].expand(n, 3)
    (token_loss * weights).sum().backward()
    grad = policy.logits.grad.clone()
    policy.zero_grad()
    expected = exact_divergence_gradient(name, bed, policy, exact.log_p)
    assert float(expected.abs().max()) > 1e-2
    torch.testing.assert_close(grad, expected, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------------------------------------------------
# Convergence and distribution collapse on the exact test bed (V=4, L=8: 65,536 sequences; seeded, deterministic)


@pytest.fixture(scope="module")
def bed48():
    return Bed(4, 8, "count:0", seed=0)


def _run(bed, objective, samples, **kw):
    steps = samples // 128
    return bed.train(objective, samples=samples, samples_per_step=128, measure_every=steps, **kw)


def test_dpg_converges_in_forward_kl(bed48):
    curve = _run(bed48, "dpg", 128 * 400, beta=0.25, lr=3)
    # measured: KL(pi* || pi) 0.2171 -> 0.0293 after 51,200 samples
    assert curve[0]["kl_target_policy"] > 0.2
    assert curve[-1]["samples"] == 51200
    assert curve[-1]["kl_target_policy"] < 0.05


def test_kl_rl_converges_in_reverse_kl_and_keeps_the_posterior_entropy(bed48):
    curve = _run(bed48, "kl_rl", 128 * 800, beta=0.25, lr=30)
    exact = bed48.exact(bed48.target("reward", 0.25))
    h_star = divergences(exact.log_p, exact.log_p)["entropy"]  # 8.3718 nats
    # measured: KL(pi || pi*) 0.2033 -> 0.0338 after 102,400 samples; entropy 8.3793 (pi*: 8.3718)
    assert curve[0]["kl_policy_target"] > 0.2
    assert curve[-1]["samples"] == 102400
    assert curve[-1]["kl_policy_target"] < 0.05
    assert abs(curve[-1]["entropy"] - h_star) < 0.2


def test_grpo_without_kl_collapses(bed48):
    curve = _run(bed48, "grpo", 128 * 400, beta=0.0, target_beta=0.25, lr=30)
    exact = bed48.exact(bed48.target("reward", 0.25))
    p_star = exact.log_p.exp()
    h_star = float(-(p_star * exact.log_p).sum())  # 8.3718 nats
    r_star = float((p_star * bed48.rewards).sum())  # 0.3445
    # measured: entropy 8.6894 -> 0.0082 nats, reward 0.2394 -> 0.7498, KL(pi || pi*) 5.71
    assert h_star == pytest.approx(8.3718, abs=1e-3)
    assert curve[-1]["entropy"] < 1.0
    assert curve[-1]["reward"] > r_star + 0.3
    assert curve[-1]["kl_policy_target"] > 2.0


# ---------------------------------------------------------------------------------------------------------------------
# Section 2.1: distributional constraints (information projection)


@pytest.fixture(scope="module")
def moment_toy():
    bed = Bed(vocab=3, length=3, reward="count:0", seed=1)
    seqs = all_sequences(3, 3)
    assert torch.equal(seqs, bed.seqs)
    return seqs, bed.log_prior


def test_moment_evidence_fit_single_feature(moment_toy):
    """phi = 1[y contains token 0], E_p[phi] = 0.5. Every sequence once with log_proposal = 0 makes fit's softmax
    over rows the exact tilted distribution, so fit solves the exact dual. Closed form for a binary feature:
    lambda* = log(mu (1 - a) / (a (1 - mu))), a = pi0(phi = 1)."""
    seqs, log_prior = moment_toy
    phi = (seqs == 0).any(-1).double()
    prior = log_prior.exp()
    a = float((prior * phi).sum())
    assert 0.6 < a < 0.9  # the constraint really moves the prior
    ev = MomentEvidence([0.5])
    lam = ev.fit(phi[:, None], log_prior, torch.zeros_like(log_prior))
    assert float(lam[0]) == pytest.approx(math.log((1 - a) / a), abs=1e-4)
    # the tilted target, through Target / log_potential
    log_w = Target(ev).log_weights(log_prior, torch.zeros_like(log_prior), phi[:, None])
    log_p = log_w - torch.logsumexp(log_w, 0)
    p = log_p.exp()
    assert float((p * phi).sum()) == pytest.approx(0.5, abs=1e-4)
    # log p/pi0 is linear in phi: lambda phi - log Z
    resid = log_p - log_prior - float(lam[0]) * phi
    assert float(resid.max() - resid.min()) < 1e-12
    # minimum KL(. || pi0) in the constraint set (Pythagoras: KL(q||pi0) = KL(q||p) + KL(p||pi0) for E_q phi = 0.5;
    # the residual is lambda (E_q phi - E_p phi), and fit stops once |E_p phi - 0.5| < 1e-6, hence 1e-5)
    g = torch.Generator().manual_seed(5)
    kl_p = float(kl(p, prior))
    for _ in range(3):
        raw = torch.rand(seqs.shape[0], generator=g, dtype=D) * prior
        q = 0.5 * raw * phi / (raw * phi).sum() + 0.5 * raw * (1 - phi) / (raw * (1 - phi)).sum()
        assert float(kl(q, prior)) == pytest.approx(float(kl(q, p)) + kl_p, abs=1e-5)
        assert float(kl(q, prior)) > kl_p


def test_moment_evidence_fit_two_features(moment_toy):
    seqs, log_prior = moment_toy
    phi = torch.stack([(seqs == 0).any(-1).double(), (seqs[:, 0] == 1).double()], 1)
    mu = t([0.5, 0.4])
    ev = MomentEvidence(mu.tolist())
    lam = ev.fit(phi, log_prior, torch.zeros_like(log_prior))
    log_p = log_prior + phi @ lam
    p = torch.softmax(log_p, 0)
    torch.testing.assert_close(p @ phi, mu, atol=1e-4, rtol=0)
    assert float((torch.softmax(log_prior, 0) @ phi - mu).abs().max()) > 0.05  # the prior did not already satisfy it


def test_moment_evidence_fit_from_prior_samples(moment_toy):
    """SNIS from y ~ pi0 (log_proposal = log pi0) recovers the exact lambda* up to Monte-Carlo error."""
    seqs, log_prior = moment_toy
    prior = log_prior.exp()
    g = torch.Generator().manual_seed(11)
    ys = torch.multinomial(prior, 20000, replacement=True, generator=g)
    phi = (seqs[ys] == 0).any(-1).double()
    a = float((prior * (seqs == 0).any(-1).double()).sum())
    lam = MomentEvidence([0.5]).fit(phi[:, None], log_prior[ys], log_prior[ys])
    # sd of lambda_hat ~ sqrt(a (1-a) / n) / (a (1-a)) ~ 0.015
    assert float(lam[0]) == pytest.approx(math.log((1 - a) / a), abs=0.08)


def test_tv_objective_signal_is_zero_at_the_target():
    # At pi = p, log t is 0 up to rounding (~1e-16); the TV pseudo-reward must be exactly 0, not +-0.5.
    obj = FDivergence(Target(RewardEvidence(1.0)), "tv")
    signal = obj.sequence_signal(three_token_batch(t(P_HAND).log(), [0, 1, 2]))
    assert torch.equal(signal, torch.zeros(3))


def test_running_z_counts_each_batch_once():
    obj = FDivergence(Target(RewardEvidence(1.0)), "fkl", z_estimate="running")
    batch = three_token_batch(t(PI0).log(), [0, 1, 2])
    first = obj.sequence_signal(batch)
    obj.log_t(batch)  # an extra look (logging, checks) must not absorb the samples again
    obj.log_t(batch)
    assert obj._z_n == 3
    assert torch.equal(obj.sequence_signal(batch), first)  # same samples again: the estimate is unchanged
    assert obj._z_n == 6
