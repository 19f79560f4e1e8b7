"""Every recipe in configs/ at the same budget on the embedded task: held-out pass@k, entropy, KL to base, time.

    python benchmarks/algorithms.py [--seeds 0 1 2] [--steps 200] [--only grpo dapo ...] [--shard 1/2]
    python benchmarks/algorithms.py --table          # rebuild docs/algorithms.md from the stored results

Each (recipe, seed) is one `tiltlm train configs/<recipe>.yaml` process (as a user runs it), with the same prompts
per step, samples per prompt, learning rate and step count for all. During training a cheap held-out pass@1
(100 prompts x 4 samples) is logged every 50 steps, for the sample-efficiency curve. Afterwards, in this process:
pass@1/16/64 from 64 samples on 100 held-out prompts, the mean token entropy and the Monte-Carlo sequence
KL(pi || base) with its standard error (``tiltlm.evaluate.evaluate(..., reference=base)``). "train s" is the sum of the logged
per-step times (generation + scoring + update; evaluation and start-up excluded).

Each (recipe, seed) result is stored as one JSON file under --results as soon as it is measured; a rerun skips
what is there, so an interrupted run resumes, and `--shard i/n` splits the recipes between n worker processes
(one per core, 1 torch thread each).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from tiltlm.evaluate import evaluate
from tiltlm.models import load_model_and_tokenizer
from tiltlm.tasks.arithmetic import Arithmetic

ROOT = Path(__file__).resolve().parents[1]
EVAL_EVERY = 50


def measure(model_dir: str, base, tokenizer, seed: int) -> dict:
    model, _ = load_model_and_tokenizer(model_dir)
    task = Arithmetic(1, 3)
    examples = task.heldout(100)
    r = evaluate(model, tokenizer, task, examples, 64, [1, 16, 64], 8, seed=10_000 + seed, greedy=False)
    kl = evaluate(model, tokenizer, task, examples[:50], 16, [1], 8, seed=seed, greedy=False, reference=base)
    return {"pass@1": r.pass_at[1], "pass@16": r.pass_at[16], "pass@64": r.pass_at[64], "kl": kl.kl_to_ref,
            "kl_se": kl.kl_to_ref_se, "entropy": kl.entropy}


def training_record(metrics_file: Path, prompts: int, samples: int) -> dict:
    """Training time (sum of per-step times), samples drawn, and the held-out pass@1 curve from metrics.jsonl."""
    train_s, drawn, curve = 0.0, 0, []
    for line in metrics_file.read_text(encoding="utf-8").splitlines():
        m = json.loads(line)
        if "perf/step_s" in m:
            train_s += m["perf/step_s"]
            drawn += int(m["rollout/generation_rounds"]) * prompts * samples
        if "eval/pass@1" in m:
            curve.append([m["step"], drawn, m["eval/pass@1"]])
    return {"wall": train_s, "samples": drawn, "curve": curve}


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1), encoding="utf-8")
    tmp.replace(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--shard", default="1/1", help="i/n: run every n-th recipe starting at the i-th")
    ap.add_argument("--results", default="benchmarks/results/algorithms")
    ap.add_argument("--table", action="store_true", help="only rebuild the table from stored results")
    ap.add_argument("--out", default="docs/algorithms.md")
    ns = ap.parse_args()
    results_dir = ROOT / ns.results
    results_dir.mkdir(parents=True, exist_ok=True)
    if not ns.table:
        run_all(ns, results_dir)
    write_table(results_dir, ns)
    return 0


def run_all(ns, results_dir: Path) -> None:
    torch.set_num_threads(1)
    recipes = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
    if ns.only:
        recipes = [r for r in recipes if r in ns.only]
    i, n = (int(x) for x in ns.shard.split("/"))
    recipes = recipes[i - 1::n]
    base, tokenizer = load_model_and_tokenizer("embedded")
    with tempfile.TemporaryDirectory() as runs:
        for recipe in (["base"] if i == 1 else []) + recipes:
            for seed in ns.seeds:
                out = results_dir / f"{recipe}-s{seed}-{ns.steps}.json"
                if out.exists():
                    continue
                if recipe == "base":
                    row = measure("embedded", base, tokenizer, seed) | {"wall": 0.0, "samples": 0, "curve": []}
                else:
                    name = f"{recipe}-{seed}"
                    cmd = [sys.executable, "-m", "tiltlm", "train", str(ROOT / "configs" / f"{recipe}.yaml"),
                           f"train.steps={ns.steps}", f"train.seed={seed}", f"log.run_dir={runs}",
                           f"log.run_name={name}", "log.progress=false", f"eval.every={EVAL_EVERY}",
                           "eval.prompts=100", "eval.samples=4", "eval.k=[1]", "runtime.threads=1"]
                    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
                    cfg = yaml.safe_load((Path(runs) / name / "config.yaml").read_text(encoding="utf-8"))
                    rec = training_record(Path(runs) / name / "metrics.jsonl", cfg["rollout"]["prompts_per_step"],
                                          cfg["rollout"]["samples_per_prompt"])
                    row = measure(f"{runs}/{name}/final", base, tokenizer, seed) | rec
                write_json_atomic(out, {"recipe": recipe, "seed": seed, "steps": ns.steps, **row})
                print(recipe, seed, {k: round(v, 3) for k, v in row.items() if isinstance(v, float)}, flush=True)


def cell(rows: list[dict], key: str, digits: int = 3) -> str:
    vals = [r[key] for r in rows]
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def load_results(results_dir: Path, steps: int) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {}
    for p in sorted(results_dir.glob(f"*-{steps}.json")):
        row = json.loads(p.read_text(encoding="utf-8"))
        results.setdefault(row["recipe"], []).append(row)
    base = results.pop("base", [])
    return {"base": base, **dict(sorted(results.items()))} if base else dict(sorted(results.items()))


def curve_cell(rows: list[dict]) -> str:
    """Mean held-out pass@1 (100 prompts x 4 samples) at each logged step, over seeds."""
    steps = sorted({c[0] for r in rows for c in r["curve"]})
    means = [statistics.mean(c[2] for r in rows for c in r["curve"] if c[0] == st) for st in steps]
    return " / ".join(f"{m:.2f}" for m in means)


CLAIM_GROUPS = {  # recipe -> the recipe it is compared with, seed by seed
    "clip_higher": "grpo_mu2",
    **{r: "grpo" for r in ("dapo", "nsr", "psr", "w_reinforce", "grpo_kl", "kl_rl", "fdpg_js", "rapo",
                           "dph", "dpg", "entropy_bonus", "siren", "lp_reg", "rover", "gspo", "cispo", "dr_grpo")},
    "exopd": "opd", "sft_teacher": "opd", "kdrl": "grpo", "rlad": "opd",
}


def paired_rows(results: dict[str, list[dict]]) -> list[str]:
    """Seed-paired differences (recipe - reference) of pass@1 / pass@64 / KL: mean ± sd over seeds."""
    lines = ["| recipe − reference | seeds | Δ pass@1 | Δ pass@16 | Δ pass@64 | Δ KL(π‖base) |", "|---|---|---|---|---|---|"]
    for recipe, ref in CLAIM_GROUPS.items():
        if recipe not in results or ref not in results:
            continue
        by_seed = {r["seed"]: r for r in results[ref]}
        pairs = [(r, by_seed[r["seed"]]) for r in results[recipe] if r["seed"] in by_seed]
        if not pairs:
            continue
        cells = []
        for key in ("pass@1", "pass@16", "pass@64", "kl"):
            d = [a[key] - b[key] for a, b in pairs]
            sd = f" ± {statistics.stdev(d):.3f}" if len(d) > 1 else ""
            cells.append(f"{statistics.mean(d):+.3f}{sd}")
        lines.append(f"| {recipe} − {ref} | {len(pairs)} | " + " | ".join(cells) + " |")
    return lines


def write_table(results_dir: Path, ns) -> None:
    results = load_results(results_dir, ns.steps)
    lines = ["| recipe | seeds | pass@1 | pass@16 | pass@64 | entropy | KL(π‖base) nats | train s | samples | "
             f"pass@1 every {EVAL_EVERY} steps |", "|---|---|---|---|---|---|---|---|---|---|"]
    for recipe, rows in results.items():
        lines.append(f"| {recipe} | {len(rows)} | {cell(rows, 'pass@1')} | {cell(rows, 'pass@16')} | "
                     f"{cell(rows, 'pass@64')} | {cell(rows, 'entropy')} | {cell(rows, 'kl')} | {cell(rows, 'wall', 0)} "
                     f"| {statistics.mean(r['samples'] for r in rows):.0f} | {curve_cell(rows)} |")
    out = ROOT / ns.out
    header, claims = "# Algorithms at equal budget on the embedded task\n\n", ""
    if out.exists():  # keep the hand-written claims section above the generated table
        text = out.read_text(encoding="utf-8")
        if "<!-- table -->" in text:
            claims = text.split("<!-- table -->")[0].removeprefix(header)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(
        header + claims + "<!-- table -->\n"
        f"Command: `python benchmarks/algorithms.py --seeds {' '.join(map(str, ns.seeds))} --steps {ns.steps}` "
        f"(results in `{ns.results}/`). Mean ± sd over seeds; {ns.steps} steps x 64 prompts x 8 samples each; "
        "held-out pass@k from 64 samples on 100 prompts; KL(π‖base) Monte-Carlo over 50 prompts x 16 samples; "
        "samples = completions drawn for training (DAPO draws more per step).\n\n" + "\n".join(lines) + "\n\n"
        "Seed-paired differences against the reference each claim is about:\n\n" + "\n".join(paired_rows(results))
        + "\n",
        encoding="utf-8",
    )
    tmp.replace(out)
    print(f"wrote {out}")


if __name__ == "__main__":
    sys.exit(main())
