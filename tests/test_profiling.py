"""--profile: every phase timed, the remainder is 'other', the phases add up to the step."""

import json
from pathlib import Path

import pytest

from tiltlm import profiling
from tiltlm.config import load_config
from tiltlm.profiling import PHASES, PhaseTimer
from tiltlm.trainer import train


def test_phase_timer_golden_with_a_fake_clock(monkeypatch):
    ticks = iter([0.0, 1.0, 3.0, 3.5, 4.0, 10.0])  # step start, gen 1->3, gen again 3.5->4, step end 10
    monkeypatch.setattr(profiling.time, "perf_counter", lambda: next(ticks))
    t = PhaseTimer(enabled=True)
    t.start_step()
    with t.phase("generation"):
        pass
    with t.phase("generation"):
        pass
    m = t.end_step()
    assert m == {"perf/generation_s": 2.5, "perf/other_s": 7.5}  # 2.0 + 0.5; 10 - 2.5
    s = t.summary()
    assert s["steps"] == 1 and s["total_s"] == 10.0
    assert s["phases"]["generation"] == {"total_s": 2.5, "median_ms": 2500.0, "mean_ms": 2500.0, "share": 0.25}
    assert set(s["phases"]) == set(PHASES)


def test_disabled_timer_records_nothing():
    t = PhaseTimer(enabled=False)
    t.start_step()
    with t.phase("generation"):
        pass
    assert t.end_step() == {} and t.steps == []


def test_profiled_training_run_accounts_for_every_phase(tmp_path):
    cfg = load_config(None, ["log.progress=false", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=4",
                             "eval.prompts=4", "eval.samples=4", "eval.every=2", "train.steps=3",
                             "objective.beta=0.05", f"log.run_dir={tmp_path}", "train.profile=true"])
    r = train(cfg)
    prof = json.loads(Path(r.run_dir, "profile.json").read_text())
    assert prof["steps"] == 3 and len(prof["per_step"]) == 3
    for step in prof["per_step"]:
        assert sum(v for k, v in step.items() if k != "total") == pytest.approx(step["total"], rel=1e-9)
        for phase in ("generation", "scoring", "logprobs", "forward_backward", "optimizer", "logging"):
            assert step[phase] > 0, phase  # beta > 0: the reference forward is timed under logprobs
    assert prof["per_step"][1]["evaluation"] > 0 and "evaluation" not in prof["per_step"][0]  # eval.every=2
    metrics = [json.loads(x) for x in Path(r.run_dir, "metrics.jsonl").read_text().splitlines()]
    assert sum("perf/forward_backward_s" in m for m in metrics) == 3


def test_no_phase_metrics_without_profile(tmp_path):
    r = train(load_config(None, ["log.progress=false", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=4",
                                 "eval.prompts=0", "train.steps=1", f"log.run_dir={tmp_path}"]))
    assert not Path(r.run_dir, "profile.json").exists()
    assert not any("perf/generation_s" in line for line in Path(r.run_dir, "metrics.jsonl").read_text().splitlines())
