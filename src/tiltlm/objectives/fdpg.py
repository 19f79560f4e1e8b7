"""f-DPG: minimise an f-divergence D_f(pi_theta || p) to the target p = P/Z, P = pi0 * exp(log potential).

    grad D_f(pi_theta || p) = E_{y~pi_theta}[ f'(t(y)) grad log pi_theta(y) ],   t = pi_theta(y) / p(y)

so the per-sequence pseudo-reward is -f'(t), baselined by the advantage estimator (default: group mean), and the
loss is REINFORCE on the *sequence* log-prob (token sum): loss = -w * A * sum_t log pi_theta(y_t|s_t), with
w = pi_theta(y)/q(y) (detached) when the samples come from a proposal q != pi_theta.

Go et al. 2023, "Aligning Language Models with Preferences through f-divergence Minimization" (f-DPG; naver/disco
``FDivergenceLoss``). With f = -log t this is DPG (Parshakova et al. 2019; Khalifa et al. 2021, GDC): the
pseudo-reward 1/t = P(y)/(Z q(y)) is the importance weight of forward-KL distribution matching. With f = t log t it
is KL-regularised RL: -f'(t) = r/beta - log(pi_theta/pi0) - log Z - 1 (Korbak et al. 2022).

Deviations from disco: the baseline is the advantage estimator's (group mean by default) instead of a windowed
moving average; Z is estimated per group (a conditional target's Z_c from its own samples, as in CDPG) or as a
running mean of all samples seen ("running", the unconditional case); log t is clamped to [-30, 30] so that a hard
constraint (P = 0 outside the support) gives finite pseudo-rewards under the reverse KL.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from tiltlm.batch import RolloutBatch
from tiltlm.target import Target, kl_from_target

LOG_T_CLAMP = 30.0


def _alpha_f(alpha: float) -> tuple[Callable, Callable]:
    # Amari alpha-divergence generator f(t) = (t^a - 1 - a(t-1)) / (a(a-1)); a -> 0 forward KL, a -> 1 reverse KL.
    def f(log_t):
        return (torch.exp(alpha * log_t) - 1 - alpha * (torch.exp(log_t) - 1)) / (alpha * (alpha - 1))

    def fp(log_t):
        return (torch.exp((alpha - 1) * log_t) - 1) / (alpha - 1)

    return f, fp


# name -> (f(log t), f'(log t)), both as functions of log t = log(pi_theta / p), for D_f(pi_theta || p) = E_p f(t)
F_DIVERGENCES: dict[str, tuple[Callable, Callable]] = {
    "fkl": (lambda lt: -lt, lambda lt: -torch.exp(-lt)),  # KL(p || pi): DPG
    "rkl": (lambda lt: torch.exp(lt) * lt, lambda lt: lt + 1),  # KL(pi || p): KL-regularised RL
    "js": (  # 2 JS(pi, p) = KL(pi || m) + KL(p || m), m = (pi + p) / 2
        lambda lt: torch.exp(lt) * (math.log(2) - F.softplus(-lt)) + math.log(2) - F.softplus(lt),
        lambda lt: math.log(2) - F.softplus(-lt),
    ),
    # sign(0) = 0 at the target; |log t| below 1e-9 is rounding (log p - log pi of equal numbers), not a signal
    "tv": (lambda lt: 0.5 * torch.abs(torch.exp(lt) - 1), lambda lt: 0.5 * torch.sign(torch.where(lt.abs() < 1e-9, 0.0 * lt, lt))),
}


def f_divergence(name: str, alpha: float = 0.5) -> tuple[Callable, Callable]:
    if name == "alpha":
        if alpha in (0.0, 1.0):
            raise ValueError("alpha must not be 0 or 1 (use fkl / rkl)")
        return _alpha_f(alpha)
    return F_DIVERGENCES[name]


@dataclass
class FDivergence:
    """f-DPG objective; ``divergence`` in fkl | rkl | js | tv | alpha; the target is pi0 * evidence."""

    target: Target
    divergence: str = "fkl"
    alpha: float = 0.5
    z_estimate: str = "group"  # group | running
    proposal_every: int = 0  # > 0: sample from a frozen proposal q, replaced by pi_theta when closer (KL-adaptive)
    max_seq_weight: float = 0.0  # > 0: truncate the sequence importance weight pi/q at this value (biased, lower variance)
    needs: set = field(default_factory=lambda: {"ref"})
    default_advantage: str = "group_mean"
    default_aggregation: str = "seq_mean_token_sum"
    _z_sum: float = 0.0  # running estimate: sum of P/q over all samples seen, and their count
    _z_n: int = 0

    def __post_init__(self) -> None:
        self._f, self._fprime = f_divergence(self.divergence, self.alpha)
        if self.proposal_every > 0:
            # off-policy: an unweighted group mean of pseudo-rewards is dominated by samples the policy has left
            # (p/pi explodes where pi << q) -- baseline with the importance-weighted mean instead
            self.default_advantage = "weighted_group_mean"

    def log_t(self, batch: RolloutBatch, update_z: bool = False) -> torch.Tensor:
        """log pi_theta(y)/p(y) per sequence. On-policy the sampling log-probs are pi_theta's; a batch drawn from a
        separate proposal carries the policy's own log-probs in ``policy_logprobs``."""
        mask = batch.completion_mask
        log_q = (batch.sample_logprobs * mask).sum(-1).double()
        policy = batch.policy_logprobs if batch.policy_logprobs is not None else batch.sample_logprobs
        log_pi = (policy * mask).sum(-1).double()
        log_prior = (batch.ref_logprobs * mask).sum(-1).double()
        log_p = self.target.log_weights(log_prior, batch.rewards) - self.log_z(batch, log_q, log_prior, update_z)
        return (log_pi - log_p).clamp(-LOG_T_CLAMP, LOG_T_CLAMP)

    def log_z(self, batch: RolloutBatch, log_q: torch.Tensor, log_prior: torch.Tensor, update: bool = False) -> torch.Tensor:
        """log Z_hat for each row: self-normalised importance sampling of P/q, per group or running. The running
        estimate absorbs a batch only when ``update`` (once per batch, from ``sequence_signal``), so extra calls
        for logging or checks never count samples twice."""
        log_iw = Target.log_importance_weights(self.target.log_weights(log_prior, batch.rewards), log_q)
        if self.z_estimate == "running":
            if update:
                self._z_sum += float(torch.exp(log_iw).sum())
                self._z_n += log_iw.numel()
            return torch.full_like(log_iw, math.log(self._z_sum / self._z_n) if self._z_sum > 0 else -math.inf)
        _, inv, counts = torch.unique(batch.group_ids, return_inverse=True, return_counts=True)
        m = torch.full((len(counts),), -math.inf, dtype=log_iw.dtype).scatter_reduce(0, inv, log_iw, "amax")
        m_safe = torch.where(torch.isinf(m), torch.zeros_like(m), m)
        sums = torch.zeros(len(counts), dtype=log_iw.dtype).index_add_(0, inv, torch.exp(log_iw - m_safe[inv]))
        return (torch.log(sums) + m_safe - torch.log(counts.double()))[inv]

    def policy_is_closer(self, batch: RolloutBatch) -> bool:
        """KL-adaptive DPG (Khalifa et al. 2021): is KL(p || pi_theta) < KL(p || q)? Both are importance-sampling
        estimates from the proposal's own batch (``target.kl_from_target``)."""
        mask = batch.completion_mask
        log_w = self.target.log_weights((batch.ref_logprobs * mask).sum(-1), batch.rewards)
        log_q = (batch.sample_logprobs * mask).sum(-1)
        log_pi = (batch.policy_logprobs * mask).sum(-1)
        return kl_from_target(log_w, log_q, log_pi) < kl_from_target(log_w, log_q, log_q)

    def sequence_signal(self, batch: RolloutBatch) -> torch.Tensor:
        """Pseudo-reward -f'(t): the per-sequence signal the advantage estimator baselines."""
        signal = -self._fprime(self.log_t(batch, update_z=True))
        return torch.nan_to_num(signal, nan=0.0).to(torch.float32)

    def rows_with_gradient(self, batch: RolloutBatch) -> torch.Tensor:
        return batch.advantages != 0

    def token_loss(self, logp: torch.Tensor, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        # Importance weight of the whole sequence w = pi_theta(y)/q(y), detached (1 on-policy at the first update).
        seq_ratio = torch.exp(((logp.detach() - batch.sample_logprobs) * batch.completion_mask).sum(-1, keepdim=True))
        if self.max_seq_weight > 0:
            seq_ratio = seq_ratio.clamp(max=self.max_seq_weight)
        loss = -(seq_ratio * batch.advantages.unsqueeze(-1)).to(logp.dtype) * logp
        return loss, {"loss/seq_ratio": seq_ratio.expand_as(logp)}
