"""The ``tiltlm`` command line: quickstart | pretrain | train | eval | compare | report | algorithms | config.

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

# The dataclass defaults are the quickstart recipe; on top, a forgetting probe: 1-digit two-term chain sums from
# reasoning-gym (incl. subtraction, never trained on; the base solves ~30% of them).
QUICKSTART_OVERRIDES: list[str] = [
    "eval.forgetting=[{name: reasoning_gym, dataset: chain_sum, "
    "options: {min_terms: 2, max_terms: 2, min_digits: 1, max_digits: 1}}]",
]


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
    cfg = load_config(path, overrides + (["train.profile=true"] if ns.profile else []))
    result = train(cfg)
    _print_before_after(result)
    if result.forgetting:
        _print_forgetting(result.forgetting)
    print(f"run directory: {result.run_dir}  (plots: tiltlm report {result.run_dir})")
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


def _print_forgetting(rows: list[dict]) -> None:
    for row in rows:
        print(f"forgetting {row['family']}: {row['base']:.3f} -> {row['tuned']:.3f} "
              f"({row['change'] * 100:+.1f} ± {row['se'] * 100:.1f} pts over {row['prompts']} prompts)")


def cmd_quickstart(ns: argparse.Namespace) -> int:
    from tiltlm.atomic import write_atomic
    from tiltlm.config import load_config
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
    if result.forgetting:
        summary["forgetting"] = result.forgetting
        _print_forgetting(result.forgetting)
    write_atomic(Path(result.run_dir) / "quickstart.json", json.dumps(summary, indent=2))
    print(f"wall time {wall:.0f}s (training {result.train_seconds:.0f}s)")
    print(f"run directory: {result.run_dir}  (final model: {result.run_dir}/final)")
    from tiltlm.report import build_report

    print(f"report: {build_report(result.run_dir)}")
    return 0


def cmd_pretrain(ns: argparse.Namespace) -> int:
    from tiltlm.pretrain import PretrainConfig, pretrain

    cfg = PretrainConfig(steps=ns.steps, seed=ns.seed, threads=ns.threads)
    pretrain(cfg, ns.out)
    print(f"saved model to {ns.out}")
    return 0


def _parse_ks(text: str, samples: int) -> list[int] | None:
    """``auto`` -> None (1, 2, 4, ..., samples); otherwise comma-separated integers in 1..samples."""
    if text == "auto":
        return None
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise TiltError(f"--k expects 'auto' or comma-separated integers, got '{text}'") from None
    if not ks:
        raise TiltError("--k needs at least one value")
    if any(k > samples or k < 1 for k in ks):
        raise TiltError(f"--k values must be in 1..--samples ({samples}), got {ks}")
    return ks


def _task_from_options(name: str, options: list[str]):
    from tiltlm.config import TaskConfig, _build, parse_override
    from tiltlm.tasks import build_task

    fields: dict = {"name": name}
    for text in options:
        key, value = parse_override(text)
        fields[key.removeprefix("task.")] = value
    return build_task(_build(TaskConfig, fields, "task.")), fields


def _heldout(task, name: str, prompts: int) -> list:
    examples = task.heldout(prompts)
    if not examples:
        raise TiltError(f"task '{name}' has no held-out examples")
    return examples


def cmd_eval(ns: argparse.Namespace) -> int:
    from rich.table import Table

    from tiltlm import cpu
    from tiltlm.atomic import write_atomic
    from tiltlm.evaluate import evaluate
    from tiltlm.models import load_model_and_tokenizer

    ks = _parse_ks(ns.k, ns.samples)
    if ns.batch_prompts < 1:
        raise TiltError(f"--batch-prompts must be >= 1, got {ns.batch_prompts}")
    task, task_fields = _task_from_options(ns.task, ns.task_options)
    cpu.configure(ns.threads)
    examples = _heldout(task, ns.task, ns.prompts)
    model, tokenizer = load_model_and_tokenizer(ns.model)
    reference = load_model_and_tokenizer(ns.reference)[0] if ns.reference else None
    r = evaluate(model, tokenizer, task, examples, ns.samples, ks, ns.max_new_tokens, ns.temperature, seed=ns.seed,
                 batch_prompts=ns.batch_prompts, reference=reference)
    table = Table(title=f"{ns.model} on {ns.task}: {r.n_prompts} held-out prompts x {ns.samples} samples")
    for col in ("k", "pass@k", "mean@k", "maj@k"):
        table.add_column(col, justify="right")
    for k in r.pass_at:
        table.add_row(str(k), f"{r.pass_at[k]:.4f}", f"{r.mean_at[k]:.4f}", f"{r.maj_at[k]:.4f}")
    _console().print(table)
    lines = [
        f"mean reward {r.mean_reward:.4f}   greedy accuracy {r.greedy_accuracy:.4f}   "
        f"mean token entropy {r.entropy:.4f} nats",
        f"per prompt: {r.distinct_answers:.2f} distinct answers, {r.distinct_correct_answers:.2f} distinct correct; "
        f"distinct-1 {r.distinct_1:.3f}, distinct-2 {r.distinct_2:.3f}",
    ]
    if r.kl_to_ref is not None:
        lines.append(f"KL(model || {ns.reference}) = {r.kl_to_ref:.4f} ± {r.kl_to_ref_se:.4f} nats per sequence (MC, 1 SE)")
    print("\n".join(lines))
    out = {"model": ns.model, "reference": ns.reference, "task": task_fields, "temperature": ns.temperature,
           "seed": ns.seed, **r.as_dict()}
    write_atomic(Path(ns.json_out), json.dumps(out, indent=2))
    print(f"wrote {ns.json_out}")
    return 0


def cmd_compare(ns: argparse.Namespace) -> int:
    from rich.table import Table

    from tiltlm import cpu
    from tiltlm.atomic import write_atomic
    from tiltlm.compare import build_families, compare, evaluate_families, forgetting_rows, plot_comparison
    from tiltlm.models import load_model_and_tokenizer

    task, task_fields = _task_from_options(ns.task, ns.task_options)
    families = build_families(ns.family, "--family")
    cpu.configure(ns.threads)
    examples = _heldout(task, ns.task, ns.prompts)
    base, tokenizer = load_model_and_tokenizer(ns.base)
    tuned, tuned_tok = load_model_and_tokenizer(ns.tuned)
    if tuned_tok.get_vocab() != tokenizer.get_vocab():
        raise TiltError(f"'{ns.base}' and '{ns.tuned}' have different tokenizers; compare needs one vocabulary")
    cmp = compare(base, tuned, tokenizer, task, examples, ns.samples, ns.max_new_tokens, ns.temperature, ns.seed)
    table = Table(title=f"{ns.task}: {len(examples)} held-out prompts x {ns.samples} samples, seed {ns.seed}")
    for col in ("k", "base pass@k", "tuned pass@k", "change"):
        table.add_column(col, justify="right")
    for k in cmp.ks:
        b, t = cmp.base.pass_at[k], cmp.tuned.pass_at[k]
        table.add_row(str(k), f"{b:.4f}", f"{t:.4f}", f"{(t - b) * 100:+.1f} pts")
    _console().print(table)
    sup = cmp.support
    print(f"crossover k: {cmp.crossover if cmp.crossover else 'none (the order of the curves never flips)'}")
    print(f"support (solved at least once in {ns.samples}): preserved {sup['preserved']}, shrunk {sup['shrunk']} "
          f"(base only), expanded {sup['expanded']} (tuned only), unsolved {sup['unsolved']}")
    print(f"KL(tuned || base) = {cmp.tuned.kl_to_ref:.4f} ± {cmp.tuned.kl_to_ref_se:.4f} nats per sequence")
    result = {"base": ns.base, "tuned": ns.tuned, "task": task_fields, "seed": ns.seed, **cmp.as_dict()}
    if families:
        rows = forgetting_rows(
            *(evaluate_families(m, tokenizer, families, ns.prompts, ns.samples, ns.max_new_tokens, ns.temperature,
                                ns.seed) for m in (base, tuned)))
        _print_forgetting(rows)
        result["forgetting"] = rows
    out = Path(ns.out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / "compare.json", json.dumps(result, indent=2))
    plots = plot_comparison(cmp, out, ("base", "tuned"))
    print(f"wrote {out / 'compare.json'}, {', '.join(str(p) for p in plots)}")
    return 0


def cmd_report(ns: argparse.Namespace) -> int:
    from tiltlm.report import build_report

    print(build_report(ns.run_dir, ns.out))
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
    t.add_argument("--profile", action="store_true", help="time per phase per step: printed, and RUN_DIR/profile.json")
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="pass@k/mean@k/maj@k, diversity, entropy, KL to a reference on held-out prompts")
    e.add_argument("model", help="'embedded' or a local Hugging Face model directory")
    e.add_argument("--task", default="arithmetic", help="task name (arithmetic | jsonl | reasoning_gym)")
    e.add_argument("task_options", nargs="*", help="task options, e.g. task.path=data.jsonl task.max_digits=2")
    e.add_argument("--samples", type=int, default=64)
    e.add_argument("--k", default="auto", help="'auto' = 1,2,4,...,samples, or e.g. 1,4,16")
    e.add_argument("--batch-prompts", type=int, default=64, help="prompts per sampling batch (x samples rows)")
    e.add_argument("--reference", default=None, help="model to measure KL(model || reference) against, e.g. embedded")
    e.add_argument("--prompts", type=int, default=200)
    e.add_argument("--max-new-tokens", type=int, default=8)
    e.add_argument("--temperature", type=float, default=1.0)
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--threads", type=int, default=1)
    e.add_argument("--json-out", default="eval.json")
    e.set_defaults(fn=cmd_eval)

    cp = sub.add_parser("compare", help="base vs tuned: pass@k curves + crossover, support change, forgetting")
    cp.add_argument("base", help="'embedded' or a local Hugging Face model directory")
    cp.add_argument("tuned", help="a local model directory, e.g. RUN_DIR/final")
    cp.add_argument("--task", default="arithmetic", help="task name (arithmetic | jsonl | reasoning_gym)")
    cp.add_argument("task_options", nargs="*", help="task options, e.g. task.max_digits=2")
    cp.add_argument("--family", action="append", default=[],
                    help="a task family not trained on, for forgetting, e.g. '{name: reasoning_gym, dataset: chain_sum}' "
                         "(repeatable)")
    cp.add_argument("--samples", type=int, default=64)
    cp.add_argument("--prompts", type=int, default=200)
    cp.add_argument("--max-new-tokens", type=int, default=8)
    cp.add_argument("--temperature", type=float, default=1.0)
    cp.add_argument("--seed", type=int, default=0)
    cp.add_argument("--threads", type=int, default=1)
    cp.add_argument("--out", default="compare", help="directory for compare.json, passk.png, scatter.png")
    cp.set_defaults(fn=cmd_compare)

    pt = sub.add_parser("pretrain", help="(re)build the embedded base model by supervised learning on a+b")
    pt.add_argument("--out", required=True)
    pt.add_argument("--steps", type=int, default=PretrainConfig.steps)
    pt.add_argument("--seed", type=int, default=0)
    pt.add_argument("--threads", type=int, default=1)
    pt.set_defaults(fn=cmd_pretrain)

    r = sub.add_parser("report", help="HTML report of a run directory: training curves, base vs tuned pass@k")
    r.add_argument("run_dir", metavar="RUN_DIR")
    r.add_argument("--out", default=None, metavar="DIR", help="output directory (default: RUN_DIR/report)")
    r.set_defaults(fn=cmd_report)

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
        if ns.command in ("eval", "compare") and all("=" in e and not e.startswith("-") for e in extra):
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
