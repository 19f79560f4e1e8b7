"""RolloutBatch: everything one optimizer batch knows about its sequences.

Layout: prompts are left-padded to a common width P, completions right-padded to width C, so every row is
``[pad.. prompt | completion ..pad]`` and completion token j of every row sits at column P + j. Positions are
``cumsum(attention_mask) - 1``, identical at sampling and training time -- that is what makes the sampling
log-probs reusable as old-policy log-probs.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch


@dataclass
class RolloutBatch:
    prompt_ids: torch.Tensor  # [B, P] left-padded
    prompt_mask: torch.Tensor  # [B, P]
    completion_ids: torch.Tensor  # [B, C] right-padded
    completion_mask: torch.Tensor  # [B, C] 1 on generated tokens (including EOS)
    sample_logprobs: torch.Tensor  # [B, C] log-prob of each token under the sampling policy (tempered)
    group_ids: torch.Tensor  # [B] which prompt each row answers
    finished: torch.Tensor  # [B] bool: generation ended with EOS
    rewards: torch.Tensor | None = None  # [B]
    correct: torch.Tensor | None = None  # [B] bool
    advantages: torch.Tensor | None = None  # [B] (sequence-level, broadcast over tokens)
    ref_logprobs: torch.Tensor | None = None  # [B, C] frozen reference / prior, only when the objective needs it
    teacher_logprobs: torch.Tensor | None = None  # [B, C] teacher, for distillation objectives
    policy_logprobs: torch.Tensor | None = None  # [B, C] current policy, when samples came from another proposal
    loss_weights: torch.Tensor | None = None  # [B, C] aggregation weights, fixed on the full batch
    # the current policy's whole-distribution statistics an objective asked for via ``token_stats`` (entropy,
    # mean_logsoftmax, top_p_entropy:p, minp:kappa), by name; set per micro-batch during the update
    token_stats: dict | None = None
    sample_mean_logsoftmax: torch.Tensor | None = None  # [B, C] the sampling policy's, recorded at generation
    sample_entropy: torch.Tensor | None = None  # [B, C] entropy of each sampling distribution
    prompt_keys: torch.Tensor | None = None  # [B] int64 hash of each row's prompt text (per-prompt state)
    hinted: torch.Tensor | None = None  # [B] bool: the prompt carried a solution hint (GHPO)
    rehearsal: torch.Tensor | None = None  # [B] bool: stored samples of the initial policy (DPH-RL), not rollouts

    @property
    def size(self) -> int:
        return self.completion_ids.shape[0]

    @property
    def input_ids(self) -> torch.Tensor:
        return torch.cat([self.prompt_ids, self.completion_ids], dim=1)

    @property
    def attention_mask(self) -> torch.Tensor:
        return torch.cat([self.prompt_mask, self.completion_mask], dim=1)

    @property
    def lengths(self) -> torch.Tensor:
        return self.completion_mask.sum(-1)

    def select(self, rows: torch.Tensor | slice) -> RolloutBatch:
        """Rows ``rows`` (index, bool mask or slice) of every per-row tensor, trimmed of all-padding columns."""
        if isinstance(rows, torch.Tensor) and rows.dtype == torch.bool and len(rows) == self.size and rows.all():
            return self.trim()  # every row kept: no copies
        picked = {
            fl.name: (v[rows] if isinstance(v := getattr(self, fl.name), torch.Tensor) else v) for fl in fields(self)
        }
        out = replace(self, **picked)
        return out.trim()

    def trim(self) -> RolloutBatch:
        """Drop prompt columns that are padding in every row and completion columns past the longest completion."""
        if self.size == 0:
            return self
        p_keep = int(self.prompt_mask.any(0).nonzero().min()) if self.prompt_mask.any() else self.prompt_mask.shape[1]
        c_keep = int(self.lengths.max())
        changes = {}
        for fl in fields(self):
            v = getattr(self, fl.name)
            if not isinstance(v, torch.Tensor) or v.dim() != 2:
                continue
            changes[fl.name] = v[:, p_keep:] if fl.name.startswith("prompt") else v[:, :c_keep]
        return replace(self, **changes)

    @staticmethod
    def concat(a: RolloutBatch, b: RolloutBatch, pad_id: int) -> RolloutBatch:
        """Rows of ``a`` then ``b``, re-padded to common widths (prompts left, completions right); absent optional
        fields are filled with zeros (and ``rehearsal`` with False) so that both halves carry every field."""
        P = max(a.prompt_ids.shape[1], b.prompt_ids.shape[1])
        C = max(a.completion_ids.shape[1], b.completion_ids.shape[1])
        out = {}
        for fl in fields(RolloutBatch):
            va, vb = getattr(a, fl.name), getattr(b, fl.name)
            if va is None and vb is None:
                out[fl.name] = None
                continue
            ref = va if va is not None else vb
            n_a, n_b = a.size, b.size
            va = va if va is not None else torch.zeros((n_a, *ref.shape[1:]), dtype=ref.dtype)
            vb = vb if vb is not None else torch.zeros((n_b, *ref.shape[1:]), dtype=ref.dtype)
            if ref.dim() == 2:
                width = P if fl.name.startswith("prompt") else C
                value = pad_id if fl.name.endswith("_ids") else 0
                left = fl.name.startswith("prompt")
                va, vb = (torch.nn.functional.pad(v, (width - v.shape[1], 0) if left else (0, width - v.shape[1]), value=value)
                          for v in (va, vb))
            out[fl.name] = torch.cat([va, vb.to(va.dtype)])
        return RolloutBatch(**out)

    def micro_batches(self, size: int) -> list[RolloutBatch]:
        return [self.select(slice(i, i + size)) for i in range(0, self.size, size)]  # slices: views, no copies


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, width - len(s) :] = torch.tensor(s)
            mask[i, width - len(s) :] = 1
    return ids, mask


def right_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, : len(s)] = torch.tensor(s)
            mask[i, : len(s)] = 1
    return ids, mask
