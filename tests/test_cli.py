"""The command line, run as a user runs it (subprocess): happy paths and bad input."""

import json
import subprocess
import sys

import pytest

SMALL = ["train.steps=2", "rollout.prompts_per_step=4", "rollout.samples_per_prompt=4", "eval.prompts=4",
         "eval.samples=4", "eval.k=[1,4]", "log.progress=false"]


def tiltlm(*args, cwd=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "tiltlm", *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def assert_one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr and len(err.splitlines()) == 1, proc.stderr
    assert err.startswith("tiltlm: error: ")
    for n in needles:
        assert n in err, err


def test_algorithms_and_config_listings():
    out = tiltlm("algorithms")
    assert out.returncode == 0 and "grpo" in out.stdout and "group_zscore" in out.stdout
    out = tiltlm("config")
    assert out.returncode == 0 and "optim.lr" in out.stdout and "rollout.samples_per_prompt" in out.stdout


def test_train_writes_run_dir_and_loadable_checkpoint(tmp_path):
    out = tiltlm("train", f"log.run_dir={tmp_path}", "log.run_name=r", *SMALL)
    assert out.returncode == 0, out.stderr
    run = tmp_path / "r"
    assert "run directory" in out.stdout and str(run) in out.stdout
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in lines if "rollout/reward" in m]
    assert [m["step"] for m in steps] == [1, 2]
    assert any("eval/pass@4" in m for m in lines)
    assert "train:\n  steps: 2" in (run / "config.yaml").read_text()
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(run / "final")
    assert not [p for p in run.iterdir() if p.name.startswith(".")]  # no temp files left


def test_eval_command_writes_json(tmp_path):
    out = tiltlm("eval", "embedded", "--task", "arithmetic", "task.max_digits=2", "--samples", "8", "--k", "1,8",
                 "--prompts", "10", "--json-out", str(tmp_path / "e.json"))
    assert out.returncode == 0, out.stderr
    res = json.loads((tmp_path / "e.json").read_text())
    assert res["n_prompts"] == 10 and 0 <= res["pass@1"] <= res["pass@8"] <= 1
    assert "pass@8" in out.stdout and "greedy" in out.stdout


def _bad_jsonl(tmp_path, text):
    p = tmp_path / "d.jsonl"
    p.write_text(text)
    return p


@pytest.mark.parametrize("case", ["missing_model", "malformed_yaml", "unknown_key", "empty_dataset", "no_answer",
                                  "bad_type", "unknown_objective", "bad_k"])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, case):
    runs = tmp_path / "runs"
    args = ["train", f"log.run_dir={runs}", *SMALL]
    needles: tuple = ()
    if case == "missing_model":
        args.append("model.path=/no/such/model")
        needles = ("model path not found: /no/such/model",)
    elif case == "malformed_yaml":
        cfg = tmp_path / "c.yaml"
        cfg.write_text("optim:\n  lr: 0.1\n  betas: [0.9\n")
        args.insert(1, str(cfg))
        needles = (f"{cfg}:", "malformed YAML")
    elif case == "unknown_key":
        args.append("optim.learning_rate=0.1")
        needles = ("unknown config key 'optim.learning_rate'", "optim.lr")
    elif case == "empty_dataset":
        args += ["task.name=jsonl", f"task.path={_bad_jsonl(tmp_path, '')}"]
        needles = ("empty dataset",)
    elif case == "no_answer":
        p = _bad_jsonl(tmp_path, '{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2="}\n')
        args += ["task.name=jsonl", f"task.path={p}"]
        needles = (f"{p}:2: missing key 'answer'",)
    elif case == "bad_type":
        args.append("rollout.samples_per_prompt=many")
        needles = ("rollout.samples_per_prompt", "expects int")
    elif case == "unknown_objective":
        args.append("objective.name=grpoo")
        needles = ("unknown objective.name 'grpoo'", "did you mean 'grpo'")
    elif case == "bad_k":
        args.append("eval.k=[1,64]")
        needles = ("eval.k",)
    proc = tiltlm(*args)
    assert_one_line_error(proc, *needles)
    assert not runs.exists() or not any(runs.iterdir())


def test_eval_bad_input(tmp_path):
    assert_one_line_error(tiltlm("eval", str(tmp_path / "nope"), "--samples", "4", "--k", "1"), "model path not found")
    assert_one_line_error(tiltlm("eval", "embedded", "--samples", "4", "--k", "1,8"), "--k values must be in 1..--samples")
    assert not (tmp_path / "eval.json").exists()
