"""Equal-results check: given identical completions, tiltlm's GRPO loss and gradients equal TRL's GRPOTrainer's.

    python benchmarks/trl_parity.py [--trl-python .bench-venv/bin/python] [--work DIR]

The tiltlm side (this process) samples one batch from the embedded base -- 8 prompts x 8 completions of <= 8
tokens, rewards from the task's verifier -- plus old-policy and reference log-probs from two perturbed copies of the
model (so the PPO ratio is not 1 and clipping and the KL term both act). The TRL side (benchmarks/trl_side/
parity_trl.py, in TRL's own virtual environment) computes advantages with GRPOTrainer's formula and
``GRPOTrainer._compute_loss`` on exactly these tensors. For each matching pair

    TRL loss_type grpo  <->  objective.aggregation=seq_mean_token_mean
    TRL loss_type bnpo  <->  token_mean          (one micro-batch = the whole batch)
    TRL loss_type dapo  <->  token_mean          (normalised by the tokens of the generation batch)
    TRL loss_type dr_grpo <-> seq_sum_const      (constant = max_completion_length)

at beta 0 and 0.04 (k3 KL in the loss, as TRL; with and without TRL's ``use_bias_correction_kl`` -- on by default in
TRL 1.16 -- matched by ``objective.kl_correction``), it reports the largest absolute difference of the advantages, the
loss and every parameter's gradient; the check passes at 1e-5. Prompts all have the same length: TRL does not pass
position ids, so left-padded prompts would get shifted positions there (tiltlm derives positions from the mask).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tiltlm.advantages import advantages_for
from tiltlm.config import load_config
from tiltlm.models import save_pretrained_atomic
from tiltlm.run import prepare
from tiltlm.trainer import rollout_groups, update

ROOT = Path(__file__).resolve().parents[1]
CASES = [("grpo", "seq_mean_token_mean"), ("bnpo", "token_mean"), ("dapo", "token_mean"),
         ("dr_grpo", "seq_sum_const")]
GROUP, PROMPTS, MAX_NEW = 8, 8, 8


def perturbed(model, scale: float, seed: int):
    import copy

    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in other.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return other.eval()


def tiltlm_side(work: Path) -> dict:
    """Sample the batch, write it for TRL, and compute tiltlm's loss and gradients for every case."""
    base = ["log.progress=false", "task.min_digits=1", "task.max_digits=1", "eval.prompts=0",
            f"rollout.samples_per_prompt={GROUP}", f"rollout.max_new_tokens={MAX_NEW}", "advantage.eps=1e-4",
            "optim.lr=0", "optim.warmup_steps=0", "optim.grad_clip=0"]
    s = prepare(load_config(None, base))
    save_pretrained_atomic(s.model, s.tokenizer, work / "model")
    import random

    examples = s.task.sample_train(random.Random(0), PROMPTS)
    batch = rollout_groups(s, examples, torch.arange(PROMPTS), [""] * PROMPTS, torch.Generator().manual_seed(0))
    assert batch.prompt_mask.all(), "equal-length prompts expected"
    old, ref = perturbed(s.model, 0.003, 1), perturbed(s.model, 0.01, 2)
    batch.sample_logprobs = s.logprobs_without_grad(old, batch)  # pi_old != pi_theta: ratios are not 1
    batch.ref_logprobs = s.logprobs_without_grad(ref, batch)
    tensors = {"prompt_ids": batch.prompt_ids, "prompt_mask": batch.prompt_mask,
               "completion_ids": batch.completion_ids, "completion_mask": batch.completion_mask,
               "rewards": batch.rewards.float(), "old_logprobs": batch.sample_logprobs,
               "ref_logprobs": batch.ref_logprobs}
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(work / "batch.safetensors"))
    results, cases = {}, []
    for loss_type, aggregation in CASES:
        for beta, correction in ((0.0, False), (0.04, False), (0.04, True)):
            name = f"{loss_type}-beta{beta}" + ("-iscorr" if correction else "")
            cases.append({"name": name, "loss_type": loss_type, "beta": beta, "kl_correction": correction})
            c = prepare(load_config(None, [*base, f"objective.beta={beta}", f"objective.aggregation={aggregation}",
                                           f"objective.kl_correction={str(correction).lower()}",
                                           "train.skip_zero_gradient_rows=false"]))
            b = batch.select(torch.arange(batch.size))
            b.advantages = advantages_for(c.advantage, b, b.rewards, c.cfg.advantage)
            b.loss_weights = c.aggregate(b.completion_mask, float(MAX_NEW))

            def logprob_fn(mb, stats, model=c.model):
                from tiltlm.logprobs import sequence_logprobs

                return sequence_logprobs(model, mb.prompt_ids, mb.prompt_mask, mb.completion_ids, mb.completion_mask,
                                         1.0, stats)

            c.model.train()
            stats = update(logprob_fn, b, c.objective, c.optimizer, c.scheduler, c.params, 1024, 0.0)
            results[name] = {"loss": stats["loss/total"], "advantages": b.advantages, "clip": stats["loss/clip_frac"],
                             "grads": {n: p.grad.detach().clone() for n, p in c.model.named_parameters()}}
    (work / "spec.json").write_text(json.dumps({"cases": cases, "rows": batch.size, "group": GROUP,
                                                "max_completion_length": MAX_NEW, "epsilon": 0.2}))
    print(f"batch: {batch.size} completions, rewards mean {batch.rewards.float().mean():.3f}, "
          f"{int(batch.completion_mask.sum())} tokens", flush=True)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trl-python", default=os.environ.get("TRL_PYTHON", str(ROOT / ".bench-venv/bin/python")))
    ap.add_argument("--work", default=None)
    ap.add_argument("--tol", type=float, default=1e-5)
    ns = ap.parse_args()
    torch.set_num_threads(1)
    work = Path(ns.work or tempfile.mkdtemp(prefix="trl-parity-"))
    work.mkdir(parents=True, exist_ok=True)
    ours = tiltlm_side(work)
    subprocess.run([ns.trl_python, str(ROOT / "benchmarks/trl_side/parity_trl.py"), str(work)], check=True,
                   stdout=subprocess.DEVNULL)
    worst = 0.0
    print(f"{'case':24s} {'loss tiltlm':>12s} {'loss TRL':>12s} {'|d loss|':>9s} {'max |d adv|':>11s} "
          f"{'max |d grad|':>12s} {'max |grad|':>10s} {'clipped':>8s}")
    for name, mine in ours.items():
        trl = load_file(str(work / f"trl_{name}.safetensors"))
        d_loss = abs(mine["loss"] - float(trl["loss"]))
        d_adv = float((mine["advantages"].double() - trl["advantages"].double()).abs().max())
        d_grad = max(float((g.double() - trl[f"grad.{n}"].double()).abs().max()) for n, g in mine["grads"].items())
        g_max = max(float(g.abs().max()) for g in mine["grads"].values())
        worst = max(worst, d_loss, d_adv, d_grad)
        print(f"{name:24s} {mine['loss']:12.6f} {float(trl['loss']):12.6f} {d_loss:9.2e} {d_adv:11.2e} "
              f"{d_grad:12.2e} {g_max:10.3e} {mine['clip']:8.1%}")
    ok = worst <= ns.tol
    print(f"largest difference {worst:.2e}: {'PASS' if ok else 'FAIL'} (tolerance {ns.tol:g})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
