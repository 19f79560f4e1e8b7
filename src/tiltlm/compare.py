"""Base vs tuned: did RL expand or shrink the reasoning boundary, and what did it forget?

- ``compare``: both models sampled on the same held-out prompts with the same seed; pass@k curves over
  k = 1, 2, 4, ..., n with their crossover (Yue et al. 2025: the base overtaking RL at large k means RL narrowed
  coverage), the empirical support change (Wu et al. 2025, "The Invisible Leash": prompts solved at least once by
  one model and never by the other), and per-prompt success rates for a scatter plot.
- ``forgetting_rows``: held-out task *families not trained on*, evaluated before and after training; the change in
  mean success rate with its paired standard error over prompts ("Beyond Reasoning Gains" measures forgetting on
  held-out benchmarks the same way).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tiltlm.atomic import write_atomic
from tiltlm.config import TaskConfig, _build
from tiltlm.errors import TiltError
from tiltlm.evaluate import EvalResult, evaluate
from tiltlm.metrics import crossover_k, paired_change, support_counts
from tiltlm.tasks import Task, build_task


def parse_family(spec: str | dict, where: str) -> TaskConfig:
    """A task family as a mapping of task.* keys; a string is read as a YAML flow mapping
    (``"{name: reasoning_gym, dataset: chain_sum}"``) or a bare task name."""
    if isinstance(spec, str):
        try:
            loaded = yaml.safe_load(spec)
        except yaml.YAMLError as e:
            raise TiltError(f"{where}: '{spec}' is not a YAML mapping: {str(e).splitlines()[0]}") from None
        spec = loaded if isinstance(loaded, dict) else {"name": spec}
    if not isinstance(spec, dict):
        raise TiltError(f"{where}: expected a task mapping like {{name: reasoning_gym, dataset: chain_sum}}, got {spec!r}")
    return _build(TaskConfig, spec, f"{where}.")


def family_label(c: TaskConfig) -> str:
    """A short, stable name: the fields that differ from the task defaults."""
    default = TaskConfig()
    parts = [f"{k}={v}" for k, v in vars(c).items() if k != "name" and v != getattr(default, k)]
    return c.name + (f"({', '.join(parts)})" if parts else "")


def build_families(specs: list, where: str = "eval.forgetting") -> list[tuple[str, Task]]:
    families = []
    for i, spec in enumerate(specs):
        c = parse_family(spec, f"{where}[{i}]")
        families.append((family_label(c), build_task(c)))
    return families


def success_rates(result: EvalResult) -> list[float]:
    return [c / result.samples for c in result.per_prompt_correct]


def evaluate_families(model, tokenizer, families: list[tuple[str, Task]], prompts: int, samples: int,
                      max_new_tokens: int, temperature: float = 1.0, seed: int = 0) -> dict[str, list[float]]:
    """Per-prompt success rates of ``model`` on each family's first ``prompts`` held-out examples (seeded)."""
    out = {}
    for label, task in families:
        examples = task.heldout(prompts)
        if not examples:
            raise TiltError(f"forgetting family '{label}' has no held-out examples")
        r = evaluate(model, tokenizer, task, examples, samples, [1], max_new_tokens, temperature, seed, greedy=False)
        out[label] = success_rates(r)
    return out


def forgetting_rows(before: dict[str, list[float]], after: dict[str, list[float]]) -> list[dict[str, Any]]:
    """One row per family: mean success rate before ('base') and after ('tuned'), change and its standard error."""
    rows = []
    for label, b in before.items():
        change, se = paired_change(b, after[label])
        rows.append({"family": label, "prompts": len(b), "base": sum(b) / len(b), "tuned": sum(after[label]) / len(b),
                     "change": change, "se": se})
    return rows


@dataclass
class Comparison:
    base: EvalResult
    tuned: EvalResult
    ks: list[int]
    crossover: int | None
    support: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "ks": self.ks,
            "pass_at": {"base": [self.base.pass_at[k] for k in self.ks], "tuned": [self.tuned.pass_at[k] for k in self.ks]},
            "crossover_k": self.crossover,
            "support": self.support,
            "success_rate": {"base": success_rates(self.base), "tuned": success_rates(self.tuned)},
            "base": self.base.as_dict(),
            "tuned": self.tuned.as_dict(),
        }


def compare(base_model, tuned_model, tokenizer, task: Task, examples: list, samples: int, max_new_tokens: int,
            temperature: float = 1.0, seed: int = 0) -> Comparison:
    """Evaluate both models on the same prompts with the same seed, on k = 1, 2, 4, ..., samples; the tuned
    model's KL to the base comes with it."""
    base = evaluate(base_model, tokenizer, task, examples, samples, None, max_new_tokens, temperature, seed)
    tuned = evaluate(tuned_model, tokenizer, task, examples, samples, None, max_new_tokens, temperature, seed,
                     reference=base_model)
    ks = list(base.pass_at)
    cross = crossover_k(ks, [base.pass_at[k] for k in ks], [tuned.pass_at[k] for k in ks])
    return Comparison(base, tuned, ks, cross, support_counts(base.per_prompt_correct, tuned.per_prompt_correct))


def plot_comparison(cmp: Comparison, out_dir: Path, names: tuple[str, str] = ("base", "tuned")) -> list[Path]:
    """pass@k curves side by side and the per-prompt success-rate scatter, as PNG files."""
    from tiltlm.report import figure, pass_at_k_plot, png_bytes

    out_dir.mkdir(parents=True, exist_ok=True)
    curves = {name: r.pass_at for name, r in zip(names, (cmp.base, cmp.tuned))}
    write_atomic(out_dir / "passk.png",
                 pass_at_k_plot(curves, f"pass@k, {cmp.base.n_prompts} held-out prompts", cmp.crossover))
    fig, ax = figure("per-prompt success rate", f"{names[0]} success rate", f"{names[1]} success rate")
    fig.set_size_inches(4.5, 4.5)
    ax.scatter(success_rates(cmp.base), success_rates(cmp.tuned), s=12, alpha=0.5)
    ax.plot([0, 1], [0, 1], color="grey", ls=":")
    ax.set(xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
    write_atomic(out_dir / "scatter.png", png_bytes(fig))
    return [out_dir / "passk.png", out_dir / "scatter.png"]
