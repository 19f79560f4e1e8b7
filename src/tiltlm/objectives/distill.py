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

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from tiltlm.batch import RolloutBatch
from tiltlm.objectives.kl import KL_ESTIMATORS
from tiltlm.objectives.pg import ClippedPolicyGradient
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


@dataclass
class KDRL(ClippedPolicyGradient):
    """KDRL (Xu et al. 2025, arXiv 2506.02208): GRPO + kd_coef * k2(pi_theta, pi_T) per token, the teacher taking
    the reference's place. k2 in the loss is the reverse-KL gradient on-policy (objectives/kl.py). Reward-guided
    masking switches KD off on responses that already earn reward; kd_coef is annealed linearly from
    ``kd_coef_start`` to ``kd_coef_end`` over training (the paper studies annealing; its schedule is unconfirmed)."""

    kd_coef_start: float = 5e-3
    kd_coef_end: float = 1e-3
    kd_mask_correct: bool = True
    kd_coef: float = 5e-3

    @property
    def needs(self) -> set[str]:
        return {"teacher"} | super().needs

    def schedule(self, step: int, total: int) -> None:
        frac = (step - 1) / max(1, total - 1)
        self.kd_coef = self.kd_coef_start + frac * (self.kd_coef_end - self.kd_coef_start)

    def rows_with_gradient(self, batch: RolloutBatch) -> torch.Tensor:
        kd_rows = ~batch.correct.bool() if self.kd_mask_correct else torch.ones(batch.size, dtype=torch.bool)
        return super().rows_with_gradient(batch) | kd_rows

    def token_loss(self, logp: torch.Tensor, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, stats = super().token_loss(logp, batch)
        kd = KL_ESTIMATORS["k2"](logp, batch.teacher_logprobs)
        if self.kd_mask_correct:
            kd = kd * (~batch.correct.bool()).unsqueeze(-1)
        stats["kl/teacher_k2"] = kd.detach()
        return loss + self.kd_coef * kd, stats


@dataclass
class TrustRegionRatioDistillation(ClippedPolicyGradient):
    """RLAD / TRRD (Zhang et al. 2026, arXiv 2602.22495) -- RECONSTRUCTION (spec objectives.md section 9): the PPO
    ratio's denominator is an anchor mixing teacher and old policy, rho = pi_theta / pi_anchor, so a rewarded token
    the teacher likes keeps being pushed up past GRPO's trust region (until rho = 1 + eps w.r.t. the anchor), and a
    penalised token is never pulled toward the teacher. ``anchor_mixture``: log (alpha log pi_T + (1-alpha) log
    pi_old, default) or linear (alpha pi_T + (1-alpha) pi_old). alpha = 0 is GRPO exactly."""

    anchor_alpha: float = 0.5
    anchor_mixture: str = "log"

    @property
    def needs(self) -> set[str]:
        return {"teacher"} | super().needs

    def anchor(self, batch: RolloutBatch) -> torch.Tensor:
        a, old, teacher = self.anchor_alpha, batch.sample_logprobs, batch.teacher_logprobs
        if self.anchor_mixture == "linear":
            if a <= 0:
                return old
            return torch.logaddexp(math.log(a) + teacher, math.log1p(-a) + old) if a < 1 else teacher
        return a * teacher + (1 - a) * old

    def token_loss(self, logp: torch.Tensor, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        anchored = dataclasses.replace(batch, sample_logprobs=self.anchor(batch))
        return super().token_loss(logp, anchored)
