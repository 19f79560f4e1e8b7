"""SIREN: selective, self-anchored entropy regularisation (arXiv 2509.25133, "Rethinking Entropy Regularization in
Large Reasoning Models"; Linn3a/siren).

    loss = GRPO loss + c * (H_sel - H_anchor)^2

- top-p entropy per position: the sorted probabilities *before* the first index where the cumulative mass reaches p
  (the crossing token excluded, at least one kept), renormalised; differentiable through the probabilities.
- peak-entropy mask: within each sequence, positions whose top-p entropy is above that sequence's ``mask_ratio``
  quantile (80th percentile).
- H_sel: seq-mean-token-mean of the masked entropies; H_anchor: H_sel of the first batch, then held fixed. The
  term pulls entropy *toward* the anchor from either side -- it is not a one-sided bonus.
As in the authors' verl code, H_sel is a statistic of the micro-batch, so unlike per-token losses this term is not
invariant to the micro-batch size; keep train.micro_batch_size >= the batch for the exact batch-level form.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tiltlm.batch import RolloutBatch
from tiltlm.objectives.pg import ClippedPolicyGradient


def top_p_entropy(logits_or_logprobs: torch.Tensor, p: float = 0.8) -> torch.Tensor:
    """Entropy of the renormalised top-p head (crossing token excluded) of each distribution along the last dim."""
    probs = torch.softmax(logits_or_logprobs, -1)
    sorted_p, _ = probs.sort(-1, descending=True)
    before = sorted_p.cumsum(-1) - sorted_p  # mass strictly before each index
    keep = (before + sorted_p < p) | (torch.arange(sorted_p.shape[-1]) == 0)  # ... until cumsum reaches p
    head = sorted_p * keep
    head = head / head.sum(-1, keepdim=True)
    return -(head * torch.log(head.clamp(min=1e-30))).sum(-1)


@dataclass
class Siren(ClippedPolicyGradient):
    coef: float = 0.005
    top_p: float = 0.8
    mask_ratio: float = 0.8
    anchor: float | None = None  # H_sel of the first batch; state, saved with the run

    @property
    def token_stats(self) -> set[str]:
        return {f"top_p_entropy:{self.top_p}"}

    def rows_with_gradient(self, batch: RolloutBatch) -> torch.Tensor:
        return torch.ones(batch.size, dtype=torch.bool)  # the entropy term reaches every sequence

    def selective_entropy(self, batch: RolloutBatch) -> torch.Tensor:
        h = batch.token_stats[f"top_p_entropy:{self.top_p}"]
        mask = batch.completion_mask.bool()
        total, rows = h.new_zeros(()), 0
        for i in range(h.shape[0]):
            valid = h[i][mask[i]]
            if valid.numel() == 0:
                continue
            threshold = torch.quantile(valid.detach().float(), self.mask_ratio)
            peak = valid[valid.detach() > threshold] if (valid.detach() > threshold).any() else valid.max().view(1)
            total, rows = total + peak.mean(), rows + 1
        return total / max(1, rows)

    def batch_loss(self, logp: torch.Tensor, batch: RolloutBatch) -> tuple[torch.Tensor, dict[str, float]]:
        h_sel = self.selective_entropy(batch)
        if self.anchor is None:
            self.anchor = float(h_sel.detach())
        return self.coef * (h_sel - self.anchor) ** 2, {"loss/siren_h_sel": float(h_sel.detach())}
