"""DPH-RL: RLVR plus a mass-covering f-divergence to the *initial* policy, on stored samples of that policy.

Li et al. 2025, "The Choice of Divergence: A Neglected Key to Mitigating Diversity Collapse in RLVR"
(arXiv 2509.07430; seamoke/DPH-RL). On a rehearsal row (a response pre-sampled from pi0, with its per-token
log pi0 stored), with u_t = pi_theta(y_t|s_t) / pi0(y_t|s_t), the per-token loss is a generator:

    forward KL   f(u) = u - 1 - log u                     E_{pi0}[.] = KL(pi0 || pi_theta) per token
    JS           f(u) = u log u - (u + 1) log((u + 1)/2)   E_{pi0}[.] = 2 JS(pi_theta, pi0)

so no reference model is run during training. RL rows get the usual clipped policy-gradient loss.

Deviation from the paper: with a procedural task there is no fixed prompt list to split into D_pef / D_exp, so RL
samples every prompt; the rehearsal pool is pi0's correct responses on pre-sampled prompts that pi0 solved k/k
times (the paper's D_pef), drawn ``rehearsal_rows`` at a time and weighted by a token mean times ``coef``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tiltlm.batch import RolloutBatch
from tiltlm.objectives.pg import ClippedPolicyGradient


def forward_generator(log_u: torch.Tensor) -> torch.Tensor:
    return torch.exp(log_u) - 1.0 - log_u


def js_generator(log_u: torch.Tensor) -> torch.Tensor:
    u = torch.exp(log_u)
    return u * log_u - (u + 1.0) * (torch.log1p(u) - math.log(2.0))


GENERATORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"fkl": forward_generator, "js": js_generator}


@dataclass
class DivergencePreservingHybrid(ClippedPolicyGradient):
    coef: float = 0.01
    divergence: str = "fkl"
    rehearsal_rows: int = 64
    needs_rehearsal: bool = True

    def rehearsal_weights(self, mask: torch.Tensor) -> torch.Tensor:
        """coef x token mean over the rehearsal rows (the paper's sft_loss_coeff on a token-aggregated loss)."""
        mask = mask.float()
        return self.coef * mask / mask.sum().clamp(min=1)

    def rows_with_gradient(self, batch: RolloutBatch) -> torch.Tensor:
        rows = super().rows_with_gradient(batch)
        return rows | batch.rehearsal if batch.rehearsal is not None else rows

    def token_loss(self, logp: torch.Tensor, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, stats = super().token_loss(logp, batch)
        if batch.rehearsal is None or not batch.rehearsal.any():
            return loss, stats
        # on rehearsal rows the stored sampling log-probs *are* log pi0 (they were drawn from pi0 at T = 1)
        div = GENERATORS[self.divergence](logp - batch.sample_logprobs)
        rehearsal = batch.rehearsal.unsqueeze(-1)
        stats["kl/rehearsal"] = torch.where(rehearsal, div.detach(), torch.zeros_like(div))
        return torch.where(rehearsal, div, loss), stats
