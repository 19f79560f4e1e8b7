"""Objectives: ``OBJECTIVES[name](cfg) -> objective`` with ``needs``, ``rows_with_gradient`` and ``token_loss``.

An objective turns current log-probs plus a RolloutBatch into per-token losses; aggregation into a scalar is a
separate, explicit choice (objectives/aggregation.py). The trainer never branches on the objective's name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from tiltlm.batch import RolloutBatch
from tiltlm.config import ObjectiveConfig
from tiltlm.objectives.aggregation import AGGREGATIONS
from tiltlm.objectives.kl import KL_ESTIMATORS
from tiltlm.objectives.pg import ClippedPolicyGradient


class Objective(Protocol):
    needs: set[str]

    def rows_with_gradient(self, batch: RolloutBatch) -> torch.Tensor: ...

    def token_loss(self, logp: torch.Tensor, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


def _grpo(c: ObjectiveConfig) -> Objective:
    return ClippedPolicyGradient(c.clip_low, c.clip_high, c.beta, c.kl_estimator)


# name -> (builder, one-line description with the paper)
OBJECTIVES: dict[str, tuple[Callable[[ObjectiveConfig], Objective], str]] = {
    "grpo": (_grpo, "clipped policy gradient + optional KL-to-reference loss (Shao et al. 2024, DeepSeekMath)"),
}

__all__ = ["AGGREGATIONS", "KL_ESTIMATORS", "OBJECTIVES", "ClippedPolicyGradient", "Objective"]
