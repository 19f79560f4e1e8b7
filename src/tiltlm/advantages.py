"""Advantage estimators: sequence-level rewards -> per-sequence advantages, broadcast over tokens by the loss.

Every function has the signature ``fn(rewards [B], group_ids [B], eps) -> advantages [B]``; rows of one group share
a group id. Std is the unbiased (N-1) one, as in verl / TRL / oat (spec rlvr.md section 0).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _group_stats(rewards: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row group mean, unbiased group std and group size."""
    _, inv, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    r = rewards.double()
    sums = torch.zeros(len(counts), dtype=r.dtype).index_add_(0, inv, r)
    mean = sums / counts
    sq = torch.zeros(len(counts), dtype=r.dtype).index_add_(0, inv, (r - mean[inv]) ** 2)
    std = torch.sqrt(sq / (counts - 1).clamp(min=1))
    return mean[inv], std[inv], counts[inv].to(r.dtype)


def group_zscore(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO (Shao et al. 2024, DeepSeekMath): A_i = (r_i - mean_g) / (std_g + eps)."""
    mean, std, _ = _group_stats(rewards, group_ids)
    return ((rewards.double() - mean) / (std + eps)).to(rewards.dtype)


def group_mean(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Dr.GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): A_i = r_i - mean_g (no std division)."""
    mean, _, _ = _group_stats(rewards, group_ids)
    return (rewards.double() - mean).to(rewards.dtype)


def rloo(rewards: torch.Tensor, group_ids: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """RLOO (Ahmadian et al. 2024; Kool et al. 2019): A_i = r_i - mean of the other G-1 rewards = G/(G-1) (r_i - mean_g)."""
    mean, _, n = _group_stats(rewards, group_ids)
    return ((rewards.double() - mean) * n / (n - 1).clamp(min=1)).to(rewards.dtype)


ADVANTAGES: dict[str, Callable[..., torch.Tensor]] = {
    "group_zscore": group_zscore,
    "group_mean": group_mean,
    "rloo": rloo,
}
