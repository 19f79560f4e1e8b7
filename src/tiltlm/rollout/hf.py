"""The default rollout engine: batched, KV-cached ancestral sampling on any ``transformers`` causal LM.

Unlike ``model.generate`` it records the log-prob of every sampled token under the (tempered) sampling
distribution, runs no logits processors, and stops as soon as every row has emitted EOS.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache

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
        """Sample ``n`` completions per prompt; ``temperature=0`` is greedy (log-probs then of the T=1 softmax)."""
        rows = [p for p in prompt_ids for _ in range(n)]
        ids, mask = left_pad(rows, self.pad_id)
        device = next(self.model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        B = ids.shape[0]
        was_training = self.model.training
        self.model.eval()
        cache = DynamicCache()
        out = self.model(
            input_ids=ids, attention_mask=mask, position_ids=positions(mask), past_key_values=cache,
            use_cache=True, logits_to_keep=1,
        )
        next_pos = mask.sum(-1, keepdim=True)  # position of the first completion token in each row
        tokens, logps, ents, means, alive_cols = [], [], [], [], []
        alive = torch.ones(B, dtype=torch.bool, device=device)
        attn = mask
        for _ in range(max_new_tokens):
            logits = out.logits[:, -1].float()
            if temperature > 0:
                lsm = torch.log_softmax(logits / temperature, dim=-1)
                tok = torch.multinomial(lsm.exp(), 1, generator=generator).squeeze(-1)
            else:
                lsm = torch.log_softmax(logits, dim=-1)
                tok = lsm.argmax(-1)
            tok = torch.where(alive, tok, torch.full_like(tok, self.pad_id))
            tokens.append(tok)
            logps.append(torch.where(alive, lsm.gather(-1, tok.unsqueeze(-1)).squeeze(-1), torch.zeros_like(lsm[:, 0])))
            ents.append(-(lsm.exp() * lsm).sum(-1) * alive)
            means.append(lsm.mean(-1) * alive)
            alive_cols.append(alive.clone())
            alive = alive & (tok != self.eos_id)
            if not alive.any():
                break
            # Finished rows keep being fed (as masked pads) so the cache stays rectangular.
            attn = torch.cat([attn, alive_cols[-1].long().unsqueeze(-1)], dim=1)
            out = self.model(
                input_ids=tok.unsqueeze(-1), attention_mask=attn, position_ids=next_pos, past_key_values=cache,
                use_cache=True,
            )
            next_pos = next_pos + 1
        self.model.train(was_training)
        completion_mask = torch.stack(alive_cols, 1).long()
        completion_ids = torch.stack(tokens, 1)
        return Generation(
            prompt_ids=ids,
            prompt_mask=mask,
            completion_ids=completion_ids,
            completion_mask=completion_mask,
            sample_logprobs=torch.stack(logps, 1),
            entropy=torch.stack(ents, 1),
            mean_logsoftmax=torch.stack(means, 1),
            finished=~alive,
        )


def decode_completions(tokenizer, completion_ids: torch.Tensor, completion_mask: torch.Tensor) -> list[str]:
    """Completion texts without special tokens (EOS/pad)."""
    rows = [ids[m.bool()].tolist() for ids, m in zip(completion_ids, completion_mask)]
    return tokenizer.batch_decode(rows, skip_special_tokens=True)
