"""A task read from JSON Lines: one ``{"prompt": ..., "answer": ...}`` object per line.

Optional per-line keys: ``"solution"`` (a reference solution). Held-out examples come from ``heldout_path`` when
given, otherwise a fixed hash-chosen fraction of the file (so the split never changes between runs).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from tiltlm.errors import TiltError
from tiltlm.tasks.base import Example, Score, exact_score, sample_from_pool


def read_jsonl(path: str | Path) -> list[Example]:
    """Parse and validate a JSONL file; any bad line is a TiltError naming ``file:line`` and the problem."""
    p = Path(path)
    if not p.is_file():
        raise TiltError(f"task file not found: {path}")
    examples = []
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise TiltError(f"{where}: invalid JSON ({e.msg})") from None
            if not isinstance(obj, dict):
                raise TiltError(f"{where}: expected a JSON object with keys 'prompt' and 'answer'")
            for key in ("prompt", "answer"):
                if key not in obj:
                    raise TiltError(f"{where}: missing key '{key}'")
            if not isinstance(obj["prompt"], str) or not obj["prompt"]:
                raise TiltError(f"{where}: 'prompt' must be a non-empty string")
            if not isinstance(obj["answer"], (str, int, float)) or isinstance(obj["answer"], bool):
                raise TiltError(f"{where}: 'answer' must be a string or a number")
            examples.append(Example(obj["prompt"], str(obj["answer"]), solution=obj.get("solution")))
    if not examples:
        raise TiltError(f"{path}: empty dataset (no examples)")
    return examples


def _hash_unit(text: str) -> float:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") / 2**64


@dataclass
class JsonlTask:
    path: str
    heldout_path: str | None = None
    heldout_fraction: float = 0.1
    name: str = "jsonl"
    _train: list[Example] = field(init=False, repr=False)
    _heldout: list[Example] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        examples = read_jsonl(self.path)
        if self.heldout_path:
            self._train, self._heldout = examples, read_jsonl(self.heldout_path)
        else:
            held = [_hash_unit(e.prompt) < self.heldout_fraction for e in examples]
            self._train = [e for e, h in zip(examples, held) if not h]
            self._heldout = [e for e, h in zip(examples, held) if h]
            if not self._heldout:  # tiny files: keep the last example out rather than evaluate on nothing
                self._train, self._heldout = examples[:-1], examples[-1:]
        if not self._train:
            raise TiltError(f"{self.path}: no training examples left after the held-out split")

    def sample_train(self, rng: random.Random, n: int) -> list[Example]:
        return sample_from_pool(self._train, rng, n)

    def heldout(self, n: int) -> list[Example]:
        return self._heldout[:n]

    def score(self, example: Example, completion: str, finished: bool) -> Score:
        return exact_score(example, completion, finished)
