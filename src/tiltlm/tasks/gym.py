"""Adapter for reasoning-gym procedural datasets, scored with each dataset's own ``score_answer``.

reasoning-gym questions are English sentences meant for large models. A character-level model with a 64-token
context cannot read them, so for datasets whose metadata holds the problem in structured form we build a compact
prompt (``"4-1-7="``, ``"gcd(780,461)="``); other datasets keep the original question. Only a full score (1.0)
counts as correct -- partial credit is reported as the reward but never as a solve.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tiltlm.errors import TiltError
from tiltlm.tasks.base import Example, Score, extract_answer, sample_from_pool


def _expression(entry: dict) -> str:
    return entry["metadata"]["expression"].replace(" ", "") + "="


def _numbers(fn: str) -> Callable[[dict], str]:
    return lambda entry: f"{fn}({','.join(map(str, entry['metadata']['numbers']))})="


COMPACT_PROMPTS: dict[str, Callable[[dict], str]] = {
    "basic_arithmetic": _expression,
    "chain_sum": _expression,
    "products": _expression,
    "gcd": _numbers("gcd"),
    "lcm": _numbers("lcm"),
    "spell_backward": lambda e: f"rev({e['metadata']['word']})=",
    "count_bits": lambda e: f"bits({e['metadata']['number']})=",
}


@dataclass
class ReasoningGymTask:
    """``dataset`` is a reasoning-gym name (e.g. ``chain_sum``); ``options`` go to ``create_dataset``."""

    dataset: str
    size: int = 2000
    heldout_size: int = 200
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    compact: bool = True
    name: str = "reasoning_gym"

    def __post_init__(self) -> None:
        import reasoning_gym  # lazy: importing it pulls in many generators

        known = sorted(reasoning_gym.factory.DATASETS)
        if self.dataset not in known:
            import difflib

            close = difflib.get_close_matches(self.dataset, known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise TiltError(f"unknown reasoning-gym dataset '{self.dataset}'{hint}")
        try:
            train = reasoning_gym.create_dataset(self.dataset, size=self.size, seed=self.seed, **self.options)
            held = reasoning_gym.create_dataset(
                self.dataset, size=self.heldout_size, seed=self.seed + 1_000_003, **self.options
            )
        except (TypeError, ValueError, AssertionError) as e:
            raise TiltError(f"reasoning-gym dataset '{self.dataset}' rejected task.options: {e}") from None
        self._scorer = train
        fmt = COMPACT_PROMPTS.get(self.dataset) if self.compact else None

        def to_ex(e: dict) -> Example:
            return Example(fmt(e) if fmt else e["question"], str(e["answer"]), meta={"entry": e})

        self._heldout = [to_ex(e) for e in held]
        held_prompts = {ex.prompt for ex in self._heldout}
        # Disjoint splits: drop any training item whose prompt also appears in the held-out set.
        self._train = [ex for ex in map(to_ex, train) if ex.prompt not in held_prompts]
        if not self._train:
            raise TiltError(f"reasoning-gym dataset '{self.dataset}': no training examples (task.size={self.size})")

    def sample_train(self, rng: random.Random, n: int) -> list[Example]:
        return sample_from_pool(self._train, rng, n)

    def heldout(self, n: int) -> list[Example]:
        return self._heldout[:n]

    def score(self, example: Example, completion: str, finished: bool) -> Score:
        parsed = extract_answer(completion)
        reward = float(self._scorer.score_answer(parsed, example.meta["entry"])) if finished else 0.0
        return Score(reward, reward >= 1.0, parsed)
