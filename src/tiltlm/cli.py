"""The ``tiltlm`` command line: quickstart | pretrain | train | eval | algorithms | config.

Bad input is reported as one line (``tiltlm: error: ...``) with exit code 2 and no traceback; set TILTLM_DEBUG=1
to see the traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from tiltlm.errors import TiltError

QUICKSTART_OVERRIDES: list[str] = []  # the dataclass defaults *are* the quickstart recipe


def _split_config_args(args: list[str]) -> tuple[str | None, list[str]]:
    """``[cfg.yaml] [key=value ...]`` -> (config path or None, overrides)."""
    path, overrides = None, []
    for a in args:
        if "=" in a:
            overrides.append(a)
        elif path is None:
            path = a
        else:
            raise TiltError(f"unexpected argument '{a}' (overrides look like section.key=value)")
    return path, overrides


def _console():
    from rich.console import Console

    return Console()


def cmd_train(ns: argparse.Namespace) -> int:
    from tiltlm.config import load_config
    from tiltlm.trainer import train

    path, overrides = _split_config_args(ns.args)
    cfg = load_config(path, overrides)
    result = train(cfg)
    _print_before_after(result)
    print(f"run directory: {result.run_dir}")
    return 0


def _print_before_after(result) -> None:
    from rich.table import Table

    if result.final_eval is None:
        return
    table = Table(title=f"held-out ({result.final_eval.n_prompts} prompts x {result.final_eval.samples} samples)")
    table.add_column("metric")
    cols = [("base", result.base_eval), ("tuned", result.final_eval)] if result.base_eval else [("tuned", result.final_eval)]
    for name, _ in cols:
        table.add_column(name, justify="right")
    if result.base_eval:
        table.add_column("change", justify="right")
    rows = [(f"pass@{k}", lambda r, k=k: r.pass_at[k]) for k in result.final_eval.pass_at]
    rows += [("mean reward", lambda r: r.mean_reward), ("greedy accuracy", lambda r: r.greedy_accuracy)]
    for label, get in rows:
        vals = [get(r) for _, r in cols]
        cells = [f"{v:.3f}" for v in vals]
        if result.base_eval:
            cells.append(f"{(vals[1] - vals[0]) * 100:+.1f} pts")
        table.add_row(label, *cells)
    _console().print(table)


def cmd_quickstart(ns: argparse.Namespace) -> int:
    from tiltlm.config import load_config
    from tiltlm.run import write_atomic
    from tiltlm.trainer import train

    cfg = load_config(None, QUICKSTART_OVERRIDES + list(ns.overrides))
    t0 = time.perf_counter()
    print(
        f"tiltlm quickstart: GRPO on the embedded {cfg.task.name} base "
        f"({cfg.train.steps} steps x {cfg.rollout.prompts_per_step} prompts x {cfg.rollout.samples_per_prompt} samples, "
        f"{cfg.runtime.threads} thread(s))"
    )
    result = train(cfg)
    wall = time.perf_counter() - t0
    _print_before_after(result)
    summary = {
        "wall_seconds": wall,
        "train_seconds": result.train_seconds,
        "steps": result.steps,
        "base": result.base_eval.as_dict() if result.base_eval else None,
        "tuned": result.final_eval.as_dict() if result.final_eval else None,
    }
    write_atomic(Path(result.run_dir) / "quickstart.json", json.dumps(summary, indent=2))
    print(f"wall time {wall:.0f}s (training {result.train_seconds:.0f}s)")
    print(f"run directory: {result.run_dir}  (final model: {result.run_dir}/final)")
    return 0


def cmd_pretrain(ns: argparse.Namespace) -> int:
    from tiltlm.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(steps=ns.steps, seed=ns.seed, threads=ns.threads)
    pretrain(cfg, ns.out)
    print(f"saved model to {ns.out}")
    return 0


def _parse_ks(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise TiltError(f"--k expects comma-separated integers, got '{text}'") from None
    if not ks:
        raise TiltError("--k needs at least one value")
    return ks


def cmd_eval(ns: argparse.Namespace) -> int:
    import torch
    from rich.table import Table

    from tiltlm.config import TaskConfig, _build, parse_override
    from tiltlm.evaluate import evaluate
    from tiltlm.models import load_model_and_tokenizer
    from tiltlm.run import write_atomic
    from tiltlm.tasks import build_task

    ks = _parse_ks(ns.k)
    if any(k > ns.samples or k < 1 for k in ks):
        raise TiltError(f"--k values must be in 1..--samples ({ns.samples}), got {ks}")
    task_fields: dict = {"name": ns.task}
    for text in ns.task_options:
        key, value = parse_override(text)
        task_fields[key.removeprefix("task.")] = value
    task = build_task(_build(TaskConfig, task_fields, "task."))
    torch.set_num_threads(ns.threads)
    examples = task.heldout(ns.prompts)
    if not examples:
        raise TiltError(f"task '{ns.task}' has no held-out examples")
    model, tokenizer = load_model_and_tokenizer(ns.model)
    result = evaluate(model, tokenizer, task, examples, ns.samples, ks, ns.max_new_tokens, ns.temperature, seed=ns.seed)
    table = Table(title=f"{ns.model} on {ns.task}: {result.n_prompts} held-out prompts x {ns.samples} samples")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in result.pass_at.items():
        table.add_row(f"pass@{k}", f"{v:.4f}")
    table.add_row("mean reward", f"{result.mean_reward:.4f}")
    table.add_row("greedy accuracy", f"{result.greedy_accuracy:.4f}")
    _console().print(table)
    out = {"model": ns.model, "task": task_fields, "temperature": ns.temperature, "seed": ns.seed, **result.as_dict()}
    write_atomic(Path(ns.json_out), json.dumps(out, indent=2))
    print(f"wrote {ns.json_out}")
    return 0


def cmd_algorithms(ns: argparse.Namespace) -> int:
    from tiltlm.advantages import ADVANTAGES
    from tiltlm.objectives import AGGREGATIONS, KL_ESTIMATORS, OBJECTIVES, SURROGATES
    from tiltlm.shaping import SHAPINGS

    print("objectives (objective.name):")
    for name, (_, desc) in OBJECTIVES.items():
        print(f"  {name:20s} {desc}")
    print("advantages (advantage.name):")
    for name, fn in ADVANTAGES.items():
        print(f"  {name:20s} {(fn.__doc__ or '').strip().splitlines()[0]}")
    print(f"surrogates (objective.surrogate): {', '.join(SURROGATES)}")
    print(f"aggregations (objective.aggregation): {', '.join(AGGREGATIONS)}")
    print(f"reward shaping (shaping.names): {', '.join(SHAPINGS)}")
    print(f"KL estimators (objective.kl_estimator): {', '.join(KL_ESTIMATORS)}")
    return 0


def cmd_bench(ns: argparse.Namespace) -> int:
    """Run ``benchmarks/<name>.py`` from a source checkout (benchmarks are not part of the installed package)."""
    import runpy

    candidates = [Path.cwd() / "benchmarks", Path(__file__).resolve().parents[2] / "benchmarks"]
    for folder in candidates:
        script = folder / f"{ns.name}.py"
        if script.is_file():
            sys.argv = [str(script), *ns.bench_args]
            runpy.run_path(str(script), run_name="__main__")
            return 0
    available = sorted({p.stem for f in candidates if f.is_dir() for p in f.glob("*.py")})
    raise TiltError(f"unknown benchmark '{ns.name}' (available: {', '.join(available) or 'none; run from a checkout'})")


def cmd_config(ns: argparse.Namespace) -> int:
    from tiltlm.config import describe

    for key, default, doc in describe():
        print(f"{key:34s} {default:22s} {doc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from tiltlm.pretrain import PretrainConfig

    p = argparse.ArgumentParser(prog="tiltlm", description="Fine-tune language models toward a target distribution.")
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quickstart", help="GRPO on the embedded base for a few minutes; base vs tuned pass@k")
    q.add_argument("overrides", nargs="*", help="section.key=value overrides")
    q.set_defaults(fn=cmd_quickstart)

    t = sub.add_parser("train", help="train from a YAML config plus section.key=value overrides")
    t.add_argument("args", nargs="*", metavar="[CONFIG.yaml] [key=value ...]")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="pass@k (unbiased), mean reward and greedy accuracy on held-out prompts")
    e.add_argument("model", help="'embedded' or a local Hugging Face model directory")
    e.add_argument("--task", default="arithmetic", help="task name (arithmetic | jsonl | reasoning_gym)")
    e.add_argument("task_options", nargs="*", help="task options, e.g. task.path=data.jsonl task.max_digits=2")
    e.add_argument("--samples", type=int, default=64)
    e.add_argument("--k", default="1,4,16,64")
    e.add_argument("--prompts", type=int, default=200)
    e.add_argument("--max-new-tokens", type=int, default=8)
    e.add_argument("--temperature", type=float, default=1.0)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--json-out", default="eval.json")
    e.set_defaults(fn=cmd_eval)

    pt = sub.add_parser("pretrain", help="(re)build the embedded base model by supervised learning on a+b")
    pt.add_argument("--out", required=True)
    pt.add_argument("--steps", type=int, default=PretrainConfig.steps)
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--threads", type=int, default=1)
    pt.set_defaults(fn=cmd_pretrain)

    a = sub.add_parser("algorithms", help="list registered objectives, advantages, aggregations")
    a.set_defaults(fn=cmd_algorithms)
    b = sub.add_parser("bench", help="run a benchmark from benchmarks/ (posterior, quickstart_seeds, ...)")
    b.add_argument("name")
    b.add_argument("bench_args", nargs=argparse.REMAINDER)
    b.set_defaults(fn=cmd_bench)
    c = sub.add_parser("config", help="list every config key with its default and doc")
    c.set_defaults(fn=cmd_config)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    ns, extra = parser.parse_known_args(argv)
    if extra:  # key=value task options may come after --flags (argparse cannot intermix positionals)
        if ns.command == "eval" and all("=" in e and not e.startswith("-") for e in extra):
            ns.task_options += extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return ns.fn(ns)
    except TiltError as e:
        if os.environ.get("TILTLM_DEBUG"):
            raise
        print(f"tiltlm: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tiltlm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
