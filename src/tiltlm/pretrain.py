"""Build the embedded base: a tiny Llama trained by supervised learning to *partial* competence on a+b.

Deterministic on CPU for a fixed seed and thread count, so the shipped weights can be rebuilt bit for bit:

    tiltlm pretrain --out src/tiltlm/assets/base        # the defaults: seed 0, 550 steps, lr 1e-3, 1 thread

Partial competence is deliberate: RL sharpens what the base can already sometimes do; a base that is always right
or never right gives every group identical rewards and zero gradient.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass

import torch

from tiltlm.batch import left_pad, right_pad
from tiltlm.logprobs import sequence_logprobs
from tiltlm.models import build_char_tokenizer, build_tiny_llama, count_parameters, save_pretrained_atomic
from tiltlm.run import lr_lambda
from tiltlm.tasks.arithmetic import Arithmetic


@dataclass
class PretrainConfig:
    steps: int = 550
    batch_size: int = 128
    lr: float = 1e-3
    warmup_steps: int = 20
    schedule: str = "constant"
    hidden: int = 128
    layers: int = 2
    heads: int = 4
    min_digits: int = 1
    max_digits: int = 3
    seed: int = 0
    threads: int = 1


def sft_loss(model, tokenizer, prompts: list[str], answers: list[str]) -> torch.Tensor:
    """Mean token cross-entropy of ``answer + EOS`` given the prompt (prompt tokens carry no loss)."""
    p_ids, p_mask = left_pad([tokenizer(p)["input_ids"] for p in prompts], tokenizer.pad_token_id)
    c_rows = [tokenizer(a, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for a in answers]
    c_ids, c_mask = right_pad(c_rows, tokenizer.pad_token_id)
    logp, _ = sequence_logprobs(model, p_ids, p_mask, c_ids, c_mask)
    return -(logp * c_mask).sum() / c_mask.sum()


def pretrain(cfg: PretrainConfig, out_dir: str, log=print):
    torch.set_num_threads(cfg.threads)
    tokenizer = build_char_tokenizer()
    model = build_tiny_llama(len(tokenizer), cfg.hidden, cfg.layers, cfg.heads, seed=cfg.seed)
    task = Arithmetic(cfg.min_digits, cfg.max_digits)
    rng = random.Random(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg.warmup_steps, cfg.steps, cfg.schedule))
    log(f"pretrain: {count_parameters(model):,} params, {cfg.steps} steps x {cfg.batch_size} on {task.name}")
    model.train()
    t0 = time.time()
    for step in range(1, cfg.steps + 1):
        batch = task.sample_train(rng, cfg.batch_size)
        loss = sft_loss(model, tokenizer, [e.prompt for e in batch], [e.answer for e in batch])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 50 == 0 or step == cfg.steps:
            log(f"  step {step:4d}  loss {loss.item():.4f}  {time.time() - t0:.0f}s")
    model.eval()
    recipe = json.dumps({"recipe": "tiltlm pretrain", **asdict(cfg)}, indent=2)
    save_pretrained_atomic(model, tokenizer, out_dir, extra_files={"pretrain.json": recipe})
    return model, tokenizer
