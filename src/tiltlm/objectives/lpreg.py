"""Lp-Reg: protect low-probability "reasoning sparks" on negative samples (Huang et al. 2025, arXiv 2510.03222;
CarlanLark/Lp-Reg-dev).

Proxy distribution: pi_proxy(v) ∝ pi(v) 1[pi(v) >= kappa max_v pi(v)] (min-p filter, renormalised), built from the
*current* policy's distribution at each position (detached; the authors' default builds it from the old policy's
logits at rollout time -- the same at the first update). On selected tokens the PPO term is replaced by
-A rho + coef * k3(pi_theta || pi_proxy), k3 = r - log r - 1 with r = pi_proxy / pi_theta, clamped to [-10, 10].
Selection, per micro-batch as in the authors' code: negative-advantage tokens, the k = max(1, floor(1%)) with the
lowest log-prob (nothing when k = 1: their ``if k > 1`` guard), and only where log pi_theta < log pi_proxy (the
token survived the filter). Tokens below the threshold are never protected.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tiltlm.batch import RolloutBatch
from tiltlm.objectives.pg import ClippedPolicyGradient


def minp_stats(lsm: torch.Tensor, kappa: float) -> torch.Tensor:
    """Per position: [log threshold = log(kappa max pi), log of the kept mass] stacked on the last dim."""
    log_thr = lsm.max(-1).values + math.log(kappa)
    kept = torch.where(lsm >= log_thr.unsqueeze(-1), lsm, torch.full_like(lsm, -math.inf))
    return torch.stack([log_thr, torch.logsumexp(kept, -1)], -1)


@dataclass
class LpReg(ClippedPolicyGradient):
    kappa: float = 0.02
    coef: float = 1.0
    fraction: float = 0.01

    @property
    def token_stats(self) -> set[str]:
        return {f"minp:{self.kappa}"}

    def proxy_logprobs(self, logp: torch.Tensor, batch: RolloutBatch) -> torch.Tensor:
        """log pi_proxy of the sampled token; -inf where the min-p filter dropped it."""
        minp = batch.token_stats[f"minp:{self.kappa}"]
        log_thr, log_mass = minp[..., 0], minp[..., 1]
        lp = logp.detach()
        return torch.where(lp >= log_thr, lp - log_mass, torch.full_like(lp, -math.inf))

    def selected(self, logp: torch.Tensor, proxy: torch.Tensor, batch: RolloutBatch) -> torch.Tensor:
        neg = (batch.advantages.unsqueeze(-1) < 0) & batch.completion_mask.bool()
        k = max(1, math.floor(self.fraction * int(neg.sum())))
        chosen = torch.zeros_like(neg)
        if k > 1:  # the authors' guard: a single token is never regularised
            scores = torch.where(neg, logp.detach(), torch.full_like(logp, math.inf)).flatten()
            chosen.view(-1)[scores.topk(k, largest=False).indices] = True
        return chosen & neg & (logp.detach() < proxy)

    def token_loss(self, logp: torch.Tensor, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, stats = super().token_loss(logp, batch)
        proxy = self.proxy_logprobs(logp, batch)
        chosen = self.selected(logp, proxy, batch)
        log_r = torch.where(chosen, proxy - logp, torch.zeros_like(logp))
        k3 = (torch.exp(log_r) - log_r - 1).clamp(-10, 10)
        adv = batch.advantages.unsqueeze(-1).to(logp.dtype)
        unclipped = -adv * torch.exp(logp - batch.sample_logprobs)
        stats["loss/lpreg_frac"] = chosen.float()
        return torch.where(chosen, unclipped + self.coef * k3, loss), stats
