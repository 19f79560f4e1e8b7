"""Policy-gradient surrogates: how the importance ratio rho = pi_theta / pi_old enters the per-token loss.

Each is ``fn(logp, old_logp, adv, mask, clip_low, clip_high, dual_clip_c) -> (token_loss [B,C], clipped [B,C])``,
with ``adv`` already broadcast to [B, C]. Aggregation over tokens is a separate choice (aggregation.py).

- ``ppo``: max(-A rho, -A clip(rho, 1 - eps_low, 1 + eps_high)) (Schulman et al. 2017; asymmetric bounds =
  DAPO's clip-higher, Yu et al. 2025).
- ``dual_clip``: ppo, and for A < 0 additionally min(., -A c) so a huge ratio cannot blow up the loss (Ye et al.
  2020, "Mastering Complex Control in MOBA Games"; verl's default c = 3).
- ``gspo``: one ratio per *sequence*, s_i = exp(mean_t log rho_{i,t}), clipped like ppo (Zheng et al. 2025, GSPO);
  token form s_{i,t} = sg[s_i] * pi/sg[pi], as in verl: same value, gradient spread over the sequence's tokens.
- ``cispo``: REINFORCE on log pi weighted by the clipped, detached ratio, -sg[clip(rho)] A log pi: clipping bounds
  the weight but never zeroes a token's gradient (MiniMax 2025, "MiniMax-M1", CISPO).
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def ppo(logp, old_logp, adv, mask, clip_low, clip_high, dual_clip_c):
    ratio = torch.exp(logp - old_logp)
    unclipped, clipped = -adv * ratio, -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def dual_clip(logp, old_logp, adv, mask, clip_low, clip_high, dual_clip_c):
    loss, was_clipped = ppo(logp, old_logp, adv, mask, clip_low, clip_high, dual_clip_c)
    cap = -adv * dual_clip_c
    capped = (adv < 0) & (loss > cap)
    return torch.where(capped, cap, loss), was_clipped | capped


def gspo(logp, old_logp, adv, mask, clip_low, clip_high, dual_clip_c):
    m = mask.to(logp.dtype)
    seq_log_ratio = ((logp - old_logp) * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1)
    s = torch.exp(seq_log_ratio.detach() + logp - logp.detach())  # value s_i, d/dlogp_t = s_i
    unclipped, clipped = -adv * s, -adv * s.clamp(1.0 - clip_low, 1.0 + clip_high)
    return torch.maximum(unclipped, clipped), clipped > unclipped


def cispo(logp, old_logp, adv, mask, clip_low, clip_high, dual_clip_c):
    ratio = torch.exp(logp - old_logp).detach()
    weight = ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    return -weight * adv * logp, weight != ratio


SURROGATES: dict[str, Callable] = {"ppo": ppo, "dual_clip": dual_clip, "gspo": gspo, "cispo": cispo}
