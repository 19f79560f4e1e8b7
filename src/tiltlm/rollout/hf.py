"""The default rollout engine: batched, KV-cached ancestral sampling on any ``transformers`` causal LM.

Unlike ``model.generate`` it records the log-prob of every sampled token under the (tempered) sampling
distribution, runs no logits processors, prefills each prompt once for its n samples, drops finished rows from the
batch, and stops as soon as every row has emitted EOS.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

from tiltlm import lean
from tiltlm.batch import left_pad
from tiltlm.logprobs import positions


@dataclass
class Generation:
    prompt_ids: torch.Tensor  # [B, P]
    prompt_mask: torch.Tensor  # [B, P]
    completion_ids: torch.Tensor  # [B, C]
    completion_mask: torch.Tensor  # [B, C]
    sample_logprobs: torch.Tensor  # [B, C]
    entropy: torch.Tensor  # [B, C] entropy of each sampling distribution (free: the softmax is computed anyway)
    mean_logsoftmax: torch.Tensor  # [B, C] mean over the vocabulary of its log-softmax (ROVER's state value)
    finished: torch.Tensor  # [B] bool


class HFEngine:
    """``generate(prompts, n)``: each prompt repeated ``n`` times (rows grouped by prompt)."""

    def __init__(self, model, eos_id: int, pad_id: int):
        self.model, self.eos_id, self.pad_id = model, eos_id, pad_id

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: list[list[int]],
        n: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> Generation:
        """Sample ``n`` completions per prompt; ``temperature=0`` is greedy (log-probs then of the T=1 softmax).

        Two savings over a plain loop, neither changing the distribution: each prompt is prefilled once and its KV
        cache repeated ``n`` times, and rows that emitted EOS leave the batch (their cache rows are dropped), so
        every decode step runs only on unfinished rows.
        """
        device = next(self.model.parameters()).device
        ids_u, mask_u = (t.to(device) for t in left_pad(prompt_ids, self.pad_id))
        B, C = len(prompt_ids) * n, max_new_tokens
        was_training = self.model.training
        toggle = was_training and not lean.enabled(self.model)  # the lean forward has no dropout: mode is moot
        if toggle:  # (eval() / train() walk every module: ~1 ms per batch on a 4-layer model)
            self.model.eval()
        state = (LeanState if lean.enabled(self.model) else HFState)(self.model, ids_u, mask_u, n, C)
        logits = state.logits
        ids, mask = ids_u.repeat_interleave(n, 0), mask_u.repeat_interleave(n, 0)
        next_pos = mask.sum(-1)  # position of the next token in each row
        tokens = torch.full((B, C), self.pad_id, dtype=torch.long, device=device)
        logps, ents, means = (torch.zeros(B, C, device=device) for _ in range(3))
        completion_mask = torch.zeros(B, C, dtype=torch.long, device=device)
        finished = torch.zeros(B, dtype=torch.bool, device=device)
        active = torch.arange(B, device=device)  # rows still generating, in batch order
        steps = 0
        for t in range(C):
            steps = t + 1
            lsm = torch.log_softmax(logits / temperature if temperature > 0 else logits, dim=-1)
            probs = lsm.exp()
            tok = sample_inverse_cdf(probs, generator) if temperature > 0 else lsm.argmax(-1)
            tokens[active, t] = tok
            logps[active, t] = lsm.gather(-1, tok.unsqueeze(-1)).squeeze(-1)
            ents[active, t] = -(probs * lsm).sum(-1)
            means[active, t] = lsm.mean(-1)
            completion_mask[active, t] = 1
            done = tok == self.eos_id
            finished[active[done]] = True
            if t == C - 1 or done.all():
                break
            if done.any():  # finished rows leave the batch and the cache
                keep = (~done).nonzero().squeeze(-1)
                state.select(keep)
                active, tok, next_pos = active[keep], tok[keep], next_pos[keep]
            logits = state.step(tok, next_pos)
            next_pos = next_pos + 1
        if toggle:
            self.model.train()
        return Generation(
            prompt_ids=ids,
            prompt_mask=mask,
            # contiguous copies of the columns used: downstream code (e.g. safetensors) may need contiguity
            completion_ids=tokens[:, :steps].contiguous(),
            completion_mask=completion_mask[:, :steps].contiguous(),
            sample_logprobs=logps[:, :steps].contiguous(),
            entropy=ents[:, :steps].contiguous(),
            mean_logsoftmax=means[:, :steps].contiguous(),
            finished=finished,
        )


def sample_inverse_cdf(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw per row of ``probs`` [rows, V] (rows need not sum to 1): one uniform per row, located in the row's
    cumulative sums (float64, so a 150k vocabulary adds no visible rounding). The same distribution as
    ``torch.multinomial(probs, 1)`` -- which draws an exponential per vocabulary entry and was measured 15-19x
    slower here -- but a different random stream. A zero-probability token is never drawn: the first index whose
    cumulative sum exceeds u has positive mass."""
    cdf = probs.double().cumsum(-1)
    u = torch.rand(len(probs), 1, generator=generator, device=probs.device, dtype=torch.float64) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).clamp_(max=probs.shape[-1] - 1).squeeze(-1)


class HFState:
    """Sampling state on the plain ``transformers`` forward: a DynamicCache plus each row's attention mask."""

    def __init__(self, model, ids: torch.Tensor, mask: torch.Tensor, n: int, max_new: int):
        self.model, self.cache = model, DynamicCache()
        out = model(input_ids=ids, attention_mask=mask, position_ids=positions(mask), past_key_values=self.cache,
                    use_cache=True, logits_to_keep=1)
        self.cache.batch_repeat_interleave(n)
        self.logits = out.logits[:, -1].float().repeat_interleave(n, 0)
        self.attn = mask.repeat_interleave(n, 0)

    def select(self, rows: torch.Tensor) -> None:
        self.cache.batch_select_indices(rows)
        self.attn = self.attn[rows]

    def step(self, tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        self.attn = torch.cat([self.attn, self.attn.new_ones(len(tok), 1)], dim=1)
        out = self.model(input_ids=tok.unsqueeze(-1), attention_mask=self.attn, position_ids=pos.unsqueeze(-1),
                         past_key_values=self.cache, use_cache=True)
        return out.logits[:, -1].float()


class LeanState:
    """Sampling state on the lean forward (lean.py): a static KV cache, no per-step mask building.

    Finished rows leave the cache lazily: compacting copies every layer's whole cache, so it waits until half of the
    cache's rows are finished. Until then the finished rows are decoded with a dummy token and their logits dropped
    (each row attends only to its own cache row, so they disturb nothing). The live rows' logits equal eager
    compaction's up to float rounding (other matmul row counts). Measured on the quickstart batch: index_select was 18% of
    sampling; on the 9.5M workload 5%."""

    def __init__(self, model, ids: torch.Tensor, mask: torch.Tensor, n: int, max_new: int):
        self.decoder = lean.LeanDecoder(model)
        logits, self.cache = self.decoder.prefill(ids, mask, n, max_new)
        self.logits = logits.float().repeat_interleave(n, 0)
        self.rows = torch.arange(len(self.logits), device=ids.device)  # cache row of each live row
        self.cache_rows = len(self.rows)

    def select(self, rows: torch.Tensor) -> None:
        self.rows = self.rows[rows]
        if 2 * len(self.rows) <= self.cache_rows and not self.cache.static:  # the compiled step keeps its shapes
            self.cache.select(self.rows)
            self.rows, self.cache_rows = torch.arange(len(rows), device=rows.device), len(rows)

    def step(self, tok: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        if len(self.rows) == self.cache_rows:
            return self.decoder.decode(self.cache, tok, pos).float()
        all_tok = tok.new_zeros(self.cache_rows).index_copy_(0, self.rows, tok)
        all_pos = pos.new_zeros(self.cache_rows).index_copy_(0, self.rows, pos)
        return self.decoder.decode(self.cache, all_tok, all_pos).float()[self.rows]


def decode_completions(tokenizer, completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> list[str]:
    """Completion texts without special tokens (EOS/pad)."""
    rows = [ids[m.bool()].tolist() for ids, m in zip(completion_ids, completion_mask)]
    return tokenizer.batch_decode(rows, skip_special_tokens=True)
