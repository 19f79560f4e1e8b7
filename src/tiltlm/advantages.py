"""Advantage estimators: per-sequence signals -> per-sequence advantages, broadcast over tokens by the loss.

Every estimator is ``fn(x: AdvantageInputs, c: AdvantageConfig) -> advantages [B]``; a *class* in the registry is
a stateful estimator, instantiated once per run (``make_advantage``). Rows of one group share a
group id. Std is the unbiased (N-1) one, as in verl / TRL / oat (spec rlvr.md section 0). ``ADVANTAGE_NEEDS``
names estimators that need extra log-probs (ACE needs the reference), so the trainer computes them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tiltlm.config import AdvantageConfig


@dataclass
class AdvantageInputs:
    rewards: torch.Tensor  # [B] the objective's sequence signal (the task reward for policy-gradient objectives)
    group_ids: torch.Tensor  # [B]
    lengths: torch.Tensor | None = None  # [B] valid completion tokens per row (token-weighted statistics)
    correct: torch.Tensor | None = None  # [B] bool; defaults to rewards > 0
    confidence: torch.Tensor | None = None  # [B] log pi_old(y) - log pi_ref(y) (ACE)
    prompt_keys: torch.Tensor | None = None  # [B] int64 identity of each row's prompt (stateful estimators)
    weights: torch.Tensor | None = None  # [B] importance weights pi_theta(y)/q(y) when samples came from a proposal q

    @property
    def is_correct(self) -> torch.Tensor:
        return self.correct.bool() if self.correct is not None else self.rewards > 0


def _group_stats(rewards: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row group mean, unbiased group std and group size."""
    _, inv, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    r = rewards.double()
    sums = torch.zeros(len(counts), dtype=r.dtype).index_add_(0, inv, r)
    mean = sums / counts
    sq = torch.zeros(len(counts), dtype=r.dtype).index_add_(0, inv, (r - mean[inv]) ** 2)
    std = torch.sqrt(sq / (counts - 1).clamp(min=1))
    return mean[inv], std[inv], counts[inv].to(r.dtype)


def _token_whiten(values: torch.Tensor, lengths: torch.Tensor, eps: float) -> torch.Tensor:
    """Whiten over all valid tokens of the batch: each row counts once per token (verl ``masked_whiten``)."""
    w = lengths.double()
    mean = (w * values).sum() / w.sum()
    var = (w * (values - mean) ** 2).sum() / (w.sum() - 1).clamp(min=1)
    return (values - mean) / (var.sqrt() + eps)


def group_zscore(x: AdvantageInputs, c: AdvantageConfig) -> torch.Tensor:
    """GRPO (Shao et al. 2024, DeepSeekMath): A_i = (r_i - mean_g) / (std_g + eps)."""
    mean, std, _ = _group_stats(x.rewards, x.group_ids)
    return (x.rewards.double() - mean) / (std + c.eps)


def group_mean(x: AdvantageInputs, c: AdvantageConfig) -> torch.Tensor:
    """Dr.GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): A_i = r_i - mean_g (no std division)."""
    mean, _, _ = _group_stats(x.rewards, x.group_ids)
    return x.rewards.double() - mean


def weighted_group_mean(x: AdvantageInputs, c: AdvantageConfig) -> torch.Tensor:
    """Off-policy baseline: A_i = r_i - sum_g w r / sum_g w, the self-normalised estimate of E_pi[r] from a proposal's
    samples (w = pi_theta/q); the loss then weights A by w. Without weights it is the group mean."""
    if x.weights is None:
        return group_mean(x, c)
    _, inv, counts = torch.unique(x.group_ids, return_inverse=True, return_counts=True)
    w, r = x.weights.double(), x.rewards.double()
    num = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, inv, w * r)
    den = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, inv, w)
    return r - (num / den.clamp(min=1e-300))[inv]


def rloo(x: AdvantageInputs, c: AdvantageConfig) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024; Kool et al. 2019): A_i = r_i - mean of the other G-1 = G/(G-1) (r_i - mean_g)."""
    mean, _, n = _group_stats(x.rewards, x.group_ids)
    return (x.rewards.double() - mean) * n / (n - 1).clamp(min=1)


def batch_whiten(x: AdvantageInputs, c: AdvantageConfig) -> torch.Tensor:
    """REINFORCE++ (Hu 2025): no group baseline; the outcome return whitened over all valid tokens of the batch."""
    return _token_whiten(x.rewards.double(), x.lengths, c.eps)


def group_mean_batch_whiten(x: AdvantageInputs, c: AdvantageConfig) -> torch.Tensor:
    """REINFORCE++-baseline (Hu 2025): subtract the group mean, then whiten over all valid tokens of the batch."""
    mean, _, _ = _group_stats(x.rewards, x.group_ids)
    return _token_whiten(x.rewards.double() - mean, x.lengths, c.eps)


def group_mean_batch_std(x: AdvantageInputs, c: AdvantageConfig) -> torch.Tensor:
    """Lite PPO (Liu et al. 2025, "Part I: Tricks or Traps?"): (r_i - mean_g) / (std over all responses + eps)."""
    mean, _, _ = _group_stats(x.rewards, x.group_ids)
    return (x.rewards.double() - mean) / (x.rewards.double().std() + c.eps)


def weighted_pn(x: AdvantageInputs, c: AdvantageConfig) -> torch.Tensor:
    """W-REINFORCE (Zhu et al. 2025, negative reinforcement): A = +lambda if correct, -1 if wrong, no baseline.

    lambda = advantage.positive_weight (paper: 0.1)."""
    right = x.is_correct
    return torch.where(right, torch.full_like(x.rewards, c.positive_weight), -torch.ones_like(x.rewards)).double()


def psr(x: AdvantageInputs, c: AdvantageConfig) -> torch.Tensor:
    """Positive-sample reinforcement (Zhu et al. 2025): A = +1 on correct responses, wrong ones left out (A = 0).
    The paper trains on the correct subset only: use ``train.normalise_over=kept_rows`` for its normaliser."""
    return x.is_correct.double()


def nsr(x: AdvantageInputs, c: AdvantageConfig) -> torch.Tensor:
    """Negative-sample reinforcement (Zhu et al. 2025): A = -1 on wrong responses, correct ones left out (A = 0).
    The paper trains on the wrong subset only: use ``train.normalise_over=kept_rows`` for its normaliser."""
    return -(~x.is_correct).double()


def ace(x: AdvantageInputs, c: AdvantageConfig) -> torch.Tensor:
    """ACE (Xu et al. 2026, arXiv 2602.21420): GRPO, wrong answers scaled by 1 + alpha softplus(log pi_old/pi_ref).

    Confident errors (the policy likes them more than the reference did) are pushed down harder. Reconstruction:
    the paper's exact form was not readable (spec rlvr.md section 3); alpha = advantage.ace_alpha."""
    base = group_zscore(x, c)
    if x.confidence is None:
        raise ValueError("ace needs reference log-probs (confidence = log pi_old(y) - log pi_ref(y))")
    scale = 1.0 + c.ace_alpha * F.softplus(x.confidence.double())
    return torch.where(~x.is_correct & (base < 0), base * scale, base)


class ShrinkageBaseline:
    """Prior-fused baseline with a consistency test, V_0.5-style (Zhang et al. 2026, arXiv 2603.10848).

    RECONSTRUCTION (spec rlvr.md section 4; no official code): each prompt keeps a Beta(a, b) posterior of its past
    success (forgetting factor gamma). For a group of n rewards with mean rbar: prior mean b0 = a/(a+b), prior
    variance tau^2 = ab / ((a+b)^2 (a+b+1)), sampling variance v = b0 (1 - b0) / n; if |rbar - b0| / sqrt(v) >
    z_crit the prior is rejected and the baseline is rbar, otherwise b = w b0 + (1 - w) rbar with the MSE-optimal
    w = v / (v + tau^2). A = r - b. The paper then spends *more rollouts* on rejected prompts; here a rejection only
    falls back to the group mean (counted in ``rejections``). Stateful: one instance per run, saved with it.
    """

    def __init__(self) -> None:
        self.alpha: dict[int, float] = {}
        self.beta: dict[int, float] = {}
        self.rejections = 0

    def baseline(self, key: int, rewards: torch.Tensor, c: AdvantageConfig) -> float:
        a, b = self.alpha.get(key, c.prior_a), self.beta.get(key, c.prior_b)
        n, rbar = rewards.numel(), float(rewards.double().mean())
        b0 = a / (a + b)
        tau2 = a * b / ((a + b) ** 2 * (a + b + 1))
        v = b0 * (1 - b0) / n
        if v <= 0 or abs(rbar - b0) / v**0.5 > c.z_crit:
            self.rejections += 1
            base = rbar
        else:
            w = v / (v + tau2)
            base = w * b0 + (1 - w) * rbar
        successes = float(rewards.double().sum())
        self.alpha[key] = c.forget * a + successes
        self.beta[key] = c.forget * b + (n - successes)
        return base

    def __call__(self, x: AdvantageInputs, c: AdvantageConfig) -> torch.Tensor:
        keys = x.prompt_keys if x.prompt_keys is not None else x.group_ids
        out = torch.zeros_like(x.rewards, dtype=torch.float64)
        for g in torch.unique(x.group_ids):
            rows = x.group_ids == g
            out[rows] = x.rewards[rows].double() - self.baseline(int(keys[rows][0]), x.rewards[rows], c)
        return out


ADVANTAGES: dict[str, Callable[[AdvantageInputs, AdvantageConfig], torch.Tensor]] = {
    "group_zscore": group_zscore,
    "group_mean": group_mean,
    "rloo": rloo,
    "weighted_group_mean": weighted_group_mean,
    "batch_whiten": batch_whiten,
    "group_mean_batch_whiten": group_mean_batch_whiten,
    "group_mean_batch_std": group_mean_batch_std,
    "weighted_pn": weighted_pn,
    "psr": psr,
    "nsr": nsr,
    "ace": ace,
    "shrinkage": ShrinkageBaseline,  # a class: stateful, instantiated once per run
}

ADVANTAGE_NEEDS: dict[str, set[str]] = {"ace": {"ref"}}


def advantages_for(fn: Callable, batch, signal: torch.Tensor, c: AdvantageConfig) -> torch.Tensor:
    """Run estimator ``fn`` on a RolloutBatch whose per-sequence signal is ``signal``; float32 [B]."""
    mask = batch.completion_mask
    confidence = None
    if batch.ref_logprobs is not None:
        confidence = ((batch.sample_logprobs - batch.ref_logprobs) * mask).sum(-1)
    weights = None
    if batch.policy_logprobs is not None:  # samples from a proposal q: w = pi_theta(y) / q(y)
        weights = torch.exp(((batch.policy_logprobs - batch.sample_logprobs) * mask).sum(-1))
    x = AdvantageInputs(signal, batch.group_ids, mask.sum(-1), batch.correct, confidence, batch.prompt_keys, weights)
    return fn(x, c).to(torch.float32)


def make_advantage(entry) -> Callable[[AdvantageInputs, AdvantageConfig], torch.Tensor]:
    """A registry entry as a callable: classes (stateful estimators) get a fresh instance per run."""
    return entry() if isinstance(entry, type) else entry
