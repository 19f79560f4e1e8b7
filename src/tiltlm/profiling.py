"""``tiltlm train --profile``: wall time per training phase, per step, so every millisecond has an owner.

Phases: generation (the sampler), scoring (decode + verifier + shaping), logprobs (reference / teacher / old-policy
forwards without grad), forward_backward, optimizer (clip + step + schedule), evaluation (held-out, periodic),
logging (metrics, progress bar), and other (selection, advantages, batching: the step's remainder).

Disabled, ``phase`` is a bare ``yield`` -- no clock, no synchronisation. On CUDA each phase boundary synchronises
the device, so the times are the phases' own and not the launch queue's.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import time
from collections.abc import Iterator

PHASES = ("generation", "scoring", "logprobs", "forward_backward", "optimizer", "evaluation", "logging", "other")


class PhaseTimer:
    def __init__(self, enabled: bool = False, cuda: bool = False):
        self.enabled, self.cuda = enabled, cuda
        self.steps: list[dict[str, float]] = []
        self._current: dict[str, float] = {}
        self._step_start = 0.0

    def _now(self) -> float:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
        return time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        t0 = self._now()
        try:
            yield
        finally:
            self._current[name] = self._current.get(name, 0.0) + self._now() - t0

    def start_step(self) -> None:
        if self.enabled:
            self._current, self._step_start = {}, self._now()

    def end_step(self) -> dict[str, float]:
        """Close the step: its phase times (``other`` = the remainder) as ``perf/<phase>_s`` metrics."""
        if not self.enabled:
            return {}
        total = self._now() - self._step_start
        self._current["other"] = max(0.0, total - sum(self._current.values()))
        self._current["total"] = total
        self.steps.append(self._current)
        return {f"perf/{name}_s": value for name, value in self._current.items() if name != "total"}

    def summary(self) -> dict:
        """Per phase over all steps: total seconds, median and mean milliseconds per step, share of the total."""
        total = sum(s["total"] for s in self.steps) or 1.0
        out = {}
        for name in PHASES:
            values = [s.get(name, 0.0) for s in self.steps]
            out[name] = {"total_s": sum(values), "median_ms": 1e3 * statistics.median(values) if values else 0.0,
                         "mean_ms": 1e3 * statistics.fmean(values) if values else 0.0, "share": sum(values) / total}
        return {"steps": len(self.steps), "total_s": sum(s["total"] for s in self.steps), "phases": out}

    def table(self) -> str:
        s = self.summary()
        lines = [f"profile over {s['steps']} steps, {s['total_s']:.2f} s in steps",
                 f"{'phase':18s} {'total s':>9s} {'median ms':>10s} {'mean ms':>9s} {'share':>7s}"]
        for name, p in s["phases"].items():
            lines.append(f"{name:18s} {p['total_s']:9.2f} {p['median_ms']:10.1f} {p['mean_ms']:9.1f} {p['share']:7.1%}")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({**self.summary(), "per_step": self.steps}, indent=1)
