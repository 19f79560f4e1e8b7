"""Drawing one token per row from logits, with the statistics the trainer records about each draw.

One implementation for both samplers: the eager loop (rollout/hf.py) and the compiled static-cache step
(``lean.LeanDecoder.decode_and_draw``), which runs it inside its graph. The uniforms come from the caller, so the
random stream is the caller's (and the same in both).
"""

from __future__ import annotations

import torch


def draw(logits: torch.Tensor, temperature: float, u: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """(token, its log-prob, entropy, mean log-softmax) per row of ``logits`` [rows, V], all under the tempered
    sampling distribution softmax(logits / temperature). ``temperature=0`` is greedy (statistics of the T=1 softmax,
    ``u`` unused); otherwise ``u`` [rows] float64 uniforms in [0, 1) pick the token by inverse CDF."""
    lsm = torch.log_softmax(logits / temperature if temperature > 0 else logits, dim=-1)
    probs = lsm.exp()
    tok = inverse_cdf(probs, u) if temperature > 0 else lsm.argmax(-1)
    return tok, lsm.gather(-1, tok.unsqueeze(-1)).squeeze(-1), -(probs * lsm).sum(-1), lsm.mean(-1)


def inverse_cdf(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """The index where uniform ``u`` [rows] falls in each row's cumulative sums of ``probs`` [rows, V] (rows need not
    sum to 1; float64, so a 150k vocabulary adds no visible rounding). The same distribution as
    ``torch.multinomial(probs, 1)`` -- which draws an exponential per vocabulary entry and was measured 15-19x slower
    here -- but a different random stream. A zero-probability token is never drawn: the first index whose cumulative
    sum exceeds u has positive mass."""
    cdf = probs.double().cumsum(-1)
    at = torch.searchsorted(cdf, u.unsqueeze(-1) * cdf[:, -1:], right=True)
    return at.clamp(max=probs.shape[-1] - 1).squeeze(-1)
