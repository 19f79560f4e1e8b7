"""Run configuration: dataclasses with one doc string per field, YAML (safe loader) + dotted CLI overrides.

Strictness is the point: an unknown key is an error naming the key and the closest valid one; a value of the
wrong type names the expected type. The defaults are the embedded quickstart recipe (GRPO on a+b).

Batch vocabulary, defined once: ``rollout.prompts_per_step`` prompts, each with ``rollout.samples_per_prompt``
completions (a group); ``train.micro_batch_size`` sequences per forward/backward; ``train.updates_per_batch`` (mu)
optimizer steps on each rollout batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tiltlm.errors import TiltError


def f(default: Any, doc: str) -> Any:
    """A dataclass field with a doc string (shown by ``tiltlm config``); mutable defaults are copied."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc})
    return field(default=default, metadata={"doc": doc})


@dataclass
class ModelConfig:
    path: str = f("embedded", "'embedded' (the shipped tiny base) or a local Hugging Face causal-LM directory")
    dtype: str = f("float32", "parameter dtype: float32 | bfloat16")


@dataclass
class TaskConfig:
    name: str = f("arithmetic", "task: arithmetic | jsonl | reasoning_gym")
    min_digits: int = f(1, "arithmetic: fewest digits per operand (difficulty knob)")
    max_digits: int = f(3, "arithmetic: most digits per operand (difficulty knob)")
    path: str | None = f(None, "jsonl: file with one {'prompt': ..., 'answer': ...} object per line")
    heldout_path: str | None = f(None, "jsonl: separate held-out file (default: a fixed 10% hash split)")
    dataset: str | None = f(None, "reasoning_gym: dataset name, e.g. chain_sum")
    size: int = f(2000, "reasoning_gym: number of training items generated")
    options: dict = f({}, "reasoning_gym: keyword arguments for reasoning_gym.create_dataset")


@dataclass
class RolloutConfig:
    engine: str = f("hf", "rollout engine (registry ENGINES): hf")
    prompts_per_step: int = f(64, "prompts sampled per optimizer batch")
    samples_per_prompt: int = f(8, "completions per prompt (the group size G)")
    max_new_tokens: int = f(8, "generation length limit; unfinished completions score 0")
    temperature: float = f(1.0, "sampling temperature (log-probs are of the tempered distribution)")
    dynamic_sampling: bool = f(False, "DAPO: drop groups whose rewards are all equal and generate more to refill")
    max_generation_rounds: int = f(4, "dynamic_sampling: at most this many generation rounds per step")


@dataclass
class ObjectiveConfig:
    name: str = f("grpo", "objective (registry OBJECTIVES); `tiltlm algorithms` lists them")
    beta: float = f(0.0, "pg: KL coefficient (0 = no reference model); f-DPG family: target temperature, pi* ∝ pi0 exp(r/beta)")
    clip_low: float = f(0.2, "PPO clip: ratio lower bound is 1 - clip_low")
    clip_high: float = f(0.2, "PPO clip: ratio upper bound is 1 + clip_high (DAPO clip-higher uses 0.28)")
    surrogate: str = f("ppo", "pg objectives: how the ratio enters the loss: ppo | dual_clip | gspo | cispo")
    entropy_coef: float = f(0.0, "pg objectives: entropy bonus, loss -= coef * H(pi(.|s_t)) per token")
    dual_clip_c: float = f(3.0, "dual_clip: for A < 0 the token loss is capped at -A * c")
    kl_estimator: str = f("k3", "per-token KL estimator: k1 | k2 | k3")
    kl_placement: str = f("loss", "where the KL goes: loss (GRPO) | reward (KL-regularised RL, use k1)")
    kl_correction: bool = f(False, "loss placement: multiply the KL term by pi/pi_old (unbiased reverse KL for k3)")
    evidence: str = f("reward", "f-DPG target evidence: reward (pi0 exp(r/beta)) | constraint (pi0 * 1[correct]) | moment (E_p[r] = objective.moment, GDC)")
    moment: float = f(0.5, "evidence=moment: the target mean reward, e.g. 0.5 = 'correct half the time'")
    divergence: str = f("fkl", "fdpg: fkl | rkl | js | tv | alpha")
    alpha: float = f(0.5, "fdpg: alpha of the alpha-divergence")
    proposal_every: int = f(0, "dpg/fdpg: > 0 samples from a frozen proposal, swapped for the policy when closer to the target (KL-adaptive DPG), checked every N steps")
    max_seq_weight: float = f(0.0, "dpg/fdpg off-policy: truncate the sequence importance weight pi/q (0 = off)")
    z_estimate: str = f("group", "f-DPG: log Z per prompt group (group) or over all samples seen (running)")
    rehearsal_coef: float = f(0.01, "dph: weight of the divergence to pi0 on its stored samples")
    rehearsal_divergence: str = f("fkl", "dph: generator on rehearsal rows: fkl (KL(pi0||pi)) | js")
    rehearsal_rows: int = f(64, "dph: rehearsal rows added to each optimizer batch")
    rehearsal_prompts: int = f(256, "dph: prompts pre-sampled (x samples_per_prompt) from pi0 to build the pool")
    teacher: str = f("embedded-teacher", "distillation: teacher model ('embedded-teacher' or a local HF directory)")
    distill_lambda: float = f(1.0, "opd: reward scale lambda (1 = OPD, > 1 = ExOPD extrapolation; pi_ref = the base)")
    distill_reward_coef: float = f(0.0, "opd: weight of the task's group advantage added to the distillation signal")
    lpreg_kappa: float = f(0.02, "lp_reg: min-p threshold relative to the top probability")
    lpreg_coef: float = f(1.0, "lp_reg: weight of the k3 term on protected tokens")
    siren_coef: float = f(0.005, "siren: weight c of (H_sel - H_anchor)^2")
    kd_coef_start: float = f(5e-3, "kdrl: KL-to-teacher coefficient at the first step (annealed linearly)")
    kd_coef_end: float = f(1e-3, "kdrl: KL-to-teacher coefficient at the last step")
    kd_mask_correct: bool = f(True, "kdrl: no distillation on responses that already earn reward")
    anchor_alpha: float = f(0.5, "rlad: weight of the teacher in the ratio's anchor (0 = GRPO)")
    anchor_mixture: str = f("log", "rlad: log (geometric) | linear mixture of teacher and old policy")
    forward_kl_coef: float = f(0.0, "rapo: lambda, weight of the forward-KL penalty KL(pi~ || pi_theta)")
    forward_kl_alpha: float = f(1.0, "rapo: temperature of the reward-tilted reference pi~ ∝ pi_ref exp(r / alpha)")
    aggregation: str = f("auto", "loss aggregation: auto (the objective's) | seq_mean_token_mean | token_mean | seq_mean_token_sum | seq_sum_const")
    aggregation_constant: float = f(0.0, "seq_sum_const normaliser (0 = rollout.max_new_tokens)")


@dataclass
class AdvantageConfig:
    name: str = f("auto", "advantage estimator (registry ADVANTAGES); auto = the objective's default")
    eps: float = f(1e-6, "added to the std in normalised advantages")
    positive_weight: float = f(0.1, "weighted_pn (W-REINFORCE): advantage of a correct response (wrong ones get -1)")
    ace_alpha: float = f(1.0, "ace: strength of the confidence penalty on wrong responses")
    prior_a: float = f(1.0, "shrinkage: Beta prior successes for an unseen prompt")
    prior_b: float = f(1.0, "shrinkage: Beta prior failures for an unseen prompt")
    forget: float = f(0.9, "shrinkage: forgetting factor applied to a prompt's Beta counts at each visit")
    z_crit: float = f(1.96, "shrinkage: |z| above this rejects the prior (falls back to the group mean)")


@dataclass
class ShapingConfig:
    names: list = f([], "reward shaping applied in order (registry SHAPINGS): overlong_penalty, laser, laser_d")
    filter_truncated: bool = f(False, "DAPO overlong filtering: responses cut at max_new_tokens carry no loss")
    overlong_max: int = f(0, "overlong_penalty: hard length limit L_max (0 = rollout.max_new_tokens)")
    overlong_buffer: int = f(2, "overlong_penalty: soft buffer L_buf before L_max")
    overlong_factor: float = f(1.0, "overlong_penalty: penalty at L = L_max")
    laser_alpha: float = f(0.5, "laser: length bonus / penalty alpha")
    laser_target: int = f(4, "laser: target length L_T in tokens")
    laser_mode: str = f("reward", "laser: reward (+alpha if L <= L_T) | penalty (-alpha if L > L_T) | hybrid")
    laser_wrong: float = f(-0.5, "laser: reward of a wrong response")
    laser_d_min: int = f(2, "laser_d: smallest candidate target length")
    laser_d_max: int = f(8, "laser_d: largest candidate target length")
    laser_d_step: int = f(1, "laser_d: step of the candidate grid")


@dataclass
class HintConfig:
    omegas: list = f([], "GHPO hint stages: solution-prefix ratios tried in order on all-fail groups, e.g. [0.25, 0.5, 0.75]")


@dataclass
class OptimConfig:
    lr: float = f(3e-4, "peak learning rate (AdamW)")
    betas: list = f([0.9, 0.99], "AdamW betas")
    weight_decay: float = f(0.0, "AdamW weight decay")
    warmup_steps: int = f(30, "linear warm-up steps (optimizer steps)")
    schedule: str = f("constant", "after warm-up: constant | cosine | linear")
    grad_clip: float = f(1.0, "max global grad norm (0 = off)")


@dataclass
class TrainConfig:
    steps: int = f(500, "optimizer batches (rollout steps) to run")
    updates_per_batch: int = f(1, "mu: optimizer steps per rollout batch (ratio != 1 after the first)")
    micro_batch_size: int = f(256, "sequences per forward/backward (gradient accumulation; loss is invariant)")
    skip_zero_gradient_rows: bool = f(
        True, "leave rows whose loss gradient is exactly zero (e.g. all-equal groups at beta=0) out of the backward"
    )
    normalise_over: str = f(
        "all_rows", "loss normaliser: all_rows (exact, skipping changes nothing) | kept_rows (rows with a gradient only: "
        "DAPO dynamic sampling, PSR/NSR subsets)"
    )
    time_budget_s: float = f(0.0, "stop after this many seconds of training (0 = no limit)")
    seed: int = f(0, "seed for prompts, sampling and init")
    profile: bool = f(False, "time every phase of every step; print the table at the end, write profile.json")


@dataclass
class EvalConfig:
    every: int = f(100, "held-out evaluation every N steps (0 = only at the start and the end)")
    prompts: int = f(200, "held-out prompts per evaluation")
    samples: int = f(16, "samples per held-out prompt")
    k: list = f([], "pass@k values reported ([] = 1, 2, 4, ..., eval.samples)")
    temperature: float = f(1.0, "sampling temperature for evaluation")
    kl_to_base: bool = f(True, "also estimate KL(pi || base) on the held-out samples (keeps a frozen copy of the base)")
    forgetting: list = f([], "task mappings not trained on, e.g. {name: reasoning_gym, dataset: chain_sum}, "
                             "evaluated before and after training -> forgetting.json")
    forgetting_prompts: int = f(100, "held-out prompts per forgetting family")


@dataclass
class RuntimeConfig:
    threads: int = f(1, "torch CPU threads; on shared 2-core machines 1 is often fastest")
    device: str = f("cpu", "cpu | cuda | cuda:N")
    lean_forward: bool = f(True, "score and sample Llama/Qwen2 models with the lean forward (packed tokens, shared "
                                 "prompts; same math, lean.py); false = the plain transformers forward")
    matmul_dtype: str = f("float32", "dtype of the decoder layers' projections on the lean forward: float32 (exact) "
                                     "| bfloat16 (mixed precision: bf16 matmul inputs, everything else and the "
                                     "parameters in model.dtype; fast on CPUs with AVX512-BF16/AMX, refused on CPUs "
                                     "without them, where PyTorch emulates bf16; see docs/performance.md)")
    compile_sampling: bool = f(False, "torch.compile the lean forward's prefill and decode step, one compiled call "
                                      "per token that also draws it (inductor C++ kernels, static cache shapes, "
                                      "prompt widths bucketed; needs a C++ compiler): "
                                      "the first batch of each shape pays the compile (5-40 s cold, a few s warm), "
                                      "then sampling a small model runs faster (docs/performance.md)")
    compile_training: bool = f(False, "torch.compile the lean forward that scores completions (training forward + "
                                      "backward, reference/teacher log-probs) in a padded static-shape layout; needs "
                                      "a C++ compiler; each new batch shape pays a compile (~20 s here); batches the "
                                      "padding would grow by more than 1.5x run packed (docs/performance.md)")
    keep_freed_memory: bool = f(True, "tune glibc malloc so freed tensors keep their pages (no page fault per 4 KiB "
                                      "on every new activation; cpu.py); memory stays near its peak between steps")


@dataclass
class LogConfig:
    run_dir: str = f("runs", "parent directory of run directories")
    run_name: str = f("", "run directory name (default: <objective>-<timestamp>)")
    progress: bool = f(True, "show a live progress bar")
    # str | bool: YAML 1.1 reads a bare `on` / `off` as true / false
    tensorboard: str | bool = f(
        "auto", "auto | on | off: write TensorBoard event files to RUN_DIR/tb (auto = when tensorboard is installed)"
    )
    wandb_project: str = f("", "log to Weights & Biases under this project (needs wandb installed)")

    def __post_init__(self) -> None:
        if isinstance(self.tensorboard, bool):
            self.tensorboard = "on" if self.tensorboard else "off"
        if self.tensorboard not in ("auto", "on", "off"):
            raise TiltError(f"unknown log.tensorboard '{self.tensorboard}' (valid: auto, on, off)")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    task: TaskConfig = field(default_factory=TaskConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    advantage: AdvantageConfig = field(default_factory=AdvantageConfig)
    shaping: ShapingConfig = field(default_factory=ShapingConfig)
    hints: HintConfig = field(default_factory=HintConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    log: LogConfig = field(default_factory=LogConfig)


# ----------------------------------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except TiltError:
                continue
        raise TiltError(f"config key '{key}' expects {_type_name(tp)}, got {value!r}")
    if tp is type(None):
        if value is None:
            return None
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads "1e-4" as a string
            with contextlib.suppress(ValueError):
                return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(tp, type) and isinstance(value, tp):
        return value
    raise TiltError(f"config key '{key}' expects {_type_name(tp)}, got {value!r}")


def _build(cls: type, data: dict, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [fl.name for fl in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else f" (valid: {', '.join(prefix + n for n in names)})"
            raise TiltError(f"unknown config key '{full}'{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise TiltError(f"config key '{full}' expects a mapping of {tp.__name__} fields, got {value!r}")
            kwargs[key] = _build(tp, value, f"{full}.")
        else:
            kwargs[key] = _coerce(value, tp, full)
    return cls(**kwargs)


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise TiltError(f"override '{dotted}': '{part}' is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``optim.lr=1e-4`` -> (``optim.lr``, 1e-4). Values are parsed as YAML scalars/lists (safe loader)."""
    if "=" not in text:
        raise TiltError(f"override '{text}' must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise TiltError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise TiltError(f"{where}: malformed YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise TiltError(f"{path}: top level must be a mapping of sections (model, task, rollout, ...)")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults <- YAML file <- dotted overrides, validated strictly."""
    data = read_yaml(path) if path else {}
    for text in overrides:
        _set_dotted(data, *parse_override(text))
    return _build(Config, data, "")


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)


def describe(cls: type = Config, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted key, default, doc) for every field -- the `tiltlm config` listing."""
    rows = []
    for fl in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[fl.name]
        if dataclasses.is_dataclass(tp):
            rows += describe(tp, f"{prefix}{fl.name}.")
        else:
            default = fl.default if fl.default is not dataclasses.MISSING else fl.default_factory()
            rows.append((f"{prefix}{fl.name}", repr(default), fl.metadata.get("doc", "")))
    return rows
