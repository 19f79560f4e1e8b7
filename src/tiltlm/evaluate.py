"""Held-out evaluation: what a model can do and how it does it, from ``samples`` completions per prompt.

One sampling pass gives every number: pass@k (unbiased) on a k grid, mean@k, maj@k, answer diversity (distinct
answers, distinct correct answers, distinct-n of completions), mean token entropy, and -- given a reference
model -- the Monte-Carlo sequence-level KL(pi || reference) with its standard error. Seeded: the same model, prompts
and seed give the same numbers. Estimator definitions and citations: ``tiltlm.metrics``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from tiltlm.errors import TiltError
from tiltlm.logprobs import sequence_logprobs
from tiltlm.metrics import (
    distinct_answers,
    distinct_n,
    k_grid,
    maj_at_k,
    mean_at_k,
    monte_carlo_kl,
    pass_at_k,
)
from tiltlm.rollout import HFEngine, decode_completions
from tiltlm.tasks import Example, Task

__all__ = ["EvalResult", "evaluate", "pass_at_k"]


@dataclass
class EvalResult:
    n_prompts: int
    samples: int
    pass_at: dict[int, float]
    mean_reward: float
    greedy_accuracy: float | None
    mean_at: dict[int, float] = field(default_factory=dict)
    maj_at: dict[int, float] = field(default_factory=dict)
    entropy: float = float("nan")  # mean per-token entropy of the sampling distribution
    distinct_answers: float = float("nan")  # per prompt, mean over prompts
    distinct_correct_answers: float = float("nan")
    distinct_1: float = float("nan")  # distinct-n of a prompt's completions (token ids), mean over prompts
    distinct_2: float = float("nan")
    kl_to_ref: float | None = None  # Monte-Carlo KL(pi || reference), nats per sequence
    kl_to_ref_se: float | None = None
    per_prompt_correct: list[int] = field(default_factory=list)

    def as_metrics(self, prefix: str = "eval/") -> dict:
        """Scalars for metrics.jsonl (the pass@k grid; the other @k tables stay in the JSON file)."""
        out = {f"{prefix}pass@{k}": v for k, v in self.pass_at.items()}
        out[f"{prefix}mean_reward"] = self.mean_reward
        out[f"{prefix}entropy"] = self.entropy
        out[f"{prefix}distinct_answers"] = self.distinct_answers
        if self.greedy_accuracy is not None:
            out[f"{prefix}greedy"] = self.greedy_accuracy
        if self.kl_to_ref is not None:
            out[f"{prefix}kl_to_base"] = self.kl_to_ref
            out[f"{prefix}kl_to_base_se"] = self.kl_to_ref_se
        return out

    def as_dict(self) -> dict:
        d = {
            "n_prompts": self.n_prompts,
            "samples": self.samples,
            "pass_at": {str(k): v for k, v in self.pass_at.items()},
            "mean_at": {str(k): v for k, v in self.mean_at.items()},
            "maj_at": {str(k): v for k, v in self.maj_at.items()},
            "mean_reward": self.mean_reward,
            "greedy_accuracy": self.greedy_accuracy,
            "entropy": self.entropy,
            "distinct_answers": self.distinct_answers,
            "distinct_correct_answers": self.distinct_correct_answers,
            "distinct_1": self.distinct_1,
            "distinct_2": self.distinct_2,
            "kl_to_ref": self.kl_to_ref,
            "kl_to_ref_se": self.kl_to_ref_se,
            "per_prompt_correct": self.per_prompt_correct,
        }
        d.update({f"pass@{k}": v for k, v in self.pass_at.items()})  # flat keys, for quick lookups
        return d


@torch.no_grad()
def evaluate(
    model,
    tokenizer,
    task: Task,
    examples: list[Example],
    samples: int,
    ks: list[int] | None,
    max_new_tokens: int,
    temperature: float = 1.0,
    seed: int = 0,
    greedy: bool = True,
    batch_prompts: int = 64,
    reference=None,
) -> EvalResult:
    """Sample ``samples`` completions per held-out example and measure them (see the module docstring).

    ``ks=None`` -> 1, 2, 4, ..., samples. ``reference`` (a model sharing the tokenizer) adds KL(pi || reference) of
    the tempered sampling distributions. Answers of truncated completions abstain from maj@k votes and diversity.
    """
    if not examples:
        raise TiltError("evaluation set is empty")
    ks = k_grid(samples) if ks is None else list(ks)
    bad = [k for k in ks if not 1 <= k <= samples]
    if bad:
        raise TiltError(f"pass@k needs 1 <= k <= samples ({samples}); got k={bad}")
    engine = HFEngine(model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    gen = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    correct_counts, rewards, greedy_hits, seq_logp, seq_ref_logp = [], [], [], [], []
    mean_at, maj_at = {k: [] for k in ks}, {k: [] for k in ks}
    diversity: dict[str, list[float]] = {"answers": [], "correct": [], "d1": [], "d2": []}
    ent_sum, tokens = 0.0, 0
    for i in range(0, len(examples), batch_prompts):
        chunk = examples[i : i + batch_prompts]
        ids = [tokenizer(e.prompt)["input_ids"] for e in chunk]
        out = engine.generate(ids, samples, max_new_tokens, temperature, gen)
        texts = decode_completions(tokenizer, out.completion_ids, out.completion_mask)
        scores = [task.score(chunk[r // samples], t, bool(f)) for r, (t, f) in enumerate(zip(texts, out.finished))]
        m = out.completion_mask
        ent_sum += float((out.entropy * m).sum())
        tokens += int(m.sum())
        if reference is not None:
            ref_lp, _ = sequence_logprobs(reference, out.prompt_ids, out.prompt_mask, out.completion_ids, m, temperature)
            seq_logp.append((out.sample_logprobs * m).sum(-1))
            seq_ref_logp.append((ref_lp * m).sum(-1))
        for j in range(len(chunk)):
            rows = range(j * samples, (j + 1) * samples)
            correct = [scores[r].correct for r in rows]
            answers = [scores[r].parsed if bool(out.finished[r]) and scores[r].parsed else None for r in rows]
            completions = [out.completion_ids[r][m[r].bool()].tolist() for r in rows]
            correct_counts.append(sum(correct))
            rewards.extend(scores[r].reward for r in rows)
            for k in ks:
                mean_at[k].append(mean_at_k(correct, k))
                maj_at[k].append(maj_at_k(answers, correct, k))
            diversity["answers"].append(distinct_answers(answers))
            diversity["correct"].append(distinct_answers(answers, correct))
            diversity["d1"].append(distinct_n(completions, 1))
            diversity["d2"].append(distinct_n(completions, 2))
        if greedy:
            g = engine.generate(ids, 1, max_new_tokens, 0.0)
            g_texts = decode_completions(tokenizer, g.completion_ids, g.completion_mask)
            greedy_hits.extend(task.score(e, t, bool(f)).correct for e, t, f in zip(chunk, g_texts, g.finished))
    kl, kl_se = monte_carlo_kl(torch.cat(seq_logp), torch.cat(seq_ref_logp)) if seq_logp else (None, None)
    return EvalResult(
        n_prompts=len(examples),
        samples=samples,
        pass_at={k: float(np.mean([pass_at_k(samples, c, k) for c in correct_counts])) for k in ks},
        mean_reward=float(np.mean(rewards)),
        greedy_accuracy=float(np.mean(greedy_hits)) if greedy else None,
        mean_at={k: float(np.mean(v)) for k, v in mean_at.items()},
        maj_at={k: float(np.mean(v)) for k, v in maj_at.items()},
        entropy=ent_sum / max(1, tokens),
        distinct_answers=float(np.mean(diversity["answers"])),
        distinct_correct_answers=float(np.mean(diversity["correct"])),
        distinct_1=float(np.mean(diversity["d1"])),
        distinct_2=float(np.mean(diversity["d2"])),
        kl_to_ref=kl,
        kl_to_ref_se=kl_se,
        per_prompt_correct=correct_counts,
    )

