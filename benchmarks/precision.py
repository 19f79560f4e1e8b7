"""bf16 matmuls vs float32 on this CPU: the speed of each training phase and the error it costs.

    python benchmarks/precision.py [--workloads a b c] [--threads 2] [--repeats 15] [--compile-training]
                                   [--out docs/precision.json]

For each workload of benchmarks/vs_trl.py ((a) ~1.1M-param random Llama, (b) ~9.5M, 8 prompts x 8 samples, <= 16 new
tokens; (c) the embedded base at the quickstart's shape, 64 x 8, <= 8 tokens) one rollout batch is sampled in float32.
Then, with the lean forward in float32 and with bf16 matmuls (``runtime.matmul_dtype=bfloat16``), alternating, median
over ``--repeats``:

* ``update``: the trainer's GRPO forward + backward on that batch (token log-probs with grad, the PPO-clipped token
  loss with tiltlm's token-mean weights and group advantages of fixed random rewards, backward);
* ``reference``: token log-probs without grad (the reference forward);
* ``sampling``: ``HFEngine.generate`` of the workload's batch.

Errors of bf16 against float32 on the same batch: relative error of the loss, relative L2 error and cosine of the
gradient, largest |log-prob difference| of the reference forward, and the largest |sampling log-prob - training
log-prob| under bf16 (the policy mismatch that bf16 sampling brings into the PPO ratio, which is exactly 1 in float32).
``--compile-training`` runs both modes' update and reference through the compiled padded forward
(``runtime.compile_training``; its compiles fall in the first, untimed calls).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_trl  # noqa: E402

from tiltlm import lean  # noqa: E402
from tiltlm.logprobs import sequence_logprobs  # noqa: E402
from tiltlm.models import load_model_and_tokenizer  # noqa: E402
from tiltlm.rollout import HFEngine  # noqa: E402
from tiltlm.tasks.arithmetic import Arithmetic  # noqa: E402

SHAPES = {"a": ("a_beta", 8, 8, 16), "b": ("b_beta", 8, 8, 16), "c": ("c", 64, 8, 8)}
MODES = {"float32": None, "bfloat16": torch.bfloat16}


def grpo_loss(model, batch, advantages: torch.Tensor) -> torch.Tensor:
    p_ids, p_mask, c_ids, c_mask, old = batch
    logp, _ = sequence_logprobs(model, p_ids, p_mask, c_ids, c_mask)
    ratio = torch.exp(logp - old)
    adv = advantages.unsqueeze(1)
    token = -torch.minimum(ratio * adv, ratio.clamp(0.8, 1.2) * adv)
    return (token * c_mask).sum() / c_mask.sum()


def measure(name: str, ns, work: Path) -> dict:
    """Errors and per-phase medians of one workload."""
    spec_name, prompts, samples, max_new = SHAPES[name]
    model, tok = load_model_and_tokenizer(str(vs_trl.make_model(vs_trl.WORKLOADS[spec_name], work / name)))
    examples = Arithmetic(1, 3).sample_train(random.Random(0), prompts)
    ids = [tok(e.prompt)["input_ids"] for e in examples]
    engine = HFEngine(model, tok.eos_token_id, tok.pad_token_id)
    gen = engine.generate(ids, samples, max_new, 1.0, torch.Generator().manual_seed(0))
    batch = (gen.prompt_ids, gen.prompt_mask, gen.completion_ids, gen.completion_mask, gen.sample_logprobs)
    rewards = torch.rand(len(gen.completion_ids), generator=torch.Generator().manual_seed(1))
    groups = rewards.view(prompts, samples)
    advantages = ((groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-4)).flatten()
    mask = gen.completion_mask.bool()
    model.train()
    lean.compile_training(model, ns.compile_training)

    def update():
        model.zero_grad(set_to_none=True)
        loss = grpo_loss(model, batch, advantages)
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    def reference():
        with torch.no_grad():
            return sequence_logprobs(model, *batch[:4])[0]

    def sampling():
        return engine.generate(ids, samples, max_new, 1.0, torch.Generator().manual_seed(2))

    exact = {}
    for mode, dtype in MODES.items():
        lean.enable(model, matmul_dtype=dtype)
        exact[mode] = (update(), reference())
    (l32, g32), r32 = exact["float32"]
    (l16, g16), r16 = exact["bfloat16"]
    lean.enable(model, matmul_dtype=torch.bfloat16)
    g_bf = sampling()
    with torch.no_grad():
        train_bf = sequence_logprobs(model, g_bf.prompt_ids, g_bf.prompt_mask, g_bf.completion_ids,
                                     g_bf.completion_mask)[0]
    errors = {
        "loss_fp32": l32, "loss_bf16": l16, "loss_rel_error": abs(l16 - l32) / max(abs(l32), 1e-12),
        "grad_rel_error": float((g16 - g32).norm() / g32.norm()),
        "grad_cosine": float(torch.nn.functional.cosine_similarity(g16.double(), g32.double(), 0)),
        "reference_logprob_max_abs_error": float((r16 - r32)[mask].abs().max()),
        "sampling_vs_training_logprob_max_abs_diff": float(
            (g_bf.sample_logprobs - train_bf)[g_bf.completion_mask.bool()].abs().max()),
    }
    times = {phase: {mode: [] for mode in MODES} for phase in ("update", "reference", "sampling")}
    phases = {"update": update, "reference": reference, "sampling": sampling}
    for rep in range(ns.repeats + 2):  # alternate: drifting machine speed hits both alike; 2 warm-ups
        for phase, fn in phases.items():
            for mode, dtype in MODES.items():
                lean.enable(model, matmul_dtype=dtype)
                t = time.perf_counter()
                fn()
                if rep >= 2:
                    times[phase][mode].append(time.perf_counter() - t)
    row = {"errors": errors, "phases": {}}
    for phase, by_mode in times.items():
        med = {mode: statistics.median(v) for mode, v in by_mode.items()}
        row["phases"][phase] = {"float32_s": med["float32"], "bfloat16_s": med["bfloat16"],
                                "speedup": med["float32"] / med["bfloat16"]}
        print(f"{name:8s} {phase:9s} {med['float32'] * 1e3:8.1f} {med['bfloat16'] * 1e3:8.1f} "
              f"{med['float32'] / med['bfloat16']:7.2f}x", flush=True)
    print(f"{name:8s} errors: " + ", ".join(f"{k} {v:.3g}" for k, v in errors.items()), flush=True)
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--workloads", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    ap.add_argument("--compile-training", action="store_true", help="runtime.compile_training for both modes")
    ap.add_argument("--out", default="docs/precision.json")
    ns = ap.parse_args()
    if not lean.native_bf16(torch.device("cpu")):
        sys.exit("precision: this CPU has no bf16 instructions (AVX512-BF16/AMX); PyTorch would emulate bf16 "
                 "matmuls at ~1 GFLOP/s, so there is no trade to measure")
    torch.set_num_threads(ns.threads)
    work = Path(tempfile.mkdtemp(prefix="precision-"))
    results = {}
    print(f"{'workload':8s} {'phase':9s} {'fp32 ms':>8s} {'bf16 ms':>8s} {'speed-up':>8s}")
    for name in ns.workloads:
        results[name] = measure(name, ns, work)
    out = Path(__file__).resolve().parents[1] / ns.out
    out.write_text(json.dumps({"command": " ".join(sys.argv), "threads": ns.threads, "repeats": ns.repeats,
                               "workloads": results}, indent=1), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
