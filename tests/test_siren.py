"""SIREN goldens (spec objectives.md section 11.1)."""

import math

import pytest
import torch

from tiltlm.batch import RolloutBatch
from tiltlm.objectives import Siren
from tiltlm.objectives.siren import top_p_entropy


def test_top_p_entropy_golden():
    # [0.5, 0.25, 0.15, 0.10], p = 0.8: the cumulative mass reaches .8 at index 2, which is excluded ->
    # kept [2/3, 1/3] -> entropy 0.63651
    h = top_p_entropy(torch.tensor([0.5, 0.25, 0.15, 0.10]).log(), 0.8)
    assert h.item() == pytest.approx(0.63651, abs=1e-5)
    assert top_p_entropy(torch.tensor([0.9, 0.1]).log(), 0.8).item() == pytest.approx(0.0, abs=1e-6)  # one kept


def _batch(h: torch.Tensor) -> RolloutBatch:
    n, c = h.shape
    b = RolloutBatch(
        prompt_ids=torch.zeros(n, 0, dtype=torch.long), prompt_mask=torch.zeros(n, 0, dtype=torch.long),
        completion_ids=torch.zeros(n, c, dtype=torch.long), completion_mask=torch.ones(n, c, dtype=torch.long),
        sample_logprobs=torch.zeros(n, c), group_ids=torch.zeros(n, dtype=torch.long),
        finished=torch.ones(n, dtype=torch.bool),
    )
    b.token_stats = {"top_p_entropy:0.8": h}
    return b


def test_self_anchored_regulariser_pulls_toward_the_anchor_from_both_sides():
    logits = torch.tensor([[1.0, 0.6, 0.3, 0.0, -0.5], [2.0, 1.0, 0.5, 0.0, -1.0]], requires_grad=True)
    lsm = torch.log_softmax(logits, -1)
    h = torch.stack([top_p_entropy(lsm[i], 0.8) for i in range(2)]).view(1, 2)
    obj = Siren(coef=1.0, mask_ratio=0.0)  # keep every position above the 0th quantile
    obj.anchor = None
    loss, _ = obj.batch_loss(None, _batch(h))
    assert loss.item() == 0.0  # the first batch sets the anchor: zero loss, zero gradient
    loss.backward()
    assert logits.grad is None or torch.all(logits.grad == 0)
    # entropy above the anchor: the gradient of the regulariser lowers H_sel; below: raises it
    for anchor, sign in [(0.1, -1), (5.0, +1)]:
        obj.anchor = anchor
        x = logits.detach().clone().requires_grad_(True)
        lsm = torch.log_softmax(x, -1)
        h = torch.stack([top_p_entropy(lsm[i], 0.8) for i in range(2)]).view(1, 2)
        loss, _ = obj.batch_loss(None, _batch(h))
        loss.backward()
        stepped = (x - 0.01 * x.grad).detach()
        lsm2 = torch.log_softmax(stepped, -1)
        h2 = torch.stack([top_p_entropy(lsm2[i], 0.8) for i in range(2)]).view(1, 2)
        assert math.copysign(1, float(obj.selective_entropy(_batch(h2)) - obj.selective_entropy(_batch(h.detach())))) == sign
