"""Hint scaffolding (spec rlvr.md section 11): mechanism goldens and a training run."""

import json
from pathlib import Path

from tiltlm.config import load_config
from tiltlm.hints import hint_prefix, hinted, solution_units
from tiltlm.tasks.arithmetic import Arithmetic
from tiltlm.tasks.base import Example
from tiltlm.trainer import train


def test_hint_is_a_prefix_of_whole_sentences():
    solution = " ".join(f"Step {i} is done." for i in range(1, 9))  # 8 sentences
    assert len(solution_units(solution)) == 8
    assert hint_prefix(solution, 0.25) == "Step 1 is done. Step 2 is done. "  # omega = .25 -> first 2 sentences
    assert hint_prefix("642", 0.5) == "6" and hint_prefix("642", 0.75) == "64"  # characters; never the whole
    assert hint_prefix("7", 0.9) == ""  # a one-unit solution cannot be hinted without giving it away


def test_hinted_example_and_scoring_of_hint_plus_continuation():
    ex = Arithmetic().make(58, 67)  # answer 521
    posed, hint = hinted(ex, 0.34)
    assert hint == "5" and posed.prompt == "58+67=5" and posed.answer == "521"
    assert Arithmetic().score(posed, hint + "21", True).correct
    assert hinted(Example("q", "a"), 0.5) == (Example("q", "a"), "")  # no solution, no hint


def test_all_fail_groups_get_hints_and_hint_tokens_carry_no_loss(tmp_path):
    # 3-digit operands: the base fails most groups (pass@1 ~0.05), so hints are used
    r = train(load_config(None, [f"log.run_dir={tmp_path}", "log.progress=false", "eval.prompts=0", "train.steps=2",
                                 "rollout.prompts_per_step=8", "rollout.samples_per_prompt=4", "task.min_digits=3",
                                 "hints.omegas=[0.25, 0.5, 0.75]"]))
    rows = [json.loads(x) for x in Path(r.run_dir, "metrics.jsonl").read_text().splitlines()]
    assert any(m["rollout/hinted_frac"] > 0 for m in rows)
    # without hints the same run has no hinted rows
    r = train(load_config(None, [f"log.run_dir={tmp_path}", "log.progress=false", "eval.prompts=0", "train.steps=1",
                                 "rollout.prompts_per_step=8", "rollout.samples_per_prompt=4", "task.min_digits=3"]))
    rows = [json.loads(x) for x in Path(r.run_dir, "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["rollout/hinted_frac"] == 0.0


def test_hint_tokens_sit_in_the_prompt(tmp_path):
    import torch

    from tiltlm.run import prepare
    from tiltlm.trainer import rollout_groups

    s = prepare(load_config(None, [f"log.run_dir={tmp_path}", "rollout.samples_per_prompt=2"]))
    posed, hint = hinted(Arithmetic().make(58, 67), 0.67)
    b = rollout_groups(s, [posed], torch.tensor([0]), [hint], torch.Generator().manual_seed(0))
    prompt = s.tokenizer.decode(b.prompt_ids[0][b.prompt_mask[0].bool()], skip_special_tokens=True)
    assert prompt == "58+67=52" and b.hinted.all()  # the loss only ever covers completion_mask tokens
