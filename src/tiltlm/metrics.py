"""Estimators for what RL did to a model: pass@k, mean@k, maj@k, diversity, Monte-Carlo KL, support, crossover.

Pure functions on counts, answers and log-probabilities -- no model in here -- so each has a golden test.
Definitions follow shared/specs/rlvr.md section 12.

- pass@k (Chen et al. 2021, "Evaluating Large Language Models Trained on Code"): unbiased, from n >= k samples.
- mean@k (DAPO's avg@k) and maj@k (Wang et al. 2023, self-consistency; Lewkowycz et al. 2022, Minerva): computed on
  the n // k disjoint blocks of k consecutive samples and averaged, so every drawn sample counts and the estimate
  is unbiased for k i.i.d. samples.
- Reasoning boundary / support (Yue et al. 2025, "Does RL really incentivize reasoning capacity ...";
  Wu et al. 2025, "The Invisible Leash"): pass@k curves of base vs tuned, their crossover, and the prompts each model
  solves at least once that the other never does.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np
import torch


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with ``n`` samples, ``c`` correct: 1 - C(n-c, k) / C(n, k), computed in the
    stable product form 1 - prod_{i=n-c+1}^{n} (1 - k/i)."""
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"pass@{k} needs 1 <= k <= n samples, got n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def k_grid(n: int) -> list[int]:
    """1, 2, 4, ... up to n (n itself included even when it is not a power of two)."""
    if n < 1:
        raise ValueError(f"need n >= 1 samples, got {n}")
    ks = [1 << i for i in range(n.bit_length()) if (1 << i) <= n]
    return ks if ks[-1] == n else [*ks, n]


def _blocks(n: int, k: int) -> list[range]:
    if not 1 <= k <= n:
        raise ValueError(f"@{k} needs 1 <= k <= n samples, got n={n}")
    return [range(b * k, (b + 1) * k) for b in range(n // k)]


def mean_at_k(correct: Sequence[bool], k: int) -> float:
    """Mean accuracy of k samples (avg@k), averaged over the n // k disjoint blocks of k consecutive samples."""
    return float(np.mean([np.mean([bool(correct[i]) for i in blk]) for blk in _blocks(len(correct), k)]))


def majority_vote(answers: Sequence[str | None]) -> int | None:
    """Index of the sample whose answer wins the vote, or None when no sample gave an answer.

    ``None`` answers (unparsed or truncated) abstain. Ties between equally frequent answers go to the answer that
    appears *first* in sample order -- deterministic and independent of answer text.
    """
    counts = Counter(a for a in answers if a is not None)
    if not counts:
        return None
    best = max(counts.values())
    return next(i for i, a in enumerate(answers) if a is not None and counts[a] == best)


def maj_at_k(answers: Sequence[str | None], correct: Sequence[bool], k: int) -> float:
    """maj@k: 1 when the majority answer of k samples is correct (scored once), averaged over the n // k disjoint
    blocks. ``correct[i]`` is the verifier's verdict on sample i, so the winner is scored like any sample."""
    if len(answers) != len(correct):
        raise ValueError("answers and correct must have the same length")
    hits = []
    for blk in _blocks(len(answers), k):
        winner = majority_vote([answers[i] for i in blk])
        hits.append(winner is not None and bool(correct[blk[winner]]))
    return float(np.mean(hits))


def distinct_answers(answers: Sequence[str | None], correct: Sequence[bool] | None = None) -> int:
    """Number of distinct given answers (``None`` excluded); with ``correct``, distinct *correct* answers."""
    keep = (a for i, a in enumerate(answers) if a is not None and (correct is None or correct[i]))
    return len(set(keep))


def distinct_n(sequences: Sequence[Sequence[int]], n: int) -> float:
    """distinct-n (Li et al. 2016): distinct n-grams / total n-grams over a set of sequences (0 when there are none).
    1.0 = no n-gram repeats anywhere; low = the samples say the same thing."""
    grams = [tuple(s[i : i + n]) for s in sequences for i in range(len(s) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def monte_carlo_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> tuple[float, float]:
    """KL(p || ref) = E_{y~p}[log p(y) - log ref(y)] from sequence log-probs of samples y ~ p: (mean, standard error).

    The per-sample log-ratio is unbiased for the KL (it can be negative; its mean cannot be, in expectation)."""
    d = (logp - ref_logp).double().flatten()
    if d.numel() < 2:
        raise ValueError("the Monte-Carlo KL needs at least 2 samples for a standard error")
    return float(d.mean()), float(d.std() / math.sqrt(d.numel()))


def crossover_k(ks: Sequence[int], base: Sequence[float], tuned: Sequence[float]) -> int | None:
    """The smallest k at which the sign of (tuned - base) pass@k differs from its sign at the first k -- e.g. RL
    wins at k = 1 but the base wins from this k on (coverage narrowed). None when the order never flips."""
    signs = [np.sign(t - b) for b, t in zip(base, tuned)]
    first = next((s for s in signs if s != 0), 0)
    return next((k for k, s in zip(ks, signs) if s == -first and s != 0), None)


def support_counts(base_correct: Sequence[int], tuned_correct: Sequence[int]) -> dict[str, int]:
    """Per-prompt counts of correct samples -> the empirical support change (The Invisible Leash): prompts both
    models solve at least once ('preserved'), only the base ('shrunk'), only the tuned model ('expanded'),
    neither ('unsolved')."""
    if len(base_correct) != len(tuned_correct):
        raise ValueError("base and tuned must be evaluated on the same prompts")
    pairs = [(b > 0, t > 0) for b, t in zip(base_correct, tuned_correct)]
    return {
        "preserved": sum(b and t for b, t in pairs),
        "shrunk": sum(b and not t for b, t in pairs),
        "expanded": sum(t and not b for b, t in pairs),
        "unsolved": sum(not b and not t for b, t in pairs),
    }


def paired_change(base_rates: Sequence[float], tuned_rates: Sequence[float]) -> tuple[float, float]:
    """Mean per-prompt change tuned - base and its standard error (paired over prompts; 0 SE for one prompt)."""
    d = np.asarray(tuned_rates, dtype=float) - np.asarray(base_rates, dtype=float)
    if d.size == 0:
        raise ValueError("no prompts")
    se = float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else 0.0
    return float(d.mean()), se
