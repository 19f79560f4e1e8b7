"""Task registry: ``task.name`` in the config picks one of TASKS."""

from __future__ import annotations

from collections.abc import Callable

from tiltlm.config import TaskConfig
from tiltlm.errors import TiltError
from tiltlm.tasks.arithmetic import Arithmetic
from tiltlm.tasks.base import Example, Score, Task
from tiltlm.tasks.gym import ReasoningGymTask
from tiltlm.tasks.jsonl import JsonlTask


def _jsonl(c: TaskConfig) -> Task:
    if not c.path:
        raise TiltError("task 'jsonl' needs task.path=FILE.jsonl")
    return JsonlTask(c.path, heldout_path=c.heldout_path)


def _gym(c: TaskConfig) -> Task:
    if not c.dataset:
        raise TiltError("task 'reasoning_gym' needs task.dataset=NAME (e.g. chain_sum)")
    return ReasoningGymTask(c.dataset, size=c.size, options=dict(c.options))


TASKS: dict[str, Callable[[TaskConfig], Task]] = {
    "arithmetic": lambda c: Arithmetic(c.min_digits, c.max_digits),
    "jsonl": _jsonl,
    "reasoning_gym": _gym,
}


def build_task(c: TaskConfig) -> Task:
    if c.name not in TASKS:
        raise TiltError(f"unknown task '{c.name}' (valid: {', '.join(TASKS)})")
    return TASKS[c.name](c)


__all__ = ["TASKS", "Example", "Score", "Task", "build_task"]
