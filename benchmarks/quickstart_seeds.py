"""Run `tiltlm quickstart` for several seeds, one after another, and write a markdown table to docs/.

    python benchmarks/quickstart_seeds.py --seeds 0 1 2 [--out docs/quickstart.md] [key=value ...]

Each seed runs as its own process (as a user runs it); the table reports base and tuned held-out pass@1/pass@k,
the gain in points, and wall time. Runs sequentially: on a 2-core machine parallel runs distort the wall times.
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="docs/quickstart.md")
    ap.add_argument("overrides", nargs="*")
    ns = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as runs:
        for seed in ns.seeds:
            t0 = time.perf_counter()
            cmd = [sys.executable, "-m", "tiltlm", "quickstart", f"train.seed={seed}", f"log.run_dir={runs}",
                   f"log.run_name=seed{seed}", "log.progress=false", *ns.overrides]
            subprocess.run(cmd, check=True)
            wall = time.perf_counter() - t0
            s = json.loads((Path(runs) / f"seed{seed}" / "quickstart.json").read_text())
            rows.append((seed, s, wall))
            print(f"seed {seed}: pass@1 {s['base']['pass@1']:.3f} -> {s['tuned']['pass@1']:.3f} in {wall:.0f}s", flush=True)
    ks = [k for k in ("pass@1", "pass@4", "pass@16") if k in rows[0][1]["tuned"]]
    lines = [
        "| seed | " + " | ".join(f"base {k}" for k in ks) + " | " + " | ".join(f"tuned {k}" for k in ks)
        + " | gain pass@1 (pts) | greedy base → tuned | forgetting probe (pts ± SE) | train s | wall s (process) |",
        "|" + "---|" * (2 * len(ks) + 6),
    ]
    for seed, s, wall in rows:
        b, t = s["base"], s["tuned"]
        lines.append(
            f"| {seed} | " + " | ".join(f"{b[k]:.3f}" for k in ks) + " | " + " | ".join(f"{t[k]:.3f}" for k in ks)
            + f" | {100 * (t['pass@1'] - b['pass@1']):+.1f} | {b['greedy_accuracy']:.3f} → {t['greedy_accuracy']:.3f}"
            + " | " + "; ".join(f"{100 * f['change']:+.1f} ± {100 * f['se']:.1f}" for f in s.get("forgetting", []))
            + f" | {s['train_seconds']:.0f} | {wall:.0f} |"
        )
    gains = [100 * (s["tuned"]["pass@1"] - s["base"]["pass@1"]) for _, s, _ in rows]
    lines.append("")
    lines.append(f"pass@1 gain: mean {statistics.mean(gains):+.1f} pts, min {min(gains):+.1f}, max {max(gains):+.1f} "
                 f"over {len(gains)} seeds. Overrides: {' '.join(ns.overrides) or '(none)'}")
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("# Quickstart: GRPO on the embedded base, several seeds\n\n"
                   f"Command: `python benchmarks/quickstart_seeds.py --seeds {' '.join(map(str, ns.seeds))}`\n\n"
                   + "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
