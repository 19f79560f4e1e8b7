"""On-policy distillation as dense-reward RL: OPD and generalised OPD (G-OPD / ExOPD).

    r_t = lambda * (log pi_T(y_t|s_t) - log pi_ref(y_t|s_t)) - (log pi_old(y_t|s_t) - log pi_ref(y_t|s_t))

on the student's own samples, used as a *per-token* advantage (discount 0) in the clipped surrogate. With
lambda = 1 the reference cancels and r_t = log pi_T - log pi_student: the negative single-sample reverse KL, i.e.
reverse-KL on-policy distillation (Agarwal et al. 2024, GKD; Thinking Machines 2025, "On-Policy Distillation").
Yang et al. 2026 (arXiv 2602.12125, G-OPD): the optimum is pi ∝ pi_ref^(1-lambda) pi_T^lambda, so lambda > 1
extrapolates past the teacher (ExOPD). The task reward is not used; ``reward_coef`` > 0 adds the group-normalised
task advantage to every token (a KDRL-style mix, Xu et al. 2025; its masking/annealing schedule is not implemented).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from tiltlm.batch import RolloutBatch
from tiltlm.objectives.surrogates import SURROGATES


@dataclass
class OnPolicyDistillation:
    lam: float = 1.0
    reward_coef: float = 0.0
    clip_low: float = 0.2
    clip_high: float = 0.2
    surrogate: str = "ppo"
    needs: set = field(default_factory=lambda: {"teacher"})
    default_advantage: str = "group_zscore"
    default_aggregation: str = "token_mean"

    def __post_init__(self) -> None:
        if self.lam != 1.0:
            self.needs = {"teacher", "ref"}  # pi_ref only cancels at lambda = 1

    def sequence_signal(self, batch: RolloutBatch) -> torch.Tensor:
        return batch.rewards  # only used when reward_coef > 0

    def rows_with_gradient(self, batch: RolloutBatch) -> torch.Tensor:
        return torch.ones(batch.size, dtype=torch.bool)  # every sampled token carries a distillation signal

    def token_advantages(self, batch: RolloutBatch) -> torch.Tensor:
        old = batch.sample_logprobs
        if self.lam == 1.0:
            adv = batch.teacher_logprobs - old
        else:
            ref = batch.ref_logprobs
            adv = self.lam * (batch.teacher_logprobs - ref) - (old - ref)
        if self.reward_coef:
            adv = adv + self.reward_coef * batch.advantages.unsqueeze(-1)
        return adv * batch.completion_mask

    def token_loss(self, logp: torch.Tensor, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        adv = self.token_advantages(batch).to(logp.dtype)
        loss, clipped = SURROGATES[self.surrogate](
            logp, batch.sample_logprobs, adv, batch.completion_mask, self.clip_low, self.clip_high, 3.0
        )
        reverse_kl = (batch.sample_logprobs - batch.teacher_logprobs).detach()  # k1 estimate of KL(student || teacher)
        return loss, {"loss/clip_frac": clipped.float(), "kl/teacher_k1": reverse_kl}


@dataclass
class TeacherSFT:
    """Off-policy baseline for distillation: supervised fine-tuning on the *teacher's* samples (sequence-level KD,
    Kim & Rush 2016): loss = -log pi_theta(y_t | s_t), token mean, y ~ teacher. The trainer samples from the teacher
    (``sample_from = "teacher"``); the task reward is only logged."""

    needs: set = field(default_factory=set)
    sample_from: str = "teacher"
    default_advantage: str = "group_mean"
    default_aggregation: str = "token_mean"

    def sequence_signal(self, batch: RolloutBatch) -> torch.Tensor:
        return batch.rewards

    def rows_with_gradient(self, batch: RolloutBatch) -> torch.Tensor:
        return torch.ones(batch.size, dtype=torch.bool)

    def token_loss(self, logp: torch.Tensor, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return -logp, {"loss/nll": -logp.detach()}
