"""ROVER: Random Policy Valuation for LLM reasoning (He et al. 2025, arXiv 2509.24981; yuxiaooye/ROVER).

The policy's own log-ratio parametrises Q of the taken token, and the next state's value is that of the *uniform*
random policy -- the mean of Q over the whole vocabulary:

    Q_{i,t}    = rho (log pi_theta(y_t|s_t) - log pi_old(y_t|s_t))
    Vbar(s)    = rho (mean_a log pi_theta(a|s) - mean_a log pi_old(a|s))
    y_{i,t}    = A_i + Vbar(s_{i,t+1})   (A_i at the last valid token: no successor), detached
    loss       = (Q_{i,t} - y_{i,t})^2,  token mean

As in the authors' Math script: A_i is the group-normalised (GRPO) advantage, rho = 1, no clip of log Q, no
reference model. pi_old's mean log-softmax is recorded by the sampler, pi_theta's comes from the training forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tiltlm.batch import RolloutBatch


@dataclass
class Rover:
    rho: float = 1.0
    next_value_scale: float = 1.0
    needs: set = field(default_factory=set)
    token_stats: set = field(default_factory=lambda: {"mean_logsoftmax"})
    default_advantage: str = "group_zscore"
    default_aggregation: str = "token_mean"

    def sequence_signal(self, batch: RolloutBatch) -> torch.Tensor:
        return batch.rewards

    def rows_with_gradient(self, batch: RolloutBatch) -> torch.Tensor:
        return torch.ones(batch.size, dtype=torch.bool)  # Q is pulled toward its target even where A = 0

    def token_loss(self, logp: torch.Tensor, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        mask = batch.completion_mask.to(logp.dtype)
        q = self.rho * (logp - batch.sample_logprobs)
        v = self.rho * (batch.token_stats["mean_logsoftmax"] - batch.sample_mean_logsoftmax).detach()
        # value of the successor state s_{t+1} (the distribution position t+1 was drawn from), 0 past the end
        next_v = torch.nn.functional.pad(v[:, 1:] * mask[:, 1:], (0, 1))
        target = (batch.advantages.unsqueeze(-1).to(logp.dtype) + self.next_value_scale * next_v).detach()
        return (q - target) ** 2, {"loss/rover_q": q.detach(), "loss/rover_next_v": next_v}
