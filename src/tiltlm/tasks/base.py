"""The Task interface: prompts with ground truth, and a verifier that scores completions.

A task owns two disjoint pools of examples -- ``train`` (sampled for rollouts) and ``heldout`` (for evaluation) --
and one ``score`` method. Scores are 0/1 with the parsed answer kept for diagnostics (maj@k, diversity).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class Example:
    """One prompt and its ground truth. ``meta`` carries what a verifier needs beyond the answer string."""

    prompt: str
    answer: str
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)
    solution: str | None = None  # a reference solution, when the task has one (hint scaffolding, SFT)


@dataclass(frozen=True)
class Score:
    reward: float
    correct: bool
    parsed: str | None


class Task(Protocol):
    name: str

    def sample_train(self, rng: random.Random, n: int) -> list[Example]:
        """``n`` training prompts, drawn with ``rng`` (the trainer owns and checkpoints the rng)."""
        ...

    def heldout(self, n: int) -> list[Example]:
        """The first ``n`` held-out examples: deterministic, disjoint from every training example."""
        ...

    def score(self, example: Example, completion: str, finished: bool) -> Score:
        """Score a decoded completion. ``finished`` is False when generation hit the length limit."""
        ...


def extract_answer(completion: str) -> str:
    """Default answer extraction: the text up to the first newline, stripped.

    Tiny char-level models answer directly; a completion that rambles past a newline is judged on its first line.
    """
    return completion.split("\n", 1)[0].strip()


def answers_match(parsed: str, truth: str) -> bool:
    """Exact string match, or numeric match when both sides parse as numbers (``"3.0"`` == ``"3"``)."""
    if parsed == truth:
        return True
    try:
        a, b = float(parsed), float(truth)
    except ValueError:
        return False
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= 1e-9 * max(1.0, abs(b))


def exact_score(example: Example, completion: str, finished: bool) -> Score:
    """Reward 1 iff generation ended (EOS) and the extracted answer matches the ground truth."""
    parsed = extract_answer(completion)
    correct = finished and answers_match(parsed, example.answer)
    return Score(float(correct), correct, parsed)


def sample_from_pool(pool: list[Example], rng: random.Random, n: int) -> list[Example]:
    """Draw ``n`` examples uniformly with replacement (pools may be smaller than a step's prompt count)."""
    return [pool[rng.randrange(len(pool))] for _ in range(n)]
