"""The one place where logits become token log-probs (and entropies).

Only the logits that predict completion tokens are materialised (``logits_to_keep``), and the log-softmax runs in
row chunks so a real vocabulary (150k) never needs a [B, T, V] float32 copy at once.
"""

from __future__ import annotations

import torch

from tiltlm import lean


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids for left-padded rows: 0 at the first real token, pads clamped to 0."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def completion_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, n_completion: int) -> torch.Tensor:
    """Logits [B, C, V] predicting the last ``n_completion`` columns of ``input_ids``."""
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=positions(attention_mask),
        use_cache=False,
        logits_to_keep=n_completion + 1,
    )
    return out.logits[:, :-1]


# Per-position statistics of the whole distribution an objective may ask for (``token_stats``).
TOKEN_STATS = {
    "entropy": lambda lsm: -(lsm.exp() * lsm).sum(-1),
    "mean_logsoftmax": lambda lsm: lsm.mean(-1),  # ROVER's uniform-policy value of a state
}


def _token_stat(name: str):
    """``TOKEN_STATS[name]``, or a parametrised one such as ``top_p_entropy:0.8`` (SIREN)."""
    if name.startswith("minp:"):
        from tiltlm.objectives.lpreg import minp_stats

        kappa = float(name.split(":", 1)[1])
        return lambda lsm: minp_stats(lsm, kappa)
    if name.startswith("top_p_entropy:"):
        from tiltlm.objectives.siren import top_p_entropy

        p = float(name.split(":", 1)[1])
        return lambda lsm: top_p_entropy(lsm, p)
    return TOKEN_STATS[name]


def gather_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0, stats: tuple[str, ...] | set = (),
    chunk: int = 64,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """log softmax(logits / T)[targets], plus the requested ``TOKEN_STATS`` of each tempered distribution."""
    logps, extra = [], {name: [] for name in stats}
    for i in range(0, logits.shape[0], chunk):
        lg = logits[i : i + chunk].float()
        if temperature != 1.0:
            lg = lg / temperature
        lsm = torch.log_softmax(lg, dim=-1)
        logps.append(lsm.gather(-1, targets[i : i + chunk].unsqueeze(-1)).squeeze(-1))
        for name in stats:
            extra[name].append(_token_stat(name)(lsm))
    return torch.cat(logps), {name: torch.cat(v) for name, v in extra.items()}


def sequence_logprobs(
    model,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    completion_ids: torch.Tensor,
    completion_mask: torch.Tensor,
    temperature: float = 1.0,
    stats: tuple[str, ...] | set = (),
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token log-probs [B, C] of the completion under ``model`` (padding positions are garbage: mask them),
    and any requested per-position ``TOKEN_STATS``."""
    if lean.enabled(model):  # packed tokens, each distinct prompt computed once (same math: lean.py)
        logits = lean.LeanDecoder(model).completion_logits(prompt_ids, prompt_mask, completion_ids, completion_mask)
    else:
        ids = torch.cat([prompt_ids, completion_ids], dim=1)
        mask = torch.cat([prompt_mask, completion_mask], dim=1)
        logits = completion_logits(model, ids, mask, completion_ids.shape[1])
    return gather_logprobs(logits, completion_ids, temperature, stats)
