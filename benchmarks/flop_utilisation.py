"""Training-phase FLOP utilisation: executed GFLOP/s of the update's forward + backward against this CPU's matmul peak.

    python benchmarks/flop_utilisation.py [--threads 2] [--repeats 9] [--optimizer] [--out docs/flop_utilisation.json]

For each workload of benchmarks/vs_trl.py -- (a) 8 prompts x 8 samples, <= 16 new tokens, ~1.1M-param random Llama;
(b) the same with ~9.5M params; (c) the embedded base on its task at the quickstart's shape (64 prompts x 8 samples,
<= 8 new tokens) -- one rollout batch is sampled, then the trainer's forward + backward (token log-probs with grad,
a masked sum, backward) is timed with the lean forward and with the plain transformers forward, alternating, median
over ``--repeats``. FLOPs are *counted*, not estimated: ``torch.utils.flop_counter.FlopCounterMode`` records every
matmul, batched matmul and attention kernel the pass executes (forward and backward). The peak is measured in the same
process the way ../shared/bench/cpu_peak.py does -- square matmuls of 1024, 2048 and 4096, median of 5 each, at the
start and at the end -- and taken as the *best* of those medians per dtype (the strictest reading of "peak"). The
lean forward is also timed with bf16 matmuls (``runtime.matmul_dtype=bfloat16``); its utilisation is quoted against
the bf16 peak. ``lean_compiled`` / ``lean_bf16_compiled`` are the same with ``runtime.compile_training`` (the compiled,
padded forward: it executes the padding's FLOPs too, counted on the same forward run eagerly; the compile falls in an
untimed call). Utilisation = executed GFLOP/s / peak of the dtype used. The lean forward executes fewer FLOPs for the
same gradients (no padding, shared prompts); its utilisation is quoted on the FLOPs it executes, and "effective"
GFLOP/s (the transformers forward's FLOPs / lean time) is listed too. ``--optimizer`` times the whole update as
``trainer.update`` runs it: forward + backward, then gradient clipping (max norm 1) and the fused AdamW step; the
optimizer's elementwise work adds time and no matmul FLOPs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_trl  # noqa: E402

from tiltlm import cpu, lean  # noqa: E402
from tiltlm.logprobs import sequence_logprobs  # noqa: E402
from tiltlm.models import load_model_and_tokenizer  # noqa: E402
from tiltlm.rollout import HFEngine  # noqa: E402
from tiltlm.tasks.arithmetic import Arithmetic  # noqa: E402

SHAPES = {"a": ("a_beta", 8, 8, 16), "b": ("b_beta", 8, 8, 16), "c": ("c", 64, 8, 8)}


def matmul_peak(threads: int, dtype: torch.dtype, sizes=(1024, 2048, 4096), reps: int = 5) -> dict[int, float]:
    """GFLOP/s of square n^3 matmuls, median of ``reps`` per size."""
    torch.set_num_threads(threads)
    out = {}
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        for _ in range(2):
            a @ b
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t)
        out[n] = 2 * n**3 / statistics.median(times) / 1e9
    return out


# name: (lean forward, matmul dtype, runtime.compile_training)
VARIANTS = {"lean": (True, None, False), "lean_bf16": (True, torch.bfloat16, False), "transformers": (False, None, False),
            "lean_compiled": (True, None, True), "lean_bf16_compiled": (True, torch.bfloat16, True)}


def configure(model, on: bool, mm, compiled: bool) -> None:
    lean.enable(model, on, matmul_dtype=mm)
    lean.compile_training(model, compiled)


def rollout(model, tok, prompts: int, samples: int, max_new: int):
    import random

    examples = Arithmetic(1, 3).sample_train(random.Random(0), prompts)
    ids = [tok(e.prompt)["input_ids"] for e in examples]
    gen = HFEngine(model, tok.eos_token_id, tok.pad_token_id).generate(ids, samples, max_new, 1.0,
                                                                        torch.Generator().manual_seed(0))
    return gen.prompt_ids, gen.prompt_mask, gen.completion_ids, gen.completion_mask


def forward_backward(model, batch, optimizer: torch.optim.Optimizer | None = None) -> None:
    model.zero_grad(set_to_none=True)  # as trainer.update: the backward stores each gradient, adds to no zeros
    p_ids, p_mask, c_ids, c_mask = batch
    logp, _ = sequence_logprobs(model, p_ids, p_mask, c_ids, c_mask)
    (logp * c_mask).sum().backward()
    if optimizer is not None:  # trainer.update's optimizer phase
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--workloads", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS),
                    help="forwards to time (transformers is always counted: the 'effective' column needs its FLOPs)")
    ap.add_argument("--optimizer", action="store_true",
                    help="time the optimizer phase too (clipping + fused AdamW), as the trainer's update runs it")
    ap.add_argument("--out", default="docs/flop_utilisation.json")
    ns = ap.parse_args()
    cpu.configure(ns.threads)  # threads and malloc settings as every tiltlm command applies them
    work = Path(tempfile.mkdtemp(prefix="flops-"))
    variants = {name: VARIANTS[name] for name in VARIANTS if name in ns.variants or name == "transformers"}
    dtypes = [torch.float32]
    if lean.native_bf16(torch.device("cpu")):
        dtypes.append(torch.bfloat16)
    else:  # emulated bf16 runs at ~1 GFLOP/s here: its peak alone would take hours to measure
        print("this CPU has no bf16 instructions: the lean_bf16 variant and the bf16 peak are left out")
        variants.pop("lean_bf16", None), variants.pop("lean_bf16_compiled", None)
    peaks = {str(dt).removeprefix("torch."): [matmul_peak(ns.threads, dt)] for dt in dtypes}
    rows = {}
    print(f"{'workload':8s} {'forward':18s} {'GFLOP':>7s} {'ms':>7s} {'GFLOP/s':>8s} {'of peak':>8s} {'effective':>9s}")
    for name in ns.workloads:
        spec_name, prompts, samples, max_new = SHAPES[name]
        model_dir = vs_trl.make_model(vs_trl.WORKLOADS[spec_name], work / name)
        model, tok = load_model_and_tokenizer(str(model_dir))
        model.train()
        batch = rollout(model, tok, prompts, samples, max_new)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True) if ns.optimizer else None
        flops, times = {}, {v: [] for v in variants}
        for variant, setting in variants.items():
            configure(model, *setting)
            # the compiled variants' FLOPs are counted on the same padded forward run eagerly (the counter is a
            # dispatch mode, which compiled graphs do not go through)
            eager = mock.patch.object(lean, "_compiled_padded_logits", lambda: lean.LeanDecoder.padded_logits)
            with eager, FlopCounterMode(display=False) as counter:
                forward_backward(model, batch)
            flops[variant] = counter.get_total_flops()
            forward_backward(model, batch, opt)  # untimed warm-up: the compiled variants compile here
        for _ in range(ns.repeats):  # alternate so that drifting machine speed hits all alike
            for variant, setting in variants.items():
                configure(model, *setting)
                t = time.perf_counter()
                forward_backward(model, batch, opt)
                times[variant].append(time.perf_counter() - t)
        rows[name] = {"rows": int(batch[2].shape[0]), "completion_tokens": int(batch[3].sum()),
                      "prompt_width": int(batch[0].shape[1]), "completion_width": int(batch[2].shape[1])}
        for variant in variants:
            sec = statistics.median(times[variant][1:])
            rows[name][variant] = {"gflop": flops[variant] / 1e9, "median_s": sec,
                                   "gflops": flops[variant] / sec / 1e9,
                                   "effective_gflops": flops["transformers"] / sec / 1e9}
    for dt in dtypes:
        peaks[str(dt).removeprefix("torch.")].append(matmul_peak(ns.threads, dt))
    peak = {dt: max(max(m.values()) for m in ms) for dt, ms in peaks.items()}
    for name, r in rows.items():
        for variant in variants:
            v = r[variant]
            v["peak_dtype"] = "bfloat16" if variants[variant][1] == torch.bfloat16 else "float32"
            v["utilisation"] = v["gflops"] / peak[v["peak_dtype"]]
            print(f"{name:8s} {variant[:18]:18s} {v['gflop']:7.2f} {v['median_s'] * 1e3:7.1f} {v['gflops']:8.1f} "
                  f"{v['utilisation']:8.0%} {v['effective_gflops']:9.1f}")
    print(f"matmul peak ({ns.threads} threads, best median of n = 1024/2048/4096, start and end): "
          + ", ".join(f"{dt} {g:.0f} GFLOP/s" for dt, g in peak.items()))
    out = Path(__file__).resolve().parents[1] / ns.out
    out.write_text(json.dumps({"command": " ".join(sys.argv), "threads": ns.threads, "optimizer": ns.optimizer,
                               "peak_gflops": peak,
                               "peaks": {dt: [{str(n): g for n, g in m.items()} for m in ms] for dt, ms in peaks.items()}, "workloads": rows}, indent=1), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
