"""Clipped policy gradient with an optional KL-to-reference term: GRPO's objective, and KL-regularised RL.

    loss_t = max(-A * rho_t, -A * clip(rho_t, 1 - eps_low, 1 + eps_high)) [+ beta * KL_t  if kl_placement = loss]
    rho_t  = pi_theta(y_t | s_t) / pi_old(y_t | s_t)
    signal = r(x, y)                                    [- beta * sum_t KL_t  if kl_placement = reward]

Shao et al. 2024, "DeepSeekMath" (GRPO: KL in the loss, k3); Schulman et al. 2017 (PPO clip); Yu et al. 2025 (DAPO
clip-higher: eps_high > eps_low); Ouyang et al. 2022 / Korbak et al. 2022 (KL as a reward penalty: with k1 in the
reward, the expected gradient is exactly that of E[r] - beta KL(pi || pi0) = beta log Z - beta KL(pi || pi*), i.e.
reverse-KL inference toward pi* ∝ pi0 exp(r / beta)).

What each KL choice actually regularises (spec objectives.md section 3, tested in tests/test_kl_gradients.py):
  reward + k1           reverse KL(pi || pi_ref)  (unbiased)
  loss + k1             nothing in expectation (E[grad log pi] = 0): noise only
  loss + k2             reverse KL(pi || pi_ref)  (on-policy)
  loss + k3             FORWARD KL(pi_ref || pi)  in expectation -- GRPO's default
  loss + k3, corrected  reverse KL: k3 times the differentiable ratio pi_theta / pi_old (DeepSeek-V3.2)
pi_old is the sampling policy: its log-probs were recorded at generation time, so no extra forward is needed.
With beta = 0 no reference model exists at all.

``forward_kl`` (RAPO-style, Deng et al. 2025, arXiv 2510.03865 -- a *reconstruction*: the paper's exact form was
not available, spec objectives.md section 5): add a forward-KL penalty lambda * KL(pi~ || pi_theta) toward the
reward-tilted reference pi~ ∝ pi_ref exp(r / alpha). Its gradient is -lambda E_pi[w~ grad log pi] with
w~ = pi~/pi_theta (self-normalised per group), so it enters as lambda * w~ added to the sequence signal. Unlike a
reverse-KL or k3 penalty it never pushes down tokens outside pi_ref's support.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tiltlm.batch import RolloutBatch
from tiltlm.objectives.fdpg import FDivergence
from tiltlm.objectives.kl import KL_ESTIMATORS
from tiltlm.objectives.surrogates import SURROGATES


@dataclass
class ClippedPolicyGradient:
    clip_low: float = 0.2
    clip_high: float = 0.2
    beta: float = 0.0
    kl_estimator: str = "k3"
    kl_placement: str = "loss"  # loss | reward
    kl_correction: bool = False  # loss placement: multiply the KL term by the differentiable ratio pi/pi_old
    default_advantage: str = "group_zscore"
    default_aggregation: str = "seq_mean_token_mean"
    forward_kl: FDivergence | None = None  # RAPO-style forward-KL penalty toward pi_ref exp(r / alpha)
    forward_kl_coef: float = 0.0
    surrogate: str = "ppo"  # how the ratio enters the loss: ppo | dual_clip | gspo | cispo (surrogates.py)
    entropy_coef: float = 0.0  # entropy bonus: loss -= coef * H_t (Williams & Peng 1991; Mnih et al. 2016)
    dual_clip_c: float = 3.0

    @property
    def needs(self) -> set[str]:
        return {"ref"} if self.beta > 0 or self.forward_kl is not None else set()

    def sequence_signal(self, batch: RolloutBatch) -> torch.Tensor:
        signal = batch.rewards
        if self.beta > 0 and self.kl_placement == "reward":
            kl = KL_ESTIMATORS[self.kl_estimator](batch.sample_logprobs, batch.ref_logprobs)
            signal = signal - self.beta * (kl * batch.completion_mask).sum(-1)
        if self.forward_kl is not None:
            signal = signal + self.forward_kl_coef * self.forward_kl.sequence_signal(batch)  # + lambda * w~
        return signal

    @property
    def token_stats(self) -> set[str]:
        return {"entropy"} if self.entropy_coef > 0 else set()

    def rows_with_gradient(self, batch: RolloutBatch) -> torch.Tensor:
        """A row with zero advantage and no KL / entropy term contributes exactly zero gradient."""
        if (self.beta > 0 and self.kl_placement == "loss") or self.entropy_coef > 0:
            return torch.ones(batch.size, dtype=torch.bool)  # the KL term has a gradient on every row
        return batch.advantages != 0

    def token_loss(self, logp: torch.Tensor, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        adv = batch.advantages.unsqueeze(-1).to(logp.dtype).expand_as(logp)
        ratio = torch.exp(logp - batch.sample_logprobs)
        loss, was_clipped = SURROGATES[self.surrogate](
            logp, batch.sample_logprobs, adv, batch.completion_mask, self.clip_low, self.clip_high, self.dual_clip_c
        )
        stats = {"loss/clip_frac": was_clipped.float(), "loss/ratio": ratio.detach()}
        if self.beta > 0:
            kl = KL_ESTIMATORS[self.kl_estimator](logp, batch.ref_logprobs)
            stats[f"kl/ref_{self.kl_estimator}"] = kl.detach()
            if self.kl_placement == "loss":
                loss = loss + self.beta * (kl * ratio if self.kl_correction else kl)
        if self.entropy_coef > 0:
            entropy = batch.token_stats["entropy"]
            loss = loss - self.entropy_coef * entropy
            stats["loss/entropy"] = entropy.detach()
        return loss, stats
