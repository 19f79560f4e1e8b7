"""Evaluation: unbiased pass@k, mean reward and greedy accuracy on a task's held-out prompts.

pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"): with n samples of which c are
correct, pass@k = 1 - C(n-c, k)/C(n, k), computed in the stable product form 1 - prod_{i=n-c+1}^{n} (1 - k/i).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from tiltlm.errors import TiltError
from tiltlm.rollout import HFEngine, decode_completions
from tiltlm.tasks import Example, Task


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples, ``c`` correct."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n samples, got n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


@dataclass
class EvalResult:
    n_prompts: int
    samples: int
    pass_at: dict[int, float]
    mean_reward: float
    greedy_accuracy: float | None
    per_prompt_correct: list[int] = field(default_factory=list)

    def as_metrics(self, prefix: str = "eval/") -> dict:
        out = {f"{prefix}pass@{k}": v for k, v in self.pass_at.items()}
        out[f"{prefix}mean_reward"] = self.mean_reward
        if self.greedy_accuracy is not None:
            out[f"{prefix}greedy"] = self.greedy_accuracy
        return out

    def as_dict(self) -> dict:
        d = {
            "n_prompts": self.n_prompts,
            "samples": self.samples,
            "mean_reward": self.mean_reward,
            "greedy_accuracy": self.greedy_accuracy,
            "per_prompt_correct": self.per_prompt_correct,
        }
        d.update({f"pass@{k}": v for k, v in self.pass_at.items()})
        return d


def _score_rows(task: Task, examples: list[Example], n: int, texts: list[str], finished: torch.Tensor):
    scores = [task.score(examples[i // n], t, bool(f)) for i, (t, f) in enumerate(zip(texts, finished))]
    return scores


@torch.no_grad()
def evaluate(
    model,
    tokenizer,
    task: Task,
    examples: list[Example],
    samples: int,
    ks: list[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    seed: int = 0,
    greedy: bool = True,
    batch_prompts: int = 64,
) -> EvalResult:
    """Sample ``samples`` completions per held-out example; seeded, so the same model gives the same numbers."""
    if not examples:
        raise TiltError("evaluation set is empty")
    bad = [k for k in ks if not 1 <= k <= samples]
    if bad:
        raise TiltError(f"pass@k needs 1 <= k <= samples ({samples}); got k={bad}")
    engine = HFEngine(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    correct_counts, rewards, greedy_hits = [], [], []
    for i in range(0, len(examples), batch_prompts):
        chunk = examples[i : i + batch_prompts]
        ids = [tokenizer(e.prompt)["input_ids"] for e in chunk]
        out = engine.generate(ids, samples, max_new_tokens, temperature, gen)
        scores = _score_rows(task, chunk, samples, decode_completions(tokenizer, out.completion_ids, out.completion_mask), out.finished)
        for j in range(len(chunk)):
            group = scores[j * samples : (j + 1) * samples]
            correct_counts.append(sum(s.correct for s in group))
            rewards.extend(s.reward for s in group)
        if greedy:
            g = engine.generate(ids, 1, max_new_tokens, 0.0)
            texts = decode_completions(tokenizer, g.completion_ids, g.completion_mask)
            greedy_hits.extend(s.correct for s in _score_rows(task, chunk, 1, texts, g.finished))
    pass_at = {k: float(np.mean([pass_at_k(samples, c, k) for c in correct_counts])) for k in ks}
    return EvalResult(
        n_prompts=len(examples),
        samples=samples,
        pass_at=pass_at,
        mean_reward=float(np.mean(rewards)),
        greedy_accuracy=float(np.mean(greedy_hits)) if greedy else None,
        per_prompt_correct=correct_counts,
    )


@torch.no_grad()
def kl_to_reference(
    model, reference, tokenizer, examples: list[Example], samples: int, max_new_tokens: int, seed: int = 0,
    batch_prompts: int = 64,
) -> tuple[float, float, float]:
    """Monte-Carlo sequence-level KL(pi_theta || pi_ref) = E_{y~pi_theta}[log pi_theta(y) - log pi_ref(y)] at T = 1,
    with its standard error, and the mean per-token entropy of pi_theta: (kl, stderr, entropy)."""
    from tiltlm.logprobs import sequence_logprobs

    engine = HFEngine(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    diffs, ent_sum, tokens = [], 0.0, 0
    for i in range(0, len(examples), batch_prompts):
        ids = [tokenizer(e.prompt)["input_ids"] for e in examples[i : i + batch_prompts]]
        out = engine.generate(ids, samples, max_new_tokens, 1.0, gen)
        ref_lp, _ = sequence_logprobs(reference, out.prompt_ids, out.prompt_mask, out.completion_ids, out.completion_mask)
        m = out.completion_mask
        diffs.append(((out.sample_logprobs - ref_lp) * m).sum(-1).double())
        ent_sum += float((out.entropy * m).sum())
        tokens += int(m.sum())
    d = torch.cat(diffs)
    return float(d.mean()), float(d.std() / math.sqrt(d.numel())), ent_sum / max(1, tokens)
