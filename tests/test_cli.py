"""The command line, run as a user runs it (subprocess): happy paths and bad input."""

import json
import subprocess
import sys

import pytest
import torch

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
    out = tiltlm("train", "--profile", f"log.run_dir={tmp_path}", "log.run_name=r", *SMALL)
    assert out.returncode == 0, out.stderr
    run = tmp_path / "r"
    assert "profile over 2 steps" in out.stdout and "forward_backward" in out.stdout
    assert json.loads((run / "profile.json").read_text())["steps"] == 2
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
    assert "pass@k" in out.stdout and "maj@k" in out.stdout and "greedy" in out.stdout
    assert res["kl_to_ref"] is None and set(res["pass_at"]) == {"1", "8"}


def test_eval_default_grid_and_kl_to_reference(tmp_path):
    out = tiltlm("eval", "embedded", "--samples", "8", "--prompts", "6", "--reference", "embedded",
                 "--batch-prompts", "4", "--json-out", str(tmp_path / "e.json"))
    assert out.returncode == 0, out.stderr
    res = json.loads((tmp_path / "e.json").read_text())
    assert list(res["pass_at"]) == list(res["maj_at"]) == list(res["mean_at"]) == ["1", "2", "4", "8"]
    assert abs(res["kl_to_ref"]) < 1e-5 and "KL(model || embedded) = " in out.stdout  # same model: exactly 0
    assert res["distinct_answers"] >= res["distinct_correct_answers"] >= 0 and 0 < res["distinct_2"] <= 1


def test_compare_two_saved_models(tmp_path, tokenizer):
    """`tiltlm compare` on two tiny models saved locally: curves, crossover, support counts, forgetting, plots."""
    from tiltlm.metrics import crossover_k
    from tiltlm.models import load_model_and_tokenizer, save_pretrained_atomic

    base, tok = load_model_and_tokenizer("embedded")
    save_pretrained_atomic(base, tok, tmp_path / "base")
    with torch.no_grad():  # a damaged copy: it loses prompts the base solves (support shrinkage)
        for p in base.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0)))
    save_pretrained_atomic(base, tok, tmp_path / "tuned")
    out = tiltlm("compare", str(tmp_path / "base"), str(tmp_path / "tuned"), "task.max_digits=2", "--samples", "8",
                 "--prompts", "12", "--family", "{name: arithmetic, min_digits: 3, max_digits: 3}",
                 "--out", str(tmp_path / "cmp"))
    assert out.returncode == 0, out.stderr
    res = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert res["ks"] == [1, 2, 4, 8]
    b, t = res["pass_at"]["base"], res["pass_at"]["tuned"]
    assert res["crossover_k"] == crossover_k(res["ks"], b, t)
    sup = res["support"]
    assert sum(sup.values()) == 12
    base_c, tuned_c = res["base"]["per_prompt_correct"], res["tuned"]["per_prompt_correct"]
    assert sup["shrunk"] == sum(x > 0 and y == 0 for x, y in zip(base_c, tuned_c))
    assert res["success_rate"]["base"] == [c / 8 for c in base_c]
    assert b[-1] == pytest.approx(sum(c > 0 for c in base_c) / 12)  # pass@n = fraction solved at least once
    assert res["tuned"]["kl_to_ref"] > 0 and "crossover k:" in out.stdout and "support" in out.stdout
    (row,) = res["forgetting"]
    assert row["family"] == "arithmetic(min_digits=3)" and row["prompts"] == 12
    assert row["change"] == pytest.approx(row["tuned"] - row["base"]) and row["se"] >= 0
    for png in ("passk.png", "scatter.png"):
        assert (tmp_path / "cmp" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_bad_family_is_one_line(tmp_path):
    proc = tiltlm("compare", "embedded", "embedded", "--family", "{name: arithmetic, min_digits: [", "--out",
                  str(tmp_path / "c"))
    assert_one_line_error(proc, "--family[0]", "not a YAML mapping")
    assert not (tmp_path / "c").exists()


def test_missing_wandb_is_an_error_before_the_run_dir_exists(tmp_path, monkeypatch, capsys):
    from tiltlm.cli import main

    monkeypatch.setitem(sys.modules, "wandb", None)  # as if wandb were not installed
    code = main(["train", f"log.run_dir={tmp_path / 'runs'}", "log.wandb_project=p", *SMALL])
    assert code == 2 and "wandb" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def _bad_jsonl(tmp_path, text):
    p = tmp_path / "d.jsonl"
    p.write_text(text)
    return p


@pytest.mark.parametrize("case", ["missing_model", "malformed_yaml", "unknown_key", "empty_dataset", "no_answer",
                                  "bad_type", "unknown_objective", "bad_k", "bad_family", "bad_matmul_dtype",
                                  "bf16_without_lean"])
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
    elif case == "bad_family":
        args.append("eval.forgetting=[{name: arithmetic, max_digit: 2}]")
        needles = ("unknown config key 'eval.forgetting[0].max_digit'", "max_digits")
    elif case == "bad_matmul_dtype":
        args.append("runtime.matmul_dtype=fp8")
        needles = ("unknown runtime.matmul_dtype 'fp8'", "bfloat16")
    elif case == "bf16_without_lean":
        args += ["runtime.matmul_dtype=bfloat16", "runtime.lean_forward=false"]
        needles = ("runtime.matmul_dtype=bfloat16 needs the lean forward", "runtime.lean_forward is false")
    proc = tiltlm(*args)
    assert_one_line_error(proc, *needles)
    assert not runs.exists() or not any(runs.iterdir())


def test_bf16_matmuls_run_only_where_the_cpu_has_bf16_instructions(tmp_path):
    """Without AVX512-BF16/AMX, PyTorch emulates bf16 matmuls (~100x slower than float32): runtime.matmul_dtype=
    bfloat16 is then a one-line error; with them, the same run trains. Which branch runs depends on this CPU."""
    runs = tmp_path / "runs"
    proc = tiltlm("train", f"log.run_dir={runs}", *SMALL, "eval.kl_to_base=false", "runtime.matmul_dtype=bfloat16")
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert proc.returncode == 0, proc.stderr
        assert len(list(runs.glob("*/final/model.safetensors"))) == 1
    else:
        assert_one_line_error(proc, "runtime.matmul_dtype=bfloat16 needs bf16 instructions", "matmul_dtype=float32")
        assert not runs.exists() or not any(runs.iterdir())


def test_compiled_sampling_and_training_train_and_need_the_lean_forward(tmp_path):
    """runtime.compile_sampling=true and runtime.compile_training=true train end to end (sampling and held-out
    evaluation through the compiled decode step, the update and the reference log-probs through the compiled
    scoring forward); without the lean forward each is a one-line error naming the cause, and no run directory is
    left."""
    runs = tmp_path / "runs"
    # a hot sampler makes completions run to max_new_tokens: dense enough for the compiled (padded) forward to be used
    proc = tiltlm("train", f"log.run_dir={runs}", *SMALL, "eval.kl_to_base=false", "objective.beta=0.04",
                  "rollout.temperature=4.0", "train.skip_zero_gradient_rows=false", "runtime.compile_sampling=true",
                  "runtime.compile_training=true")
    assert proc.returncode == 0, proc.stderr
    assert len(list(runs.glob("*/final/model.safetensors"))) == 1
    for key in ("compile_sampling", "compile_training"):
        bad = tmp_path / f"bad_{key}"
        proc = tiltlm("train", f"log.run_dir={bad}", *SMALL, f"runtime.{key}=true", "runtime.lean_forward=false")
        assert_one_line_error(proc, f"runtime.{key} needs the lean forward", "runtime.lean_forward is false")
        assert not bad.exists() or not any(bad.iterdir())


def test_eval_bad_input(tmp_path):
    assert_one_line_error(tiltlm("eval", str(tmp_path / "nope"), "--samples", "4", "--k", "1"), "model path not found")
    assert_one_line_error(tiltlm("eval", "embedded", "--samples", "4", "--k", "1,8"), "--k values must be in 1..--samples")
    assert_one_line_error(tiltlm("eval", "embedded", "--batch-prompts", "0"), "--batch-prompts must be >= 1")
    assert not (tmp_path / "eval.json").exists()
