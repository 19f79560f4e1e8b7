"""Per-token KL estimators (Schulman 2020, "Approximating KL divergence"), for samples y ~ pi_theta.

With log r = log pi_ref(y) - log pi_theta(y):
    k1 = -log r                 unbiased for KL(pi_theta || pi_ref), high variance
    k2 = (log r)^2 / 2          biased, low variance; as a *loss* its expected gradient is the reverse-KL gradient
    k3 = (r - 1) - log r        unbiased value; as a *loss* its expected gradient is the FORWARD-KL gradient
                                (spec objectives.md section 3) -- which is what GRPO's "KL in the loss" regularises.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return logp - ref_logp


def k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    return 0.5 * (ref_logp - logp) ** 2


def k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    # Clamp the log-ratio as verl does: exp of a large gap would overflow and one token would dominate the batch.
    log_r = (ref_logp - logp).clamp(-20.0, 20.0)
    return torch.exp(log_r) - log_r - 1.0


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {"k1": k1, "k2": k2, "k3": k3}
