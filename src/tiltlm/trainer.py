"""The training loop: move pi_theta toward the target pi*(y|x) ∝ pi0(y|x) exp(r(x,y)/beta).

For the policy-gradient family (GRPO and kin), with G samples per prompt from pi_old:

    A_i    = advantage(r_1..r_G)_i                                   (advantages.py)
    loss   = sum_{i,t} w_{i,t} * [ max(-A_i rho_{i,t}, -A_i clip(rho_{i,t})) + beta KL_{i,t} ]
(other objectives swap the signal r for a pseudo-reward and the per-token loss: objectives/)
    rho    = pi_theta(y_t|s_t) / pi_old(y_t|s_t),   w = aggregation weights fixed on the full batch

Each step, top to bottom:
  1. select prompts            task.sample_train
  2. generate                  G completions per prompt, recording each token's sampling log-prob (= pi_old)
  3. score                     the task's verifier -> rewards
  4. attach log-probs          only what the objective ``needs`` (reference log-probs iff beta > 0)
  5. advantages, loss weights  from the registries chosen in the config
  6. update                    mu optimizer steps over micro-batches; rows with exactly zero gradient skipped
  7. log, evaluate, checkpoint
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from tiltlm.advantages import advantages_for
from tiltlm.batch import RolloutBatch
from tiltlm.config import Config
from tiltlm.evaluate import EvalResult
from tiltlm.hints import hinted
from tiltlm.logprobs import sequence_logprobs
from tiltlm.profiling import PhaseTimer
from tiltlm.rollout import decode_completions
from tiltlm.run import Run, Setup, prepare
from tiltlm.shaping import shape_rewards


@dataclass
class TrainResult:
    run_dir: str
    steps: int
    base_eval: EvalResult | None
    final_eval: EvalResult | None
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0
    forgetting: list[dict] | None = None  # one row per eval.forgetting family: base, tuned, change, se


def train(cfg: Config, progress=None) -> TrainResult:
    s: Setup = prepare(cfg)  # validates everything and loads models *before* anything is written
    run = Run.create(cfg, s)
    rng = random.Random(cfg.train.seed)
    sampler_rng = torch.Generator(device=s.device).manual_seed(cfg.train.seed)
    P = cfg.rollout.prompts_per_step
    shaping = dataclasses.replace(cfg.shaping, overlong_max=cfg.shaping.overlong_max or cfg.rollout.max_new_tokens)
    base_eval = run.evaluate(s, step=0, name="start") if cfg.eval.prompts > 0 and run.eval_at_start else None
    families_before = run.families_success(s) if s.families else None  # forgetting: families never trained on
    history, t_start, step = [], time.perf_counter(), 0

    def policy_logprobs(mb: RolloutBatch, stats: set) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return sequence_logprobs(s.model, mb.prompt_ids, mb.prompt_mask, mb.completion_ids, mb.completion_mask,
                                 cfg.rollout.temperature, stats)

    with run.progress(progress) as bar:
        for step in range(1, cfg.train.steps + 1):
            t0 = time.perf_counter()
            s.timer.start_step()
            if hasattr(s.objective, "schedule"):  # objectives with annealed coefficients (KDRL)
                s.objective.schedule(step, cfg.train.steps)
            # 1-3. select prompts, generate G completions each (sampling log-probs recorded), score
            batch = generate_and_score(s, rng, sampler_rng, P, shaping)
            rounds = 1
            if cfg.rollout.dynamic_sampling:  # DAPO: keep only groups with mixed rewards, generate more until P
                batch, rounds = fill_informative_groups(s, batch, rng, sampler_rng, shaping)
            t_gen = time.perf_counter()
            # 4. attach the log-probs the objective needs (never computed otherwise)
            adaptive = s.proposal is not None and getattr(s.objective, "proposal_every", 0) > 0
            with s.timer.phase("logprobs"):
                if "ref" in s.needs:
                    batch.ref_logprobs = s.logprobs_without_grad(s.reference, batch)
                if "teacher" in s.needs:
                    batch.teacher_logprobs = s.logprobs_without_grad(s.teacher, batch)
                if adaptive:  # samples came from a frozen proposal q: pi_theta's own log-probs too
                    batch.policy_logprobs = s.logprobs_without_grad(s.model, batch)
            # 5. the objective's per-sequence signal (reward or pseudo-reward) -> advantages; aggregation weights
            batch.advantages = advantages_for(s.advantage, batch, s.objective.sequence_signal(batch), cfg.advantage)
            weight_mask = batch.completion_mask * batch.finished.unsqueeze(-1) if cfg.shaping.filter_truncated else batch.completion_mask
            if cfg.train.normalise_over == "kept_rows":  # normalise over the rows that can move the parameters
                weight_mask = weight_mask * s.objective.rows_with_gradient(batch).unsqueeze(-1)
            batch.loss_weights = s.aggregate(weight_mask, s.aggregation_constant)
            learn = batch
            if s.rehearsal_pool is not None:  # stored samples of pi0 join the batch (DPH-RL), with their own weights
                learn = RolloutBatch.concat(batch, rehearsal_rows(s, rng), s.tokenizer.pad_token_id)
            # 6. update: mu optimizer steps; zero-gradient rows left out (their weights stay in the normaliser)
            rows = s.objective.rows_with_gradient(learn) if cfg.train.skip_zero_gradient_rows else torch.ones(learn.size, dtype=torch.bool)
            train_batch = learn.select(rows)
            if not s.model.training:  # train() walks every module; generation leaves a lean model in train mode
                s.model.train()
            for _ in range(cfg.train.updates_per_batch):
                update_stats = update(policy_logprobs, train_batch, s.objective, s.optimizer, s.scheduler, s.params,
                                      cfg.train.micro_batch_size, cfg.optim.grad_clip, s.timer)
            t_end = time.perf_counter()
            # 7. swap the proposal (KL-adaptive DPG), log, evaluate, checkpoint
            swapped = adaptive and step % s.objective.proposal_every == 0 and s.objective.policy_is_closer(batch)
            if swapped:
                s.proposal.load_state_dict(s.model.state_dict())
            metrics = {
                "step": step,
                "rollout/reward": batch.rewards.mean().item(),
                "rollout/pass@1": batch.correct.float().mean().item(),
                "rollout/response_len": batch.lengths.float().mean().item(),
                "rollout/finished": batch.finished.float().mean().item(),
                "rollout/entropy": (batch.sample_entropy.sum() / batch.completion_mask.sum()).item(),
                "rollout/generation_rounds": rounds,
                "rollout/hinted_frac": batch.hinted.float().mean().item(),
                "rollout/rows_trained": int(rows.sum()),
                "adv/mean": batch.advantages.mean().item(),
                "adv/abs_mean": batch.advantages.abs().mean().item(),
                "adv/std": batch.advantages.std().item() if batch.size > 1 else 0.0,
                "adv/zero_frac": (batch.advantages == 0).float().mean().item(),  # rows that cannot move the policy
                **update_stats,
                "optim/lr": s.scheduler.get_last_lr()[0],
                "select/proposal_swapped": float(swapped),
                "perf/step_s": t_end - t0,
                "perf/rollout_s": t_gen - t0,  # select + generate + score
                "perf/tokens_per_s": batch.lengths.sum().item() / (t_end - t0),
            }
            if cfg.eval.prompts > 0 and cfg.eval.every and step % cfg.eval.every == 0 and step != cfg.train.steps:
                with s.timer.phase("evaluation"):
                    metrics.update(run.evaluate(s, step, log=False).as_metrics())  # logged with the step
            with s.timer.phase("logging"):
                bar.advance(metrics)
                history.append(metrics)
            run.log({**metrics, **s.timer.end_step()})  # with --profile: perf/<phase>_s of this step
            if cfg.train.time_budget_s and time.perf_counter() - t_start > cfg.train.time_budget_s:
                break
    train_seconds = time.perf_counter() - t_start
    final_eval = run.evaluate(s, step, name="final") if cfg.eval.prompts > 0 else None
    forgetting = run.write_forgetting(families_before, run.families_success(s)) if families_before else None
    run.save_final(s)
    if cfg.train.profile:
        run.write_profile(s.timer)
    return TrainResult(str(run.dir), step, base_eval, final_eval, history, train_seconds, forgetting)


def generate_and_score(s: Setup, rng: random.Random, sampler_rng: torch.Generator, n_prompts: int, shaping,
                       first_group: int = 0) -> RolloutBatch:
    """Steps 1-3 for ``n_prompts`` prompts: select, generate G completions each, score (and shape) them; groups
    that all fail are re-posed with solution hints when ``hints.omegas`` is set (GHPO, hints.py)."""
    examples = s.task.sample_train(rng, n_prompts)
    group_ids = first_group + torch.arange(n_prompts)
    batch = rollout_groups(s, examples, group_ids, [""] * n_prompts, sampler_rng)
    for omega in s.cfg.hints.omegas:
        failed = [g for g in range(n_prompts) if not batch.correct[batch.group_ids == group_ids[g]].any()]
        if not failed:
            break
        posed = [hinted(examples[g], omega) for g in failed]
        keep = ~torch.isin(batch.group_ids, group_ids[failed])
        redo = rollout_groups(s, [e for e, _ in posed], group_ids[failed], [h for _, h in posed], sampler_rng,
                              keys=[examples[g].prompt for g in failed])
        batch = RolloutBatch.concat(batch.select(keep), redo, s.tokenizer.pad_token_id) if keep.any() else redo
    if s.cfg.shaping.names:  # length-based shaping (DAPO overlong, LASER); correctness stays as scored
        batch.rewards = shape_rewards(batch.rewards, batch.correct, batch.lengths, batch.group_ids, shaping)
    return batch


def rollout_groups(s: Setup, examples: list, group_ids: torch.Tensor, hints: list[str], sampler_rng,
                   keys: list[str] | None = None) -> RolloutBatch:
    """G completions per example, scored as hint + completion (the hint is already part of the prompt)."""
    cfg, G = s.cfg, s.cfg.rollout.samples_per_prompt
    prompt_ids = [s.tokenizer(e.prompt)["input_ids"] for e in examples]
    with s.timer.phase("generation"):
        gen = s.engine.generate(prompt_ids, G, cfg.rollout.max_new_tokens, cfg.rollout.temperature, sampler_rng)
    with s.timer.phase("scoring"):
        texts = decode_completions(s.tokenizer, gen.completion_ids, gen.completion_mask)
        scores = [s.task.score(examples[i // G], hints[i // G] + text, bool(fin))
                  for i, (text, fin) in enumerate(zip(texts, gen.finished))]
    keys = keys or [e.prompt for e in examples]
    return RolloutBatch(
        prompt_ids=gen.prompt_ids, prompt_mask=gen.prompt_mask,
        completion_ids=gen.completion_ids, completion_mask=gen.completion_mask,
        sample_logprobs=gen.sample_logprobs, finished=gen.finished,
        sample_mean_logsoftmax=gen.mean_logsoftmax, sample_entropy=gen.entropy,
        group_ids=group_ids.repeat_interleave(G),
        rewards=torch.tensor([sc.reward for sc in scores]),
        correct=torch.tensor([sc.correct for sc in scores]),
        prompt_keys=torch.tensor([prompt_key(keys[i // G]) for i in range(len(scores))]),
        hinted=torch.tensor([bool(hints[i // G]) for i in range(len(scores))]),
    )


def prompt_key(text: str) -> int:
    """A stable 63-bit identity of a prompt (for per-prompt state such as the shrinkage baseline's Beta counts)."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") >> 1


def informative_groups(rewards: torch.Tensor, group_ids: torch.Tensor) -> torch.Tensor:
    """Rows of groups whose rewards are not all equal (DAPO dynamic sampling keeps only these)."""
    _, inv = torch.unique(group_ids, return_inverse=True)
    n = int(inv.max()) + 1
    lo = torch.full((n,), float("inf")).scatter_reduce(0, inv, rewards.float(), "amin")
    hi = torch.full((n,), float("-inf")).scatter_reduce(0, inv, rewards.float(), "amax")
    return (hi > lo)[inv]


def fill_informative_groups(s: Setup, batch: RolloutBatch, rng, sampler_rng, shaping) -> tuple[RolloutBatch, int]:
    """DAPO dynamic sampling (Yu et al. 2025): drop groups with equal rewards and generate prompts_per_step more
    prompts at a time until prompts_per_step informative groups exist (or max_generation_rounds is reached), then
    truncate to exactly that many groups."""
    P, G, rounds = s.cfg.rollout.prompts_per_step, s.cfg.rollout.samples_per_prompt, 1
    batch = batch.select(informative_groups(batch.rewards, batch.group_ids))
    while batch.size < P * G and rounds < s.cfg.rollout.max_generation_rounds:
        first = int(batch.group_ids.max()) + 1 if batch.size else 0
        more = generate_and_score(s, rng, sampler_rng, P, shaping, first_group=first)
        more = more.select(informative_groups(more.rewards, more.group_ids))
        batch = RolloutBatch.concat(batch, more, s.tokenizer.pad_token_id) if batch.size else more
        rounds += 1
    return batch.select(torch.arange(min(batch.size, P * G))), rounds


def rehearsal_rows(s: Setup, rng: random.Random) -> RolloutBatch:
    pool = s.rehearsal_pool
    rows = torch.tensor([rng.randrange(pool.size) for _ in range(s.objective.rehearsal_rows)])
    picked = pool.select(rows)
    picked.loss_weights = s.objective.rehearsal_weights(picked.completion_mask)
    return picked


def update(
    logprob_fn: Callable[[RolloutBatch, set], tuple[torch.Tensor, dict[str, torch.Tensor]]],
    batch: RolloutBatch,
    objective,
    optimizer: torch.optim.Optimizer,
    scheduler,
    params: list[torch.nn.Parameter],
    micro_batch_size: int,
    grad_clip: float,
    timer: PhaseTimer | None = None,
) -> dict:
    """One optimizer step on ``batch``: accumulate sum(w * token_loss) over micro-batches, clip, step.

    ``logprob_fn(micro_batch, stats) -> ([b, C] log-probs, {stat: [b, C]})`` of the current policy (with grad): a
    transformer here, a table on the exact test bed -- the rest of the step is shared. Whole-distribution statistics
    (``logprobs.TOKEN_STATS``: entropy, mean log-softmax) are computed only if the objective's ``token_stats`` asks.
    """
    timer = timer or PhaseTimer()
    optimizer.zero_grad(set_to_none=True)  # the first backward stores its gradient instead of adding it to zeros
    sums: dict[str, float] = {}
    tokens = max(1, int(batch.completion_mask.sum()))
    total_loss = 0.0
    for mb in batch.micro_batches(micro_batch_size) if batch.size else []:
        with timer.phase("forward_backward"):
            logp, extra = logprob_fn(mb, getattr(objective, "token_stats", set()))
            mb.token_stats = extra
            token_loss, stats = objective.token_loss(logp, mb)
            loss = (token_loss * mb.loss_weights).sum()
            if hasattr(objective, "batch_loss"):  # a regulariser on a micro-batch statistic (SIREN), added once
                extra_loss, extra_stats = objective.batch_loss(logp, mb)
                loss = loss + extra_loss * mb.size / batch.size
                for name, value in extra_stats.items():
                    sums[name] = sums.get(name, 0.0) + value * int(mb.completion_mask.sum())
            loss.backward()
            total_loss += loss.item()
            mask = mb.completion_mask.bool()
            for name, value in stats.items():
                sums[name] = sums.get(name, 0.0) + value[mask].sum().item()
    with timer.phase("optimizer"):
        for p in params:  # a parameter no row reached (or an empty batch) still steps, with a zero gradient
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
        optimizer.step()
        scheduler.step()
    out = {"loss/total": total_loss, "optim/grad_norm": float(grad_norm)}
    out.update({k: v / tokens for k, v in sums.items()})  # token means of the objective's statistics
    return out
