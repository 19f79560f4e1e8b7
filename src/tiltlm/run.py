"""What the trainer stands on: ``prepare`` (config -> models, task and registry picks, validated before anything is
written) and ``Run`` (the run directory: resolved config, metrics.jsonl, evaluations, final checkpoint, progress)."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import json
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tiltlm import cpu, lean
from tiltlm.advantages import ADVANTAGE_NEEDS, ADVANTAGES, make_advantage
from tiltlm.atomic import write_atomic
from tiltlm.compare import build_families, evaluate_families, forgetting_rows
from tiltlm.config import Config, dump_config
from tiltlm.errors import TiltError
from tiltlm.evaluate import EvalResult, evaluate
from tiltlm.loggers import ExtraLoggers, check_loggers
from tiltlm.logprobs import sequence_logprobs
from tiltlm.models import load_model_and_tokenizer, save_pretrained_atomic
from tiltlm.objectives import AGGREGATIONS, KL_ESTIMATORS, OBJECTIVES, Objective
from tiltlm.profiling import PhaseTimer
from tiltlm.rollout import ENGINES
from tiltlm.target import MomentEvidence
from tiltlm.tasks import Task, build_task

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def check_compilable(model, key: str, lean_forward: bool) -> None:
    """Say in one line why ``runtime.<key>=true`` (a torch.compile'd lean forward) cannot run, if it cannot."""
    import os
    import shutil

    if not lean.enabled(model):
        why = lean.supported(model) if lean_forward else "runtime.lean_forward is false"
        raise TiltError(f"runtime.{key} needs the lean forward, which this model cannot use: {why}")
    if not (os.environ.get("CXX") or any(shutil.which(c) for c in ("g++", "c++", "clang++"))):
        raise TiltError(f"runtime.{key} needs a C++ compiler for torch.compile (g++ or clang++ on PATH, "
                        f"or CXX): install one or set runtime.{key}=false")


def compile_lean(model, runtime) -> None:
    """Switch the compiled decode step / scoring forward on or off as ``runtime`` says (lean.py)."""
    lean.compile_decoding(model, runtime.compile_sampling)
    lean.compile_training(model, runtime.compile_training)


def pick(registry: dict, name: str, key: str) -> Any:
    """``registry[name]``, or a one-line error naming the key, the closest valid name and all valid names."""
    if name in registry:
        return registry[name]
    close = difflib.get_close_matches(name, list(registry), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise TiltError(f"unknown {key} '{name}' ({hint}valid: {', '.join(registry)})")


def _check_positive(cfg: Config) -> None:
    for key, value in [
        ("rollout.prompts_per_step", cfg.rollout.prompts_per_step),
        ("rollout.samples_per_prompt", cfg.rollout.samples_per_prompt),
        ("rollout.max_new_tokens", cfg.rollout.max_new_tokens),
        ("train.steps", cfg.train.steps),
        ("train.updates_per_batch", cfg.train.updates_per_batch),
        ("train.micro_batch_size", cfg.train.micro_batch_size),
        ("runtime.threads", cfg.runtime.threads),
    ]:
        if value < 1:
            raise TiltError(f"config key '{key}' must be >= 1, got {value}")
    if cfg.rollout.temperature <= 0:
        raise TiltError(f"config key 'rollout.temperature' must be > 0 for training, got {cfg.rollout.temperature}")
    if cfg.objective.beta < 0:
        raise TiltError(f"config key 'objective.beta' must be >= 0, got {cfg.objective.beta}")
    from tiltlm.shaping import SHAPINGS

    if any(not isinstance(w, (int, float)) or not 0 < w < 1 for w in cfg.hints.omegas):
        raise TiltError(f"config key 'hints.omegas' values must be in (0, 1), got {cfg.hints.omegas}")
    if cfg.train.normalise_over not in ("all_rows", "kept_rows"):
        raise TiltError(f"unknown train.normalise_over '{cfg.train.normalise_over}' (valid: all_rows, kept_rows)")
    for name in cfg.shaping.names:
        pick(SHAPINGS, name, "shaping.names entry")
    if cfg.shaping.laser_mode not in ("reward", "penalty", "hybrid"):
        raise TiltError(f"unknown shaping.laser_mode '{cfg.shaping.laser_mode}' (valid: reward, penalty, hybrid)")
    if "overlong_penalty" in cfg.shaping.names and cfg.shaping.overlong_buffer < 1:
        raise TiltError("shaping.overlong_buffer must be >= 1")
    bad = [k for k in cfg.eval.k if not isinstance(k, int) or not 1 <= k <= cfg.eval.samples]
    if cfg.eval.prompts > 0 and bad:
        raise TiltError(f"config key 'eval.k' values must be integers in 1..eval.samples ({cfg.eval.samples}), got {bad}")


@dataclass
class Setup:
    cfg: Config
    task: Task
    model: torch.nn.Module
    tokenizer: Any
    reference: torch.nn.Module | None
    engine: Any
    objective: Objective
    advantage: Callable
    aggregate: Callable
    aggregation_constant: float
    optimizer: torch.optim.Optimizer
    scheduler: Any
    device: torch.device
    rehearsal_pool: Any = None  # RolloutBatch of pi0's stored samples, for objectives that ask for it
    proposal: torch.nn.Module | None = None  # frozen sampling policy q != pi_theta (KL-adaptive DPG)
    needs: set = dataclasses.field(default_factory=set)  # extra log-probs for the objective and the advantage
    teacher: torch.nn.Module | None = None  # frozen teacher for distillation objectives
    families: list = dataclasses.field(default_factory=list)  # (label, Task) never trained on: forgetting
    timer: PhaseTimer = dataclasses.field(default_factory=PhaseTimer)  # train.profile: time per phase

    @property
    def params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    @torch.no_grad()
    def logprobs_without_grad(self, model: torch.nn.Module, batch) -> torch.Tensor:
        """Token log-probs [B, C] of ``batch`` under ``model`` (the frozen reference, or pi_theta on a proposal's
        samples), micro-batched like the update."""
        out = []
        for mb in batch.micro_batches(self.cfg.train.micro_batch_size):
            lp, _ = sequence_logprobs(model, mb.prompt_ids, mb.prompt_mask, mb.completion_ids, mb.completion_mask,
                                      self.cfg.rollout.temperature)
            out.append(torch.nn.functional.pad(lp, (0, batch.completion_ids.shape[1] - lp.shape[1])))
        return torch.cat(out)


def lr_lambda(warmup: int, total: int, schedule: str) -> Callable[[int], float]:
    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        if schedule == "cosine":
            return 0.5 * (1.0 + torch.cos(torch.tensor(torch.pi * min(1.0, progress))).item())
        if schedule == "linear":
            return max(0.0, 1.0 - progress)
        return 1.0

    return fn


def prepare(cfg: Config) -> Setup:
    """Resolve every choice from its registry and load everything; raises TiltError on any bad input."""
    _check_positive(cfg)
    check_loggers(cfg)
    build_objective, _ = pick(OBJECTIVES, cfg.objective.name, "objective.name")
    pick(KL_ESTIMATORS, cfg.objective.kl_estimator, "objective.kl_estimator")
    objective = build_objective(cfg.objective)
    adv_name = objective.default_advantage if cfg.advantage.name == "auto" else cfg.advantage.name
    advantage = make_advantage(pick(ADVANTAGES, adv_name, "advantage.name"))
    needs = set(objective.needs) | ADVANTAGE_NEEDS.get(adv_name, set())
    agg_name = objective.default_aggregation if cfg.objective.aggregation == "auto" else cfg.objective.aggregation
    aggregate = pick(AGGREGATIONS, agg_name, "objective.aggregation")
    engine_cls = pick(ENGINES, cfg.rollout.engine, "rollout.engine")
    dtype = pick(DTYPES, cfg.model.dtype, "model.dtype")
    matmul_dtype = pick(DTYPES, cfg.runtime.matmul_dtype, "runtime.matmul_dtype")
    matmul_dtype = None if matmul_dtype == dtype else matmul_dtype
    schedules = {"constant", "cosine", "linear"}
    pick({s: s for s in schedules}, cfg.optim.schedule, "optim.schedule")
    if cfg.runtime.device.startswith("cuda") and not torch.cuda.is_available():
        raise TiltError(f"runtime.device '{cfg.runtime.device}' requested but CUDA is not available")
    device = torch.device(cfg.runtime.device)
    cpu.configure(cfg.runtime.threads, cfg.runtime.keep_freed_memory)
    torch.manual_seed(cfg.train.seed)

    task = build_task(cfg.task)
    families = build_families(cfg.eval.forgetting)
    if cfg.eval.prompts > 0 and not task.heldout(cfg.eval.prompts):
        raise TiltError(f"task '{cfg.task.name}' has no held-out examples to evaluate on")
    lean_args = (dtype, cfg.runtime.lean_forward, matmul_dtype)
    model, tokenizer = load_model_and_tokenizer(cfg.model.path, *lean_args)
    if matmul_dtype is not None and not lean.enabled(model):
        why = lean.supported(model) if cfg.runtime.lean_forward else "runtime.lean_forward is false"
        raise TiltError(f"runtime.matmul_dtype={cfg.runtime.matmul_dtype} needs the lean forward, which this model "
                        f"cannot use: {why}")
    if matmul_dtype == torch.bfloat16 and not lean.native_bf16(device):
        raise TiltError(f"runtime.matmul_dtype=bfloat16 needs bf16 instructions (AVX512-BF16/AMX or CUDA); this "
                        f"{device.type} emulates them, ~100x slower than float32: use runtime.matmul_dtype=float32")
    for key in ("compile_sampling", "compile_training"):
        if getattr(cfg.runtime, key):
            check_compilable(model, key, cfg.runtime.lean_forward)
    compile_lean(model, cfg.runtime)
    model.to(device)
    reference = None
    if "ref" in needs or (cfg.eval.prompts > 0 and cfg.eval.kl_to_base):
        reference, _ = load_model_and_tokenizer(cfg.model.path, *lean_args)
        reference.to(device).eval().requires_grad_(False)
        compile_lean(reference, cfg.runtime)
    teacher = None
    if "teacher" in needs or getattr(objective, "sample_from", "policy") == "teacher":
        teacher, teacher_tok = load_model_and_tokenizer(cfg.objective.teacher, *lean_args)
        if teacher_tok.get_vocab() != tokenizer.get_vocab():
            raise TiltError(f"objective.teacher '{cfg.objective.teacher}' has a different tokenizer than the student")
        teacher.to(device).eval().requires_grad_(False)
        compile_lean(teacher, cfg.runtime)  # sampling: when the objective samples from it
    constant = cfg.objective.aggregation_constant or float(cfg.rollout.max_new_tokens)
    optimizer = torch.optim.AdamW(  # fused: one kernel for all parameters (3x faster than foreach on CPU here)
        model.parameters(), lr=cfg.optim.lr, betas=tuple(cfg.optim.betas), weight_decay=cfg.optim.weight_decay,
        fused=device.type in ("cpu", "cuda"),
    )
    total = cfg.train.steps * cfg.train.updates_per_batch
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.optim.warmup_steps, total, cfg.optim.schedule))
    proposal = None
    if getattr(objective, "proposal_every", 0) > 0:  # KL-adaptive DPG samples from q, initially pi0
        proposal = copy.deepcopy(model).eval().requires_grad_(False)
    if getattr(objective, "sample_from", "policy") == "teacher":
        proposal = teacher  # off-policy: rollouts come from the teacher and are never swapped
    engine = engine_cls(proposal or model, tokenizer.eos_token_id, tokenizer.pad_token_id)
    s = Setup(cfg, task, model, tokenizer, reference, engine, objective, advantage, aggregate, constant,
              optimizer, scheduler, device, proposal=proposal, needs=needs, teacher=teacher, families=families,
              timer=PhaseTimer(cfg.train.profile, cuda=device.type == "cuda"))
    if getattr(objective, "needs_rehearsal", False):
        s.rehearsal_pool = build_rehearsal_pool(s)
    target = getattr(objective, "target", None)
    if target is not None and isinstance(target.evidence, MomentEvidence):
        fit_moment_target(s, target.evidence)
    return s


def _sample_pi0(s: Setup, n_prompts: int, seed: int):
    """n_prompts x samples_per_prompt samples of the initial policy (T = 1), scored: (generation, correct, rewards)."""
    from tiltlm.rollout import decode_completions

    c = s.cfg
    examples = s.task.sample_train(random.Random(seed), n_prompts)
    G = c.rollout.samples_per_prompt
    gen = s.engine.generate([s.tokenizer(e.prompt)["input_ids"] for e in examples], G, c.rollout.max_new_tokens,
                            1.0, torch.Generator(device=s.device).manual_seed(seed))
    texts = decode_completions(s.tokenizer, gen.completion_ids, gen.completion_mask)
    scores = [s.task.score(examples[i // G], t, bool(f)) for i, (t, f) in enumerate(zip(texts, gen.finished))]
    return gen, torch.tensor([sc.correct for sc in scores]), torch.tensor([sc.reward for sc in scores])


def fit_moment_target(s: Setup, evidence: MomentEvidence) -> None:
    """GDC's first step: solve E_p[r] = mu for lambda on samples of pi0 (proposal = prior, so the weights are flat)."""
    _, _, rewards = _sample_pi0(s, s.cfg.objective.rehearsal_prompts, s.cfg.train.seed + 2)
    zeros = torch.zeros_like(rewards, dtype=torch.float64)
    if rewards.min() == rewards.max():
        raise TiltError("objective.evidence=moment: every pi0 sample got the same reward, the moment cannot be fitted")
    evidence.fit(rewards.unsqueeze(-1), zeros, zeros)


def build_rehearsal_pool(s: Setup):
    """pi0's correct responses on prompts it solved k/k times, with their per-token log pi0 (DPH-RL's D_pef)."""
    from tiltlm.batch import RolloutBatch

    G = s.cfg.rollout.samples_per_prompt
    # its own random stream (seed + 1): the training prompts are not shifted by building the pool
    gen, correct, _ = _sample_pi0(s, s.cfg.objective.rehearsal_prompts, s.cfg.train.seed + 1)
    keep = correct.view(-1, G).all(-1).repeat_interleave(G)
    if not keep.any():
        raise TiltError("dph: pi0 solved no pre-sampled prompt k/k times; raise objective.rehearsal_prompts")
    pool = RolloutBatch(gen.prompt_ids, gen.prompt_mask, gen.completion_ids, gen.completion_mask, gen.sample_logprobs,
                        torch.full((len(correct),), -1), gen.finished, rewards=correct.float(), correct=correct,
                        rehearsal=torch.ones(len(correct), dtype=torch.bool))
    return pool.select(keep)


class Run:
    """The run directory. Created only after ``prepare`` succeeded, so bad input never leaves a half-made run."""

    def __init__(self, cfg: Config, path: Path):
        self.cfg, self.dir = cfg, path
        self.eval_at_start = True
        self._loggers = ExtraLoggers(cfg, path)  # TensorBoard / wandb, when enabled (before opening metrics.jsonl)
        self._metrics = (path / "metrics.jsonl").open("a", encoding="utf-8")

    @classmethod
    def create(cls, cfg: Config, s: Setup) -> Run:
        parent = Path(cfg.log.run_dir)
        name = cfg.log.run_name or f"{cfg.objective.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        path, i = parent / name, 1
        while path.exists():
            i += 1
            path = parent / f"{name}-{i}"
        path.mkdir(parents=True)
        write_atomic(path / "config.yaml", dump_config(cfg))
        return cls(cfg, path)

    def log(self, metrics: dict) -> None:
        self._metrics.write(json.dumps(metrics) + "\n")
        self._metrics.flush()
        self._loggers.log(metrics)

    def evaluate(self, s: Setup, step: int, log: bool = True, name: str | None = None) -> EvalResult:
        """Held-out evaluation (same prompts and seed every time); ``name`` also writes ``eval_<name>.json``."""
        c = self.cfg
        result = evaluate(
            s.model, s.tokenizer, s.task, s.task.heldout(c.eval.prompts), c.eval.samples, list(c.eval.k) or None,
            c.rollout.max_new_tokens, c.eval.temperature, seed=c.train.seed + 10_000,
            reference=s.reference if c.eval.kl_to_base else None,
        )
        if log:
            self.log({"step": step, **result.as_metrics()})
        if name:
            write_atomic(self.dir / f"eval_{name}.json", json.dumps({"step": step, **result.as_dict()}, indent=1))
        return result

    def families_success(self, s: Setup) -> dict[str, list[float]]:
        """Per-prompt success rates on the task families never trained on (``eval.forgetting``)."""
        c = self.cfg
        return evaluate_families(s.model, s.tokenizer, s.families, c.eval.forgetting_prompts, c.eval.samples,
                                 c.rollout.max_new_tokens, c.eval.temperature, seed=c.train.seed + 20_000)

    def write_profile(self, timer: PhaseTimer) -> None:
        write_atomic(self.dir / "profile.json", timer.to_json())
        print(timer.table())

    def write_forgetting(self, before: dict[str, list[float]], after: dict[str, list[float]]) -> list[dict]:
        rows = forgetting_rows(before, after)
        write_atomic(self.dir / "forgetting.json", json.dumps({"families": rows}, indent=1))
        return rows

    def save_final(self, s: Setup) -> Path:
        self._metrics.close()
        self._loggers.close()
        return save_pretrained_atomic(s.model, s.tokenizer, self.dir / "final")

    def progress(self, progress) -> contextlib.AbstractContextManager:
        from tiltlm.progress import TrainProgress

        return TrainProgress(self.cfg.train.steps, enabled=self.cfg.log.progress if progress is None else progress)


