"""Targets: a prior tilted by evidence, P(y|x) = pi0(y|x) * exp(log_potential(x, y)), p = P / Z.

Korbak, Perez and Buckley (2022), "RL with KL penalties is better viewed as Bayesian inference": the KL-regularised
RL optimum is the posterior pi*(y|x) ∝ pi0(y|x) exp(r(x,y)/beta); a 0/1 constraint phi gives pi0 * phi (Khalifa et
al. 2021, GDC). Evidence objects only turn scores into log potentials; the prior's log-probs come from wherever the
prior lives (the frozen reference model in training, exact tables on the test bed), so one Target serves both.

Every quantity here is per *sequence* and in log space: log P = log pi0(y) + log potential(y).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import torch


class Evidence(Protocol):
    def log_potential(self, rewards: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """log of the tilt applied to each sequence ([B]); -inf excludes a sequence from the target."""
        ...


@dataclass
class RewardEvidence:
    """exp(r / beta): the KL-regularised RL posterior. beta -> 0 concentrates on argmax r (distribution collapse)."""

    beta: float = 1.0

    def log_potential(self, rewards: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        return rewards.double() / self.beta


@dataclass
class ConstraintEvidence:
    """phi(y) = 1[r(y) >= threshold]: the hard-constraint target pi0 * phi (the beta -> 0 limit of a 0/1 reward)."""

    threshold: float = 1.0

    def log_potential(self, rewards: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        zero = torch.zeros_like(rewards, dtype=torch.float64)
        return torch.where(rewards >= self.threshold, zero, torch.full_like(zero, -math.inf))


@dataclass
class ProductEvidence:
    """Several pieces of evidence at once: potentials multiply, log potentials add."""

    parts: list

    def log_potential(self, rewards: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        return sum(p.log_potential(rewards, features) for p in self.parts)


@dataclass
class MomentEvidence:
    """Distributional constraints E_p[phi_i(y)] = mu_i (GDC, Khalifa et al. 2021): P = pi0 * exp(lambda . phi).

    ``lambdas`` are fitted by ``fit`` (the maximum-entropy / information-projection step) from importance-weighted
    samples of a proposal q: the moment-matching gradient of the dual is mu - E_p[phi], with E_p estimated by
    self-normalised importance sampling. ``features`` passed to ``log_potential`` are [B, K]; without them the
    reward is the single feature, so "E_p[correct] = 0.5" is ``MomentEvidence([0.5])`` on a 0/1 task reward.
    """

    targets: list[float]
    lambdas: torch.Tensor = field(default=None)  # [K]

    def __post_init__(self) -> None:
        if self.lambdas is None:
            self.lambdas = torch.zeros(len(self.targets), dtype=torch.float64)

    def log_potential(self, rewards: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        if features is None:
            if len(self.targets) != 1:
                raise ValueError("MomentEvidence with several moments needs per-sequence features [B, K]")
            features = rewards.unsqueeze(-1)
        return features.double() @ self.lambdas

    def fit(
        self, features: torch.Tensor, log_prior: torch.Tensor, log_proposal: torch.Tensor,
        steps: int = 2000, lr: float = 0.5, tol: float = 1e-6,
    ) -> torch.Tensor:
        """Solve E_p[phi] = mu for lambda by gradient ascent on the dual, with SNIS moments under q."""
        phi = features.double()
        mu = torch.tensor(self.targets, dtype=torch.float64)
        lam = self.lambdas.clone()
        base = log_prior.double() - log_proposal.double()
        for _ in range(steps):
            w = torch.softmax(base + phi @ lam, dim=0)
            moments = w @ phi
            gap = mu - moments
            if gap.abs().max() < tol:
                break
            lam = lam + lr * gap
        self.lambdas = lam
        return lam


@dataclass
class Target:
    """pi0 tilted by ``evidence``: log weights of sequences, importance weights against a proposal, log Z and ESS."""

    evidence: Evidence

    def log_weights(
        self, prior_logprob: torch.Tensor, rewards: torch.Tensor, features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """log P(y) = log pi0(y) + log potential(y) for each sequence ([B], float64)."""
        return prior_logprob.double() + self.evidence.log_potential(rewards, features)

    @staticmethod
    def log_importance_weights(log_weights: torch.Tensor, proposal_logprob: torch.Tensor) -> torch.Tensor:
        """log P(y)/q(y) for y ~ q."""
        return log_weights - proposal_logprob.double()

    @staticmethod
    def log_Z(log_iw: torch.Tensor) -> tuple[float, float]:
        """(log Z_hat, ESS): Z_hat = mean P/q is unbiased for Z; ESS = (sum w)^2 / sum w^2 in [1, n], 0 if all w = 0."""
        n = log_iw.numel()
        if torch.isinf(log_iw).all() and (log_iw < 0).all():
            return -math.inf, 0.0
        log_z = float(torch.logsumexp(log_iw, 0) - math.log(n))
        ess = float(torch.exp(2 * torch.logsumexp(log_iw, 0) - torch.logsumexp(2 * log_iw, 0)))
        return log_z, ess


def kl_from_target(log_weights: torch.Tensor, proposal_logprob: torch.Tensor, model_logprob: torch.Tensor) -> float:
    """Importance-sampling estimate of KL(p || m) from samples of a proposal q (naver/disco ``metrics/kl.py``):

        KL(p || m) = -log Z + (1/Z) mean_{y~q}[ (P(y)/q(y)) (log P(y) - log m(y)) ],   Z = mean P/q.

    Used by KL-adaptive DPG to decide whether the policy has become a better proposal than the current one.
    """
    log_iw = log_weights.double() - proposal_logprob.double()
    log_z, _ = Target.log_Z(log_iw)
    if not math.isfinite(log_z):
        return math.inf
    keep = torch.isfinite(log_iw)
    w = torch.exp(log_iw[keep] - log_z)
    n = log_iw.numel()
    return float(-log_z + (w * (log_weights.double()[keep] - model_logprob.double()[keep])).sum() / n)
