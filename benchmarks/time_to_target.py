"""Time to target, side by side: wall time (evaluation excluded) for held-out pass@1 to gain 20 points, tiltlm vs TRL.

    python benchmarks/time_to_target.py [--seeds 0 1 2] [--steps 500] [--every 50] [--target 0.20]
                                        [--trl-python .bench-venv/bin/python] [--out docs/time_to_target.json]

Both sides start from the embedded base on its own task, with the same prompts per step (64), samples per prompt
(8), learning rate (3e-4, constant, no warm-up), beta = 0, max 8 new tokens, 1 thread, and the same loss
(seq-mean-token-mean = TRL's ``loss_type=grpo``). tiltlm runs ``configs/grpo.yaml``, which leaves zero-gradient
rows out of the backward -- an honest saving that does not change what is learned per sample. TRL runs
benchmarks/trl_side/time_to_target_trl.py in its own venv and saves a checkpoint every ``--every`` steps. Every
point on both curves is measured by the same function -- ``tiltlm.evaluate.evaluate`` on 200 held-out prompts x 16
samples with the seed tiltlm's trainer uses -- and placed at the cumulative training time of its step (the sum of the
step times: generation, scoring, update; evaluation and checkpoint saving excluded).
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

from tiltlm.evaluate import evaluate
from tiltlm.models import load_model_and_tokenizer, save_pretrained_atomic
from tiltlm.tasks.arithmetic import Arithmetic

ROOT = Path(__file__).resolve().parents[1]
PROMPTS, SAMPLES, LR, MAX_NEW, EVAL_PROMPTS, EVAL_SAMPLES = 64, 8, 3e-4, 8, 200, 16


def heldout_pass1(model_dir: str, seed: int) -> float:
    model, tok = load_model_and_tokenizer(model_dir)
    task = Arithmetic(1, 3)
    r = evaluate(model, tok, task, task.heldout(EVAL_PROMPTS), EVAL_SAMPLES, [1], MAX_NEW, 1.0, seed=seed + 10_000,
                 greedy=False)
    return r.pass_at[1]


def tiltlm_curve(seed: int, ns, work: Path) -> list[tuple[float, float]]:
    """(cumulative training seconds, held-out pass@1) at step 0 and every ``--every`` steps."""
    name = f"tiltlm-{seed}"
    cmd = [sys.executable, "-m", "tiltlm", "train", str(ROOT / "configs/grpo.yaml"), f"train.steps={ns.steps}",
           f"train.seed={seed}", f"rollout.prompts_per_step={PROMPTS}", f"rollout.samples_per_prompt={SAMPLES}",
           f"optim.lr={LR}", "optim.warmup_steps=0", "optim.schedule=constant", f"rollout.max_new_tokens={MAX_NEW}",
           f"eval.every={ns.every}", f"eval.prompts={EVAL_PROMPTS}", f"eval.samples={EVAL_SAMPLES}", "eval.k=[1]",
           "eval.kl_to_base=false", "runtime.threads=1", "log.progress=false", "log.tensorboard=off",
           f"log.run_dir={work}", f"log.run_name={name}"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    curve, train_s = [], 0.0
    for line in (work / name / "metrics.jsonl").read_text().splitlines():
        m = json.loads(line)
        train_s += m.get("perf/step_s", 0.0)
        if "eval/pass@1" in m:
            curve.append((train_s, m["eval/pass@1"]))
    return curve


def trl_curve(seed: int, ns, work: Path, model_dir: Path, prompts: Path) -> list[tuple[float, float]]:
    out = work / f"trl-{seed}"
    cmd = [ns.trl_python, str(ROOT / "benchmarks/trl_side/time_to_target_trl.py"), "--model-dir", str(model_dir),
           "--prompts-jsonl", str(prompts), "--out-dir", str(out), "--steps", str(ns.steps), "--prompts-per-step",
           str(PROMPTS), "--num-generations", str(SAMPLES), "--max-completion-length", str(MAX_NEW), "--lr", str(LR),
           "--seed", str(seed), "--threads", "1", "--save-every", str(ns.every)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    times = {int(k): v for k, v in json.loads((out / "times.json").read_text()).items()}
    return [(0.0, heldout_pass1("embedded", seed))] + [
        (t, heldout_pass1(str(out / f"ckpt_{step}"), seed)) for step, t in sorted(times.items())]


def time_to_gain(curve: list[tuple[float, float]], gain: float) -> float | None:
    base = curve[0][1]
    return next((t for t, p in curve if p - base >= gain), None)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--every", type=int, default=50)
    ap.add_argument("--target", type=float, default=0.20)
    ap.add_argument("--trl-python", default=os.environ.get("TRL_PYTHON", str(ROOT / ".bench-venv/bin/python")))
    ap.add_argument("--out", default="docs/time_to_target.json")
    ns = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="ttt-"))
    model, tok = load_model_and_tokenizer("embedded")
    model_dir = save_pretrained_atomic(model, tok, work / "base")
    import random

    rows = Arithmetic(1, 3).sample_train(random.Random(0), PROMPTS * ns.steps)
    prompts = work / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": e.prompt, "answer": e.answer}) + "\n" for e in rows))
    results: dict = {}
    for seed in ns.seeds:  # alternate sides seed by seed
        for side, fn in (("tiltlm", lambda s: tiltlm_curve(s, ns, work)),
                         ("trl", lambda s: trl_curve(s, ns, work, model_dir, prompts))):
            curve = fn(seed)
            t = time_to_gain(curve, ns.target)
            results.setdefault(side, {})[seed] = {"curve": curve, "time_to_target_s": t}
            print(f"{side:6s} seed {seed}: base {curve[0][1]:.3f}, best {max(p for _, p in curve):.3f}, "
                  f"+{100 * ns.target:.0f} pts at {'never' if t is None else f'{t:.0f} s'}", flush=True)
    for side, by_seed in results.items():
        reached = [r["time_to_target_s"] for r in by_seed.values() if r["time_to_target_s"] is not None]
        print(f"{side}: reached +{100 * ns.target:.0f} pts on {len(reached)}/{len(by_seed)} seeds"
              + (f", median {statistics.median(reached):.0f} s" if reached else ""))
    out = ROOT / ns.out
    out.write_text(json.dumps({"command": " ".join(sys.argv), "results": results}, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
