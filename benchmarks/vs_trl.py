"""tiltlm vs TRL's GRPOTrainer on the same workload, side by side, alternating A B A B.

    python benchmarks/vs_trl.py [--workloads a_beta a_nobeta b_beta b_nobeta c] [--repeats 2] [--steps 12]
                                [--threads 2] [--trl-python .bench-venv/bin/python] [--out docs/vs_trl.json]

TRL runs in its own virtual environment (see ../shared/README.md; TRL is never a tiltlm dependency) through the
CEO's reference script ../shared/bench/trl_grpo_cpu.py with ``--model-dir`` and ``--prompts-jsonl``; tiltlm runs
``tiltlm train`` as a user would. Both get the same model directory (config and initial weights), the same
prompts, prompts per step, samples per prompt, max completion length, mu = 1, beta, learning rate (constant, no
warm-up), fp32, epsilon 0.2 and thread count; the loss is matched to TRL 1.16's default (``loss_type=dapo`` =
``objective.aggregation=token_mean``; ``use_bias_correction_kl`` = ``objective.kl_correction``). Both do the same
work: ``train.skip_zero_gradient_rows=false`` (TRL runs the backward pass on zero-advantage rows too).

``--prompts trl`` gives (a)/(b) the reference script's own prompts ("what is 23+58? ") instead of the embedded task's.
``--tiltlm-matmul float32 bfloat16`` runs tiltlm once per matmul dtype in each round (A A' B, alternating): bf16 is
tiltlm's mixed precision (``runtime.matmul_dtype=bfloat16``, docs/performance.md); TRL stays in float32 (the
reference script has no precision option). ``float32+compile`` adds ``runtime.compile_sampling=true`` (the compiled
decode step), ``+train`` adds ``runtime.compile_training=true`` (the compiled, padded scoring forward and backward);
their compiles fall in the warm-up steps, which are not timed (a batch shape first met later compiles in a timed
step: the median is robust to it, tokens/s (total tokens / total time) is not, and the JSON keeps every timed
step's seconds per run, ``step_s_by_run``).

Workloads: (a) 8 prompts x 8 samples, <= 16 new tokens, a ~1.1M-parameter Llama (hidden 128, 4 layers), random
weights, beta 0.04 and 0; (b) the same with a ~9.5M-parameter Llama (hidden 256, 9 layers); (c) the embedded base on
its own task (rewards vary), beta 0.

Reported per side: median seconds per optimizer step over the steps after ``--warmup`` (pooled over repeats),
generated tokens per second (completion tokens / step time), peak RSS; and the ratio TRL / tiltlm.
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
TRL_SCRIPT = ROOT.parent / "shared" / "bench" / "trl_grpo_cpu.py"
WORKLOADS = {
    "a_beta": {"hidden": 128, "layers": 4, "beta": 0.04, "model": "random"},
    "a_nobeta": {"hidden": 128, "layers": 4, "beta": 0.0, "model": "random"},
    "b_beta": {"hidden": 256, "layers": 9, "beta": 0.04, "model": "random"},
    "b_nobeta": {"hidden": 256, "layers": 9, "beta": 0.0, "model": "random"},
    "c": {"beta": 0.0, "model": "embedded"},
}
PROMPTS, SAMPLES, MAX_NEW, LR = 8, 8, 16, 1e-4

# run tiltlm's CLI in a child and report its peak RSS the way TRL's script does (ru_maxrss of the process)
TILTLM_CHILD = (
    "import json, resource, sys\n"
    "from tiltlm.cli import main\n"
    "code = main(sys.argv[2:])\n"
    "json.dump({'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}, open(sys.argv[1], 'w'))\n"
    "sys.exit(code)\n"
)


def make_model(spec: dict, out: Path) -> Path:
    """The model directory both sides load: a random Llama of the workload's size, or the embedded base."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tiltlm.models import build_char_tokenizer, load_model_and_tokenizer, save_pretrained_atomic

    if spec["model"] == "embedded":
        model, tok = load_model_and_tokenizer("embedded")
    else:
        tok = build_char_tokenizer()
        h = spec["hidden"]
        cfg = LlamaConfig(vocab_size=len(tok), hidden_size=h, intermediate_size=4 * h, num_hidden_layers=spec["layers"],
                          num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=128,
                          tie_word_embeddings=False, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                          eos_token_id=tok.eos_token_id)
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
    save_pretrained_atomic(model, tok, out)
    return out


def make_prompts(out: Path, n: int = 2000, kind: str = "task") -> Path:
    """Prompts with answers, as JSONL for both sides: the embedded task's training prompts (``task``, e.g. "63+4=",
    about 8 tokens), or the reference script's own procedural prompts (``trl``, "what is 23+58? ", 16 tokens)."""
    import random

    from tiltlm.tasks.arithmetic import Arithmetic

    if kind == "trl":  # the same recipe as trl_grpo_cpu.py's build_dataset
        rng = random.Random(0)
        pairs = [(rng.randint(10, 99), rng.randint(10, 99)) for _ in range(n)]
        rows = [{"prompt": f"what is {a}+{b}? ", "answer": str(a + b)} for a, b in pairs]
    else:
        rows = [{"prompt": e.prompt, "answer": e.answer} for e in Arithmetic(1, 3).sample_train(random.Random(0), n)]
    out.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return out


# runtime.matmul_dtype [+compile: compile_sampling] [+train: compile_training]
VARIANTS = [f"{dtype}{extra}" for dtype in ("float32", "bfloat16") for extra in ("", "+compile", "+train", "+compile+train")]


def run_tiltlm(model: Path, prompts: Path, spec: dict, ns, work: Path, tag: str, variant: str = "float32") -> dict:
    matmul, *extras = variant.split("+")
    run_dir = work / "tiltlm_runs"
    args = ["train", f"model.path={model}", "task.name=jsonl", f"task.path={prompts}",
            f"rollout.prompts_per_step={PROMPTS}", f"rollout.samples_per_prompt={SAMPLES}",
            f"rollout.max_new_tokens={MAX_NEW}", f"objective.beta={spec['beta']}",
            f"objective.kl_correction={'true' if spec['beta'] else 'false'}", "objective.aggregation=token_mean",
            f"optim.lr={LR}", "optim.warmup_steps=0", "optim.schedule=constant", "optim.grad_clip=1.0",
            "train.skip_zero_gradient_rows=false", "train.updates_per_batch=1", f"train.steps={ns.steps}",
            "eval.prompts=0", f"runtime.threads={ns.threads}", f"runtime.matmul_dtype={matmul}",
            f"runtime.compile_sampling={'true' if 'compile' in extras else 'false'}",
            f"runtime.compile_training={'true' if 'train' in extras else 'false'}",
            "log.progress=false", "log.tensorboard=off",
            f"log.run_dir={run_dir}", f"log.run_name={tag}"]
    rss_file = work / f"{tag}.rss.json"
    subprocess.run([sys.executable, "-c", TILTLM_CHILD, str(rss_file), *args], check=True, stdout=subprocess.DEVNULL)
    metrics = [json.loads(x) for x in (run_dir / tag / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "perf/step_s" in m][ns.warmup:]
    return {"step_s": [m["perf/step_s"] for m in steps],
            "tokens": [m["rollout/response_len"] * PROMPTS * SAMPLES for m in steps],
            "reward": statistics.fmean(m["rollout/reward"] for m in steps),
            "peak_rss_mb": json.loads(rss_file.read_text())["peak_rss_mb"]}


def run_trl(model: Path, prompts: Path, spec: dict, ns, work: Path, tag: str) -> dict:
    out = work / f"{tag}.trl.json"
    cmd = [ns.trl_python, str(TRL_SCRIPT), "--model-dir", str(model), "--prompts-jsonl", str(prompts),
           "--steps", str(ns.steps), "--prompts-per-step", str(PROMPTS), "--num-generations", str(SAMPLES),
           "--max-completion-length", str(MAX_NEW), "--beta", str(spec["beta"]), "--lr", str(LR),
           "--threads", str(ns.threads), "--warmup", str(ns.warmup), "--work-dir", str(work / "trl_work"),
           "--json-out", str(out), "--tag", tag]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    r = json.loads(out.read_text())["results"]
    steps = r["step_s_all"][ns.warmup:]
    gens = r["gen_records_s_tokens_slots"][ns.warmup:]
    return {"step_s": steps, "tokens": [g[1] for g in gens], "reward": r["mean_reward"], "peak_rss_mb": r["peak_rss_mb"]}


def summarise(runs: list[dict]) -> dict:
    steps = [s for r in runs for s in r["step_s"]]
    tokens = [t for r in runs for t in r["tokens"]]
    return {"median_step_s": statistics.median(steps), "tokens_per_s": sum(tokens) / sum(steps),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in runs), "mean_reward": statistics.fmean(r["reward"] for r in runs),
            "steps_timed": len(steps), "step_s_by_run": [r["step_s"] for r in runs]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trl-python", default=os.environ.get("TRL_PYTHON", str(ROOT / ".bench-venv/bin/python")))
    ap.add_argument("--prompts", choices=["task", "trl"], default="task",
                    help="prompts of workloads (a)/(b): the embedded task's, or the reference script's own")
    ap.add_argument("--tiltlm-matmul", nargs="+", default=["float32"], choices=VARIANTS,
                    help="tiltlm's runtime.matmul_dtype, '+compile' adding runtime.compile_sampling=true, '+train' "
                         "runtime.compile_training=true; several run side by side, each against the same TRL runs")
    ap.add_argument("--out", default="docs/vs_trl.json")
    ns = ap.parse_args()
    if not Path(ns.trl_python).exists() or not TRL_SCRIPT.exists():
        sys.exit(f"vs_trl: need TRL's venv python ({ns.trl_python}) and {TRL_SCRIPT}; see ../shared/README.md")
    import torch  # only for the bf16 check; the runs themselves are subprocesses

    if any(v.startswith("bfloat16") for v in ns.tiltlm_matmul) and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        sys.exit("vs_trl: --tiltlm-matmul bfloat16 needs a CPU with bf16 instructions (AVX512-BF16/AMX)")
    work = Path(tempfile.mkdtemp(prefix="vs-trl-"))
    task_prompts = make_prompts(work / "prompts.jsonl")
    random_model_prompts = make_prompts(work / "prompts_trl.jsonl", kind="trl") if ns.prompts == "trl" else task_prompts
    results = {}
    print(f"{'workload':10s} {'tiltlm':8s} {'tiltlm s/step':>13s} {'TRL s/step':>11s} {'speed-up':>9s} "
          f"{'tiltlm tok/s':>12s} {'TRL tok/s':>10s} {'tiltlm MiB':>10s} {'TRL MiB':>8s}", flush=True)
    for name in ns.workloads:
        spec = WORKLOADS[name]
        model = make_model(spec, work / f"model_{name}")
        prompts = task_prompts if spec["model"] == "embedded" else random_model_prompts
        sides: dict[str, list[dict]] = {m: [] for m in ns.tiltlm_matmul} | {"trl": []}
        for rep in range(ns.repeats):  # alternate A B A B: drifting machine load hits both sides alike
            for matmul in ns.tiltlm_matmul:
                sides[matmul].append(run_tiltlm(model, prompts, spec, ns, work,
                                                f"{name}-tiltlm-{matmul.replace('+', '-')}-{rep}", matmul))
            sides["trl"].append(run_trl(model, prompts, spec, ns, work, f"{name}-trl-{rep}"))
        theirs = summarise(sides["trl"])
        results[name] = {"spec": spec, "trl": theirs}
        for matmul in ns.tiltlm_matmul:
            ours = summarise(sides[matmul])
            key = "tiltlm" if matmul == "float32" else f"tiltlm_{matmul}"
            results[name][key] = ours
            results[name]["speedup" if matmul == "float32" else f"speedup_{matmul}"] = (
                theirs["median_step_s"] / ours["median_step_s"])
            print(f"{name:10s} {matmul:8s} {ours['median_step_s']:13.4f} {theirs['median_step_s']:11.4f} "
                  f"{theirs['median_step_s'] / ours['median_step_s']:8.2f}x {ours['tokens_per_s']:12.0f} "
                  f"{theirs['tokens_per_s']:10.0f} {ours['peak_rss_mb']:10.0f} {theirs['peak_rss_mb']:8.0f}", flush=True)
    out = ROOT / ns.out
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"command": " ".join(sys.argv), "prompts": ns.prompts, "tiltlm_matmul": ns.tiltlm_matmul, "repeats": ns.repeats, "steps": ns.steps, "warmup": ns.warmup,
            "threads": ns.threads, "workload": {"prompts": PROMPTS, "samples": SAMPLES, "max_new_tokens": MAX_NEW,
                                                "lr": LR}}
    out.write_text(json.dumps({"meta": meta, "results": results}, indent=1), encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
