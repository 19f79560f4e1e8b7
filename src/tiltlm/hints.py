"""Hint scaffolding for prompts whose whole group fails (GHPO, Liu et al. 2025, arXiv 2507.10628 -- summary level).

A group with every reward 0 carries no gradient. Its prompt is re-posed with a *prefix of the reference solution*
appended (ratio omega, raised stage by stage while the group still fails), the group is regenerated, and the hinted
group replaces it. The hint is part of the prompt, so it carries no loss; the verifier scores hint + continuation.
The omega schedule (0.25, 0.5, 0.75 by default) is the spec's "typical choice", not a confirmed GHPO setting.
Tasks provide ``Example.solution``; the arithmetic task's solution is its answer, so its hints are leading digits.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace

from tiltlm.tasks.base import Example


def solution_units(solution: str) -> list[str]:
    """Sentences when the solution has several (split after . ! ? and a space), otherwise characters."""
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", solution.strip()) if s]
    return [s + " " for s in sentences[:-1]] + sentences[-1:] if len(sentences) > 1 else list(solution)


def hint_prefix(solution: str, omega: float) -> str:
    """The first floor(omega * n) units of the solution (at least one unit for omega > 0, never the whole)."""
    units = solution_units(solution)
    k = min(len(units) - 1, max(1, math.floor(omega * len(units)))) if omega > 0 else 0
    return "".join(units[:k])


def hinted(example: Example, omega: float) -> tuple[Example, str]:
    """(the example with the hint appended to its prompt, the hint) -- no hint if the task has no solution."""
    if not example.solution:
        return example, ""
    hint = hint_prefix(example.solution, omega)
    return replace(example, prompt=example.prompt + hint), hint
