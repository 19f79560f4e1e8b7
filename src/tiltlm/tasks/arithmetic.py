"""Procedural addition: ``"a+b="`` -> the sum written least-significant digit first.

Writing the sum reversed lets a left-to-right model emit each digit after seeing the carries it depends on, so a
0.5M-parameter model learns it partially in a minute -- the regime where RL has something to sharpen.
The train/held-out split is by a hash of the operand pair, so the two are disjoint for every difficulty setting.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from tiltlm.errors import TiltError
from tiltlm.tasks.base import Example, Score, exact_score


def _is_heldout(a: int, b: int, fraction: float) -> bool:
    h = hashlib.blake2b(f"{a}+{b}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64 < fraction


@dataclass
class Arithmetic:
    """a+b with operands of ``min_digits``..``max_digits`` digits (the difficulty knob)."""

    min_digits: int = 1
    max_digits: int = 3
    heldout_fraction: float = 0.1
    reverse: bool = True
    name: str = "arithmetic"

    def __post_init__(self) -> None:
        if not 1 <= self.min_digits <= self.max_digits <= 9:
            raise TiltError(
                f"task digits must satisfy 1 <= min_digits <= max_digits <= 9, got {self.min_digits}..{self.max_digits}"
            )
        if not 0.0 < self.heldout_fraction < 1.0:
            raise TiltError(f"task.heldout_fraction must be in (0, 1), got {self.heldout_fraction}")

    def _operand(self, rng: random.Random) -> int:
        d = rng.randint(self.min_digits, self.max_digits)
        lo = 0 if d == 1 else 10 ** (d - 1)
        return rng.randint(lo, 10**d - 1)

    def make(self, a: int, b: int) -> Example:
        s = str(a + b)
        answer = s[::-1] if self.reverse else s
        return Example(prompt=f"{a}+{b}=", answer=answer, solution=answer)  # the digits are the whole solution

    def _draw(self, rng: random.Random, heldout: bool) -> Example:
        while True:
            a, b = self._operand(rng), self._operand(rng)
            if _is_heldout(a, b, self.heldout_fraction) == heldout:
                return self.make(a, b)

    def sample_train(self, rng: random.Random, n: int) -> list[Example]:
        return [self._draw(rng, heldout=False) for _ in range(n)]

    def heldout(self, n: int) -> list[Example]:
        """``n`` distinct held-out problems (fewer if the difficulty setting has fewer), in a fixed order."""
        rng = random.Random(f"heldout-{self.min_digits}-{self.max_digits}")
        seen: dict[str, Example] = {}
        for _ in range(200 * n):
            ex = self._draw(rng, heldout=True)
            seen.setdefault(ex.prompt, ex)
            if len(seen) == n:
                break
        return list(seen.values())

    def score(self, example: Example, completion: str, finished: bool) -> Score:
        return exact_score(example, completion, finished)
