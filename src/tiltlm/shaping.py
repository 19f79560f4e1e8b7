"""Reward shaping applied to the task's rewards before the objective sees them (correctness is never changed).

``SHAPINGS[name](rewards, correct, lengths, c) -> rewards``, applied in the order ``shaping.names`` lists them.

- ``overlong_penalty``: DAPO's soft overlong punishment (Yu et al. 2025): with hard limit L_max and buffer L_buf,
  r += min(-(L - (L_max - L_buf)) / L_buf * factor, 0).
- ``laser``: LASER length-based reward (Liu et al. 2025, hkust-nlp/Laser): a correct response scores 1 (+alpha when
  L <= L_T in ``reward``/``hybrid`` mode, -alpha when L > L_T in ``penalty``/``hybrid`` mode); a wrong one scores
  ``laser_wrong`` (-0.5 in the authors' code). LASER-D's adaptive, difficulty-bucketed L_T is not implemented yet.

Overlong *filtering* (DAPO: truncated responses carry no loss) is ``shaping.filter_truncated``: their tokens get
zero aggregation weight and leave the normaliser.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from tiltlm.config import ShapingConfig


def overlong_penalty(rewards: torch.Tensor, correct: torch.Tensor, lengths: torch.Tensor, c: ShapingConfig) -> torch.Tensor:
    limit, buf = c.overlong_max or 0, c.overlong_buffer
    penalty = -(lengths.float() - (limit - buf)) / buf * c.overlong_factor
    return rewards + penalty.clamp(max=0.0)


def laser(rewards: torch.Tensor, correct: torch.Tensor, lengths: torch.Tensor, c: ShapingConfig) -> torch.Tensor:
    short = lengths <= c.laser_target
    bonus = torch.zeros_like(rewards)
    if c.laser_mode in ("reward", "hybrid"):
        bonus = bonus + torch.where(short, c.laser_alpha, 0.0)
    if c.laser_mode in ("penalty", "hybrid"):
        bonus = bonus - torch.where(short, 0.0, c.laser_alpha)
    return torch.where(correct.bool(), 1.0 + bonus, torch.full_like(rewards, c.laser_wrong))


SHAPINGS: dict[str, Callable[..., torch.Tensor]] = {"overlong_penalty": overlong_penalty, "laser": laser}


def shape_rewards(rewards: torch.Tensor, correct: torch.Tensor, lengths: torch.Tensor, c: ShapingConfig) -> torch.Tensor:
    for name in c.names:
        rewards = SHAPINGS[name](rewards, correct, lengths, c)
    return rewards
