"""Clipped policy gradient with an optional KL-to-reference loss term: GRPO's objective.

    loss_t = max(-A * rho_t, -A * clip(rho_t, 1 - eps_low, 1 + eps_high)) + beta * KL_t,
    rho_t  = pi_theta(y_t | s_t) / pi_old(y_t | s_t)

Shao et al. 2024, "DeepSeekMath" (GRPO); Schulman et al. 2017 (PPO clip); Yu et al. 2025 (DAPO clip-higher:
eps_high > eps_low). pi_old is the sampling policy: its log-probs were recorded at generation time, so no extra
forward pass is needed for them. With beta > 0 the objective asks for reference log-probs (``needs = {"ref"}``);
with beta = 0 no reference model exists at all.

Deviation from the paper: the KL estimator is a choice (k1/k2/k3, default k3 as in the paper); note that k3 in the
loss regularises toward the *forward* KL in expectation (see objectives/kl.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tiltlm.batch import RolloutBatch
from tiltlm.objectives.kl import KL_ESTIMATORS


@dataclass
class ClippedPolicyGradient:
    clip_low: float = 0.2
    clip_high: float = 0.2
    beta: float = 0.0
    kl_estimator: str = "k3"

    @property
    def needs(self) -> set[str]:
        return {"ref"} if self.beta > 0 else set()

    def rows_with_gradient(self, batch: RolloutBatch) -> torch.Tensor:
        """A row with zero advantage and no KL term contributes exactly zero gradient."""
        if self.beta > 0:
            return torch.ones(batch.size, dtype=torch.bool)
        return batch.advantages != 0

    def token_loss(self, logp: torch.Tensor, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        adv = batch.advantages.unsqueeze(-1).to(logp.dtype)
        ratio = torch.exp(logp - batch.sample_logprobs)
        unclipped = -adv * ratio
        clipped = -adv * ratio.clamp(1.0 - self.clip_low, 1.0 + self.clip_high)
        loss = torch.maximum(unclipped, clipped)
        stats = {"loss/clip_frac": (clipped > unclipped).float(), "loss/ratio": ratio.detach()}
        if self.beta > 0:
            kl = KL_ESTIMATORS[self.kl_estimator](logp, batch.ref_logprobs)
            loss = loss + self.beta * kl
            stats[f"kl/ref_{self.kl_estimator}"] = kl.detach()
        return loss, stats
