"""Loss aggregation: how per-token losses become one scalar. An explicit choice, never a side effect.

Each mode is a weight per token, computed once on the *full* optimizer batch: the loss is sum(w * token_loss).
Because the weights never depend on how the batch is split, micro-batching (gradient accumulation) and padding
cannot change the loss or its gradient -- the classic silent bug where token-mean becomes a mean of micro-batch
means.

- ``seq_mean_token_mean``: mean over sequences of each sequence's token mean (GRPO paper, GSPO).
- ``token_mean``: sum over all valid tokens / number of valid tokens (DAPO, Lite PPO).
- ``seq_mean_token_sum``: each sequence's token sum (its sequence log-prob), mean over sequences (DPG, f-DPG).
- ``seq_sum_const``: each sequence's token sum / a constant, then mean over sequences (Dr.GRPO).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _rows(mask: torch.Tensor) -> torch.Tensor:
    """Number of sequences that carry any loss (rows left out by filtering do not count)."""
    return (mask.sum(-1) > 0).sum().clamp(min=1)


def seq_mean_token_mean(mask: torch.Tensor, constant: float = 0.0) -> torch.Tensor:
    mask = mask.float()
    return mask / mask.sum(-1, keepdim=True).clamp(min=1) / _rows(mask)


def token_mean(mask: torch.Tensor, constant: float = 0.0) -> torch.Tensor:
    mask = mask.float()
    return mask / mask.sum().clamp(min=1)


def seq_mean_token_sum(mask: torch.Tensor, constant: float = 0.0) -> torch.Tensor:
    mask = mask.float()
    return mask / _rows(mask)


def seq_sum_const(mask: torch.Tensor, constant: float = 0.0) -> torch.Tensor:
    if constant <= 0:
        raise ValueError("seq_sum_const needs a positive constant (e.g. the max generation length)")
    mask = mask.float()
    return mask / constant / _rows(mask)


AGGREGATIONS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "seq_mean_token_mean": seq_mean_token_mean,
    "token_mean": token_mean,
    "seq_mean_token_sum": seq_mean_token_sum,
    "seq_sum_const": seq_sum_const,
}
