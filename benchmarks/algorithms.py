"""Every recipe in configs/ at the same budget on the embedded task: held-out pass@k, entropy, KL to base, time.

    python benchmarks/algorithms.py [--seeds 0 1 2] [--steps 300] [--only grpo dapo ...] [--out docs/algorithms.md]

Each (recipe, seed) is one `tiltlm train configs/<recipe>.yaml` process (as a user runs it), with the same prompts
per step, samples per prompt, learning rate and step count for all. Afterwards, in this process: pass@1/16/64 from
64 samples on 100 held-out prompts, the mean token entropy and the Monte-Carlo sequence KL(pi || base) with its
standard error (``tiltlm.evaluate.kl_to_reference``). Wall time is the training process's own (evaluation excluded).
Runs are sequential: on a 2-core machine parallel runs distort wall times.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from tiltlm.evaluate import evaluate, kl_to_reference
from tiltlm.models import load_model_and_tokenizer
from tiltlm.tasks.arithmetic import Arithmetic

ROOT = Path(__file__).resolve().parents[1]


def measure(model_dir: str, base, tokenizer, seed: int) -> dict:
    model, _ = load_model_and_tokenizer(model_dir)
    task = Arithmetic(1, 3)
    examples = task.heldout(100)
    r = evaluate(model, tokenizer, task, examples, 64, [1, 16, 64], 8, seed=10_000 + seed, greedy=False)
    kl, se, ent = kl_to_reference(model, base, tokenizer, examples[:50], 16, 8, seed=seed)
    return {"pass@1": r.pass_at[1], "pass@16": r.pass_at[16], "pass@64": r.pass_at[64], "kl": kl, "kl_se": se,
            "entropy": ent}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--out", default="docs/algorithms.md")
    ns = ap.parse_args()
    torch.set_num_threads(1)
    recipes = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
    if ns.only:
        recipes = [r for r in recipes if r in ns.only]
    base, tokenizer = load_model_and_tokenizer("embedded")
    results: dict[str, list[dict]] = {"base": [measure("embedded", base, tokenizer, s) | {"wall": 0.0} for s in ns.seeds]}
    print("base", results["base"][0], flush=True)
    with tempfile.TemporaryDirectory() as runs:
        for recipe in recipes:
            results[recipe] = []
            for seed in ns.seeds:
                name = f"{recipe}-{seed}"
                cmd = [sys.executable, "-m", "tiltlm", "train", str(ROOT / "configs" / f"{recipe}.yaml"),
                       f"train.steps={ns.steps}", f"train.seed={seed}", f"log.run_dir={runs}", f"log.run_name={name}",
                       "log.progress=false", "eval.prompts=0"]
                t0 = time.perf_counter()
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                wall = time.perf_counter() - t0
                row = measure(f"{runs}/{name}/final", base, tokenizer, seed) | {"wall": wall}
                results[recipe].append(row)
                print(recipe, seed, {k: round(v, 3) for k, v in row.items()}, flush=True)
    write_table(results, ns)
    return 0


def cell(rows: list[dict], key: str, digits: int = 3) -> str:
    vals = [r[key] for r in rows]
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def write_table(results: dict[str, list[dict]], ns) -> None:
    lines = ["| recipe | pass@1 | pass@16 | pass@64 | entropy | KL(π‖base) nats | train wall s |", "|---|---|---|---|---|---|---|"]
    for recipe, rows in results.items():
        lines.append(f"| {recipe} | {cell(rows, 'pass@1')} | {cell(rows, 'pass@16')} | {cell(rows, 'pass@64')} | "
                     f"{cell(rows, 'entropy')} | {cell(rows, 'kl')} | {cell(rows, 'wall', 0)} |")
    out = ROOT / ns.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        "# Algorithms at equal budget on the embedded task\n\n"
        f"Command: `python benchmarks/algorithms.py --seeds {' '.join(map(str, ns.seeds))} --steps {ns.steps}`. "
        f"Mean ± sd over {len(ns.seeds)} seed(s); {ns.steps} steps x 64 prompts x 8 samples each; held-out "
        "pass@k from 64 samples on 100 prompts; KL(π‖base) Monte-Carlo over 50 prompts x 16 samples.\n\n"
        + "\n".join(lines) + "\n\n<!-- raw -->\n```json\n" + json.dumps(results, indent=1) + "\n```\n",
        encoding="utf-8",
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
