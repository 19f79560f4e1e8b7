"""Before/after: `tiltlm train --profile` at two git revisions, alternating A B A B, per-phase medians side by side.

    python benchmarks/profile_commits.py BEFORE AFTER [--repeats 3] [--steps 40] [key=value ...]

Each revision is checked out into its own worktree (under the system temp dir, reused across calls) and run with
``PYTHONPATH=<worktree>/src`` in this interpreter's environment, so only tiltlm's code differs. Both revisions must
have ``--profile``. Reports, per phase, the median over all timed steps (the first 3 steps of each run are warm-up)
of milliseconds per step, and the ratio before / after. Training results (held-out pass@1) are not compared here:
a faster sampler may draw different random numbers.
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

ROOT = Path(__file__).resolve().parents[1]
WARMUP = 3


def worktree(rev: str) -> Path:
    sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", rev], check=True, capture_output=True,
                         text=True).stdout.strip()
    path = Path(tempfile.gettempdir()) / f"tiltlm-wt-{sha[:12]}"
    if not path.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), sha], check=True,
                       capture_output=True)
    return path


def profile_run(tree: Path, steps: int, overrides: list[str], run_dir: Path) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    cmd = [sys.executable, "-m", "tiltlm", "train", "--profile", f"train.steps={steps}", "eval.prompts=0",
           "log.progress=false", f"log.run_dir={run_dir}", *overrides]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    run = Path(out.strip().splitlines()[-1].split("run directory: ")[1].split()[0])
    return json.loads((run / "profile.json").read_text())["per_step"][WARMUP:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("overrides", nargs="*")
    ns = ap.parse_args()
    trees = {"before": worktree(ns.before), "after": worktree(ns.after)}
    steps: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as runs:
        for _ in range(ns.repeats):
            for side in ("before", "after"):
                steps[side] += profile_run(trees[side], ns.steps, ns.overrides, Path(runs))
    phases = [p for p in steps["after"][0] if p != "total"] + ["total"]
    print(f"{ns.before} -> {ns.after}; {ns.repeats} alternating repeats x {ns.steps - WARMUP} timed steps; "
          f"overrides: {' '.join(ns.overrides) or '(none)'}")
    print("| phase | before ms/step | after ms/step | before / after |\n|---|---|---|---|")
    for p in phases:
        b = statistics.median(s.get(p, 0.0) for s in steps["before"]) * 1e3
        a = statistics.median(s.get(p, 0.0) for s in steps["after"]) * 1e3
        print(f"| {p} | {b:.1f} | {a:.1f} | {b / a if a > 0 else float('nan'):.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
