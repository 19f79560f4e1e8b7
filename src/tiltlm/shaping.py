"""Reward shaping applied to the task's rewards before the objective sees them (correctness is never changed).

``SHAPINGS[name](rewards, correct, lengths, group_ids, c) -> rewards``, applied in the order ``shaping.names``
lists them.

- ``overlong_penalty``: DAPO's soft overlong punishment (Yu et al. 2025): with hard limit L_max and buffer L_buf,
  r += min(-(L - (L_max - L_buf)) / L_buf * factor, 0).
- ``laser``: LASER length-based reward (Liu et al. 2025, hkust-nlp/Laser): a correct response scores 1 (+alpha when
  L <= L_T in ``reward``/``hybrid`` mode, -alpha when L > L_T in ``penalty``/``hybrid`` mode); a wrong one scores
  ``laser_wrong`` (-0.5 in the authors' code).
- ``laser_d``: LASER-D, the adaptive difficulty-aware target: prompts are bucketed by their group's accuracy
  (>= 2/3 high, >= 1/3 medium, else low); per bucket, L_T is the smallest grid length L whose coverage (share of the
  bucket's responses with length <= L) satisfies floor(coverage * n_b) >= 1, n_b = floor(2n/3) (high), floor(n/3)
  (medium), 1 (low), n = samples per prompt. Deviation: the authors measure coverage on a separate monitoring set
  every ``monitor_freq`` steps; here the current batch is the monitoring set.

Overlong *filtering* (DAPO: truncated responses carry no loss) is ``shaping.filter_truncated``: their tokens get
zero aggregation weight and leave the normaliser.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from tiltlm.config import ShapingConfig


def overlong_penalty(rewards, correct, lengths, group_ids, c: ShapingConfig) -> torch.Tensor:
    limit, buf = c.overlong_max or 0, c.overlong_buffer
    penalty = -(lengths.float() - (limit - buf)) / buf * c.overlong_factor
    return rewards + penalty.clamp(max=0.0)


def laser(rewards, correct, lengths, group_ids, c: ShapingConfig, target: torch.Tensor | float | None = None) -> torch.Tensor:
    short = lengths <= (c.laser_target if target is None else target)
    bonus = torch.zeros_like(rewards)
    if c.laser_mode in ("reward", "hybrid"):
        bonus = bonus + torch.where(short, c.laser_alpha, 0.0)
    if c.laser_mode in ("penalty", "hybrid"):
        bonus = bonus - torch.where(short, 0.0, c.laser_alpha)
    return torch.where(correct.bool(), 1.0 + bonus, torch.full_like(rewards, c.laser_wrong))


def bucket_target(lengths: torch.Tensor, n_b: int, grid: list[int]) -> int:
    """Smallest L in ``grid`` with floor(coverage(L) * n_b) >= 1 (the largest grid value if none qualifies)."""
    for length in grid:
        coverage = float((lengths <= length).float().mean()) if lengths.numel() else 0.0
        if math.floor(coverage * n_b) >= 1:
            return length
    return grid[-1]


def laser_d(rewards, correct, lengths, group_ids, c: ShapingConfig) -> torch.Tensor:
    _, inv, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    n = int(counts.max())
    acc = torch.zeros(len(counts)).index_add_(0, inv, correct.float()) / counts
    bucket = torch.where(acc >= 2 / 3, 2, torch.where(acc >= 1 / 3, 1, 0))[inv]  # per row: 0 low, 1 medium, 2 high
    grid = list(range(c.laser_d_min, c.laser_d_max + 1, c.laser_d_step))
    n_b = {2: (2 * n) // 3, 1: n // 3, 0: 1}
    target = torch.zeros_like(lengths, dtype=torch.float32)
    for b in (0, 1, 2):
        rows = bucket == b
        if rows.any():
            target[rows] = bucket_target(lengths[rows], n_b[b], grid)
    return laser(rewards, correct, lengths, group_ids, c, target)


SHAPINGS: dict[str, Callable[..., torch.Tensor]] = {"overlong_penalty": overlong_penalty, "laser": laser,
                                                     "laser_d": laser_d}


def shape_rewards(rewards, correct, lengths, group_ids, c: ShapingConfig) -> torch.Tensor:
    for name in c.names:
        rewards = SHAPINGS[name](rewards, correct, lengths, group_ids, c)
    return rewards
