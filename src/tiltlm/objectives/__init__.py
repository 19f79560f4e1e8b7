"""Objectives: ``OBJECTIVES[name] = (build(cfg) -> objective, one-line description)``.

An objective answers four questions, and the trainer asks them without ever looking at its name:
  needs                  which extra log-probs to compute ({"ref"}: the frozen reference / prior)
  sequence_signal(b)     the per-sequence signal the advantage estimator baselines (a reward or a pseudo-reward)
  rows_with_gradient(b)  which rows can change the parameters (others may be left out of the backward)
  token_loss(logp, b)    per-token losses; the scalar is sum(loss * aggregation weights), an explicit choice
plus ``default_advantage`` / ``default_aggregation`` used when the config says ``auto``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from tiltlm.batch import RolloutBatch
from tiltlm.config import ObjectiveConfig
from tiltlm.errors import TiltError
from tiltlm.objectives.aggregation import AGGREGATIONS
from tiltlm.objectives.distill import KDRL, OnPolicyDistillation, TeacherSFT, TrustRegionRatioDistillation
from tiltlm.objectives.dph import GENERATORS, DivergencePreservingHybrid
from tiltlm.objectives.fdpg import F_DIVERGENCES, FDivergence
from tiltlm.objectives.kl import KL_ESTIMATORS
from tiltlm.objectives.lpreg import LpReg
from tiltlm.objectives.pg import ClippedPolicyGradient
from tiltlm.objectives.rover import Rover
from tiltlm.objectives.siren import Siren
from tiltlm.objectives.surrogates import SURROGATES
from tiltlm.target import ConstraintEvidence, MomentEvidence, RewardEvidence, Target


class Objective(Protocol):
    needs: set[str]
    default_advantage: str
    default_aggregation: str

    def sequence_signal(self, batch: RolloutBatch) -> torch.Tensor: ...

    def rows_with_gradient(self, batch: RolloutBatch) -> torch.Tensor: ...

    def token_loss(self, logp: torch.Tensor, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


def build_target(c: ObjectiveConfig) -> Target:
    """The target pi0 * evidence named by the config (pi0 is the frozen reference model)."""
    if c.evidence == "reward":
        if c.beta <= 0:
            raise TiltError("objective.evidence=reward needs objective.beta > 0 (the target temperature)")
        return Target(RewardEvidence(c.beta))
    if c.evidence == "constraint":
        return Target(ConstraintEvidence(1.0))
    if c.evidence == "moment":
        if not 0.0 < c.moment < 1.0:
            raise TiltError(f"objective.evidence=moment needs 0 < objective.moment < 1, got {c.moment}")
        return Target(MomentEvidence([c.moment]))  # lambda is fitted on pi0's samples before training
    raise TiltError(f"unknown objective.evidence '{c.evidence}' (valid: reward, constraint, moment)")


def _pg_kwargs(c: ObjectiveConfig) -> dict:
    if c.kl_placement not in ("loss", "reward"):
        raise TiltError(f"unknown objective.kl_placement '{c.kl_placement}' (valid: loss, reward)")
    if c.surrogate not in SURROGATES:
        raise TiltError(f"unknown objective.surrogate '{c.surrogate}' (valid: {', '.join(SURROGATES)})")
    return dict(clip_low=c.clip_low, clip_high=c.clip_high, beta=c.beta, kl_estimator=c.kl_estimator,
                kl_placement=c.kl_placement, kl_correction=c.kl_correction, surrogate=c.surrogate,
                dual_clip_c=c.dual_clip_c, entropy_coef=c.entropy_coef)


def _grpo(c: ObjectiveConfig) -> Objective:
    return ClippedPolicyGradient(**_pg_kwargs(c))


def _kl_rl(c: ObjectiveConfig) -> Objective:
    if c.beta <= 0:
        raise TiltError("objective 'kl_rl' needs objective.beta > 0")
    return ClippedPolicyGradient(c.clip_low, c.clip_high, c.beta, "k1", "reward", False, default_advantage="group_mean")


def _rapo(c: ObjectiveConfig) -> Objective:
    if c.forward_kl_coef <= 0 or c.forward_kl_alpha <= 0:
        raise TiltError("objective 'rapo' needs objective.forward_kl_coef > 0 and objective.forward_kl_alpha > 0")
    tilted_reference = FDivergence(Target(RewardEvidence(c.forward_kl_alpha)), "fkl", z_estimate="group")
    return ClippedPolicyGradient(**_pg_kwargs(c), forward_kl=tilted_reference, forward_kl_coef=c.forward_kl_coef)


def _dph(c: ObjectiveConfig) -> Objective:
    if c.rehearsal_divergence not in GENERATORS:
        raise TiltError(f"unknown objective.rehearsal_divergence '{c.rehearsal_divergence}' (valid: {', '.join(GENERATORS)})")
    return DivergencePreservingHybrid(**_pg_kwargs(c), coef=c.rehearsal_coef, divergence=c.rehearsal_divergence,
                                      rehearsal_rows=c.rehearsal_rows)


def _opd(c: ObjectiveConfig) -> Objective:
    if c.distill_lambda <= 0:
        raise TiltError(f"objective.distill_lambda must be > 0, got {c.distill_lambda}")
    return OnPolicyDistillation(c.distill_lambda, c.distill_reward_coef, c.clip_low, c.clip_high, c.surrogate)


def _fdpg(divergence: str | None) -> Callable[[ObjectiveConfig], Objective]:
    def build(c: ObjectiveConfig) -> Objective:
        div = divergence or c.divergence
        if div not in (*F_DIVERGENCES, "alpha"):
            raise TiltError(f"unknown objective.divergence '{div}' (valid: {', '.join([*F_DIVERGENCES, 'alpha'])})")
        if c.z_estimate not in ("group", "running"):
            raise TiltError(f"unknown objective.z_estimate '{c.z_estimate}' (valid: group, running)")
        return FDivergence(build_target(c), div, c.alpha, c.z_estimate, proposal_every=c.proposal_every,
                           max_seq_weight=c.max_seq_weight)

    return build


OBJECTIVES: dict[str, tuple[Callable[[ObjectiveConfig], Objective], str]] = {
    "grpo": (_grpo, "clipped PG + optional KL-to-reference in the loss or reward (Shao et al. 2024, DeepSeekMath)"),
    "kl_rl": (_kl_rl, "KL-regularised RL, k1 KL as a reward penalty: reverse KL to pi0 exp(r/beta) (Korbak et al. 2022)"),
    "dpg": (_fdpg("fkl"), "forward KL(p || pi) by distribution matching (Parshakova et al. 2019; Khalifa et al. 2021)"),
    "fdpg": (_fdpg(None), "f-divergence D_f(pi || p): fkl | rkl | js | tv | alpha (Go et al. 2023)"),
    "dph": (_dph, "GRPO + f-divergence to pi0 on its stored samples (Li et al. 2025, DPH-RL)"),
    "opd": (_opd, "on-policy distillation, per-token reverse KL to a teacher as dense reward; lambda > 1 = ExOPD "
                  "(Agarwal et al. 2024; Yang et al. 2026, G-OPD)"),
    "sft_teacher": (lambda c: TeacherSFT(), "SFT on the teacher's own samples: the off-policy distillation baseline "
                                            "(Kim & Rush 2016, sequence-level KD)"),
    "kdrl": (lambda c: KDRL(**_pg_kwargs(c), kd_coef_start=c.kd_coef_start, kd_coef_end=c.kd_coef_end,
                            kd_mask_correct=c.kd_mask_correct),
             "GRPO + annealed k2 KL to a teacher, masked on rewarded responses (Xu et al. 2025, KDRL)"),
    "rlad": (lambda c: TrustRegionRatioDistillation(**_pg_kwargs(c), anchor_alpha=c.anchor_alpha,
                                                    anchor_mixture=c.anchor_mixture),
             "clipped ratio to a teacher/old-policy anchor, reconstruction (Zhang et al. 2026, RLAD/TRRD)"),
    "siren": (lambda c: Siren(**_pg_kwargs(c), coef=c.siren_coef),
              "GRPO + self-anchored selective (top-p, peak-position) entropy regulariser (arXiv 2509.25133, SIREN)"),
    "lp_reg": (lambda c: LpReg(**_pg_kwargs(c), kappa=c.lpreg_kappa, coef=c.lpreg_coef),
               "GRPO + k3 to a min-p proxy on the lowest-probability negative tokens (Huang et al. 2025, Lp-Reg)"),
    "rover": (lambda c: Rover(), "ROVER: Q from the policy's log-ratio, uniform-policy next-state value, squared "
                                 "loss (He et al. 2025)"),
    "rapo": (_rapo, "GRPO + forward-KL penalty to pi_ref exp(r/alpha), reconstruction (Deng et al. 2025, RAPO)"),
}

__all__ = ["LpReg", "Siren", "KDRL", "TrustRegionRatioDistillation", "Rover", "TeacherSFT", "GENERATORS", "SURROGATES", "AGGREGATIONS", "KL_ESTIMATORS", "OBJECTIVES", "ClippedPolicyGradient", "FDivergence", "Objective",
           "build_target"]
