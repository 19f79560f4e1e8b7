"""Live progress: a rich bar on a terminal; plain periodic lines otherwise (CI logs, pipes)."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def _fmt(v, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def summary(m: dict, eval_pass1: float | None) -> str:
    kl = next((v for k, v in m.items() if k.startswith("kl/")), None)
    return (
        f"reward {_fmt(m.get('rollout/reward'), '.3f')}  pass@1 {_fmt(m.get('rollout/pass@1'), '.3f')}  "
        f"eval {_fmt(eval_pass1, '.3f')}  KL {_fmt(kl, '.4f')}  H {_fmt(m.get('rollout/entropy'), '.3f')}  "
        f"len {_fmt(m.get('rollout/response_len'), '.1f')}  tok/s {_fmt(m.get('perf/tokens_per_s'), '.0f')}"
    )


class TrainProgress:
    def __init__(self, total: int, enabled: bool = True, console: Console | None = None):
        self.total, self.enabled = total, enabled
        self.console = console or Console(stderr=True)
        self.live = enabled and self.console.is_terminal
        self.eval_pass1: float | None = None
        self.step = 0

    def __enter__(self) -> TrainProgress:
        if self.live:
            self.bar = Progress(
                TextColumn("[bold]step"), MofNCompleteColumn(), BarColumn(bar_width=20),
                TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                console=self.console,
            )
            self.bar.start()
            self.task = self.bar.add_task("train", total=self.total, stats="")
        return self

    def advance(self, metrics: dict) -> None:
        self.step += 1
        if "eval/pass@1" in metrics:
            self.eval_pass1 = metrics["eval/pass@1"]
        text = summary(metrics, self.eval_pass1)
        if self.live:
            self.bar.update(self.task, advance=1, stats=text)
        elif self.enabled and (self.step % max(1, self.total // 10) == 0 or self.step == self.total):
            self.console.print(f"step {self.step}/{self.total}  {text}", highlight=False, soft_wrap=True)

    def __exit__(self, *exc) -> None:
        if self.live:
            self.bar.stop()
