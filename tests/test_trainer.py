"""The loop's contracts: no reference model at beta = 0, KL starts at exactly 0 on-policy, mu > 1 updates reuse the
batch, and leaving zero-gradient rows out of the backward changes nothing but the cost."""

import json
from pathlib import Path

import pytest
import torch

from tiltlm.config import load_config
from tiltlm.run import prepare
from tiltlm.trainer import train

TINY = ["log.progress=false", "rollout.prompts_per_step=8", "rollout.samples_per_prompt=4", "eval.prompts=0",
        "task.max_digits=2"]


def _metrics(run_dir):
    return [json.loads(x) for x in open(f"{run_dir}/metrics.jsonl")]


def test_reference_model_only_when_beta_positive():
    assert prepare(load_config(None, TINY)).reference is None
    s = prepare(load_config(None, [*TINY, "objective.beta=0.1"]))
    assert s.reference is not None and not any(p.requires_grad for p in s.reference.parameters())


def test_kl_to_reference_starts_at_zero_and_is_logged(tmp_path):
    r = train(load_config(None, [*TINY, f"log.run_dir={tmp_path}", "objective.beta=0.1", "train.steps=3"]))
    m = [x for x in _metrics(r.run_dir) if "kl/ref_k3" in x]
    assert len(m) == 3
    assert abs(m[0]["kl/ref_k3"]) < 1e-6  # policy == reference before the first update
    assert m[2]["kl/ref_k3"] > 0


def test_updates_per_batch_reuses_the_batch(tmp_path):
    r = train(load_config(None, [*TINY, f"log.run_dir={tmp_path}", "train.updates_per_batch=3", "train.steps=2",
                                 "optim.lr=1e-2", "optim.warmup_steps=1"]))
    m = [x for x in _metrics(r.run_dir) if "loss/ratio" in x]
    # the last of 3 updates sees a policy that moved: ratios are no longer all 1
    assert any(abs(x["loss/ratio"] - 1.0) > 1e-6 or x["loss/clip_frac"] > 0 for x in m)


def test_skipping_zero_gradient_rows_changes_nothing(tmp_path):
    weights = []
    for skip in ("true", "false"):
        r = train(load_config(None, [*TINY, f"log.run_dir={tmp_path}", f"log.run_name=skip-{skip}", "train.steps=3",
                                     f"train.skip_zero_gradient_rows={skip}", "train.micro_batch_size=5"]))
        m = _metrics(r.run_dir)
        weights.append(_load(r.run_dir))
        if skip == "true":
            assert any(x["rollout/rows_trained"] < 32 for x in m if "rollout/rows_trained" in x)
    for name in weights[0]:
        assert torch.allclose(weights[0][name], weights[1][name], atol=1e-6), name


def _load(run_dir):
    from safetensors.torch import load_file

    return load_file(f"{run_dir}/final/model.safetensors")


def test_any_local_hf_model_dir_works_qwen2(tmp_path, tokenizer):
    """The same code path trains another architecture saved locally (here a tiny random Qwen2)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tiltlm.models import save_pretrained_atomic

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    model_dir = save_pretrained_atomic(Qwen2ForCausalLM(cfg), tokenizer, tmp_path / "qwen2")
    r = train(load_config(None, [*TINY, f"log.run_dir={tmp_path}/runs", f"model.path={model_dir}", "train.steps=2",
                                 "eval.prompts=4", "eval.samples=2", "eval.k=[1,2]", "objective.beta=0.05"]))
    from transformers import AutoModelForCausalLM

    assert type(AutoModelForCausalLM.from_pretrained(f"{r.run_dir}/final")).__name__ == "Qwen2ForCausalLM"
    assert r.final_eval is not None and 0 <= r.final_eval.pass_at[1] <= 1


def test_reasoning_gym_task_trains(tmp_path):
    r = train(load_config(None, [*TINY, f"log.run_dir={tmp_path}", "task.name=reasoning_gym", "task.dataset=chain_sum",
                                 "task.size=50", "train.steps=2", "eval.prompts=4", "eval.samples=2", "eval.k=[1]"]))
    rows = [x for x in _metrics(r.run_dir) if "rollout/reward" in x]
    assert len(rows) == 2 and all(0 <= x["rollout/reward"] <= 1 for x in rows)


def test_every_advantage_estimator_trains_and_ace_loads_the_reference(tmp_path):
    from tiltlm.advantages import ADVANTAGES

    assert prepare(load_config(None, [*TINY, "advantage.name=ace"])).reference is not None  # even at beta = 0
    for name in ADVANTAGES:
        r = train(load_config(None, [*TINY, f"log.run_dir={tmp_path}", f"log.run_name={name}", "train.steps=2",
                                     f"advantage.name={name}"]))
        assert len([m for m in _metrics(r.run_dir) if "adv/mean" in m]) == 2


def test_every_surrogate_trains(tmp_path):
    from tiltlm.objectives import SURROGATES

    for name in SURROGATES:
        r = train(load_config(None, [*TINY, f"log.run_dir={tmp_path}", f"log.run_name={name}", "train.steps=2",
                                     f"objective.surrogate={name}", "train.updates_per_batch=2"]))
        rows = [m for m in _metrics(r.run_dir) if "loss/total" in m]
        assert len(rows) == 2 and all(abs(m["loss/total"]) < 1e3 for m in rows)


def test_normalise_over_kept_rows_trains(tmp_path):
    r = train(load_config(None, [*TINY, f"log.run_dir={tmp_path}", "train.steps=2", "advantage.name=nsr",
                                 "train.normalise_over=kept_rows", "objective.aggregation=token_mean"]))
    assert len([m for m in _metrics(r.run_dir) if "loss/total" in m]) == 2


def test_entropy_bonus_trains_and_logs(tmp_path):
    r = train(load_config(None, [*TINY, f"log.run_dir={tmp_path}", "train.steps=2", "objective.entropy_coef=0.01"]))
    rows = [m for m in _metrics(r.run_dir) if "loss/entropy" in m]
    assert len(rows) == 2 and all(m["loss/entropy"] > 0 for m in rows)
    # the same on the exact test bed (tabular entropies)
    from tiltlm.testbed import Testbed as Bed

    curve = Bed(3, 3, "count:0", seed=0).train("grpo", samples=64, samples_per_step=32, lr=1.0, entropy_coef=0.1,
                                                target_beta=1.0)
    assert len(curve) >= 2


def test_periodic_eval_is_off_when_eval_prompts_is_zero(tmp_path):
    r = train(load_config(None, [*TINY, f"log.run_dir={tmp_path}", "train.steps=3", "eval.every=1"]))
    assert r.final_eval is None and not any("eval/pass@1" in m for m in _metrics(r.run_dir))


def test_informative_groups_golden():
    from tiltlm.trainer import informative_groups

    # spec rlvr.md 1.3: groups {[1,0,0,1], [1,1,1,1], [0,0,0,0]} -> only group 0 survives
    rewards = torch.tensor([1.0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0])
    groups = torch.arange(3).repeat_interleave(4)
    assert informative_groups(rewards, groups).tolist() == [True] * 4 + [False] * 8


def test_dynamic_sampling_fills_the_batch_with_informative_groups(tmp_path):
    r = train(load_config(None, [*TINY, f"log.run_dir={tmp_path}", "train.steps=3", "rollout.dynamic_sampling=true",
                                 "rollout.max_generation_rounds=6"]))
    rows = [m for m in _metrics(r.run_dir) if "rollout/generation_rounds" in m]
    assert len(rows) == 3 and any(m["rollout/generation_rounds"] > 1 for m in rows)
    # every kept group has mixed rewards, so no row is skipped for a zero advantage
    assert all(m["rollout/rows_trained"] == 32 for m in rows)


def test_eval_files_kl_to_base_and_forgetting_are_written(tmp_path):
    """Start/final evaluations land in eval_*.json; KL to the base starts at 0 and grows; the families never trained
    on are evaluated before and after, with the change and its standard error in forgetting.json."""
    cfg = load_config(None, [*TINY, f"log.run_dir={tmp_path}", "train.steps=4", "eval.prompts=6", "eval.samples=4",
                             "eval.every=2", "optim.lr=3e-3", "eval.forgetting=[{name: arithmetic, min_digits: 3}]",
                             "eval.forgetting_prompts=5"])
    r = train(cfg)
    start, final = (json.loads(Path(r.run_dir, f"eval_{n}.json").read_text()) for n in ("start", "final"))
    assert start["step"] == 0 and final["step"] == 4 and list(final["pass_at"]) == ["1", "2", "4"]
    evals = [m for m in _metrics(r.run_dir) if "eval/kl_to_base" in m]
    assert [m["step"] for m in evals] == [0, 2, 4]
    assert abs(evals[0]["eval/kl_to_base"]) < 1e-5 and evals[-1]["eval/kl_to_base"] > 0
    (row,) = json.loads(Path(r.run_dir, "forgetting.json").read_text())["families"]
    assert row == r.forgetting[0] and row["family"] == "arithmetic(min_digits=3)" and row["prompts"] == 5
    assert row["change"] == pytest.approx(row["tuned"] - row["base"])


def test_no_reference_model_when_kl_to_base_is_off():
    assert prepare(load_config(None, [*TINY, "eval.prompts=4", "eval.kl_to_base=false"])).reference is None
    assert prepare(load_config(None, [*TINY, "eval.prompts=4"])).reference is not None
