"""`tiltlm report`: the HTML report of a run directory, and the optional TensorBoard / wandb metric sinks."""

from __future__ import annotations

import base64
import json
import re
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tiltlm.cli import main
from tiltlm.config import load_config
from tiltlm.errors import TiltError
from tiltlm.report import build_report
from tiltlm.run import Run

FIXTURE = Path(__file__).parent / "fixtures" / "run_small"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALL_PLOTS = {"reward", "heldout_pass_at_k", "kl", "entropy", "response_len", "clip_frac", "advantage",
             "tokens_per_s", "selector", "base_vs_tuned"}


def _figures(page: str) -> dict[str, bytes]:
    """plot id -> the PNG embedded in its <figure>."""
    found = re.findall(r"<figure id='plot-([a-z_]+)'>.*?src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    return {plot_id: base64.b64decode(b64) for plot_id, b64 in found}


def _skipped(page: str) -> set[str]:
    return set(re.findall(r"<li data-plot='([a-z_]+)'>", page))


@pytest.fixture()
def run_small(tmp_path) -> Path:
    run = tmp_path / "run_small"
    shutil.copytree(FIXTURE, run)
    return run


def test_report_of_a_full_run_embeds_every_plot(run_small):
    index = build_report(run_small)
    assert index == run_small / "report" / "index.html"
    page = index.read_text(encoding="utf-8")
    figures = _figures(page)
    assert set(figures) == ALL_PLOTS
    assert page.count("data:image/png;base64,") == len(ALL_PLOTS)
    for plot_id, png in figures.items():
        assert png.startswith(PNG_MAGIC)
        assert (run_small / "report" / f"{plot_id}.png").read_bytes() == png  # the same plot as a file
    # self-contained: no external URL, script, stylesheet link or font
    assert "://" not in page  # ':' never occurs in base64
    assert "<script" not in page and "<link" not in page and "@import" not in page and "url(" not in page
    assert _skipped(page) == set()
    # header from config.yaml, base-vs-tuned table from eval_*.json, forgetting table from forgetting.json
    for text in ["grpo", "arithmetic", "embedded", "<td>20</td>", "<td>pass@4</td><td>0.620</td><td>0.700</td>"]:
        assert text in page
    for text in ["leg_counting", "0.412", "0.387", "-0.025", "0.018", "basic_arithmetic", "0.655", "0.702", "+0.047"]:
        assert text in page
    assert sorted(p.name for p in (run_small / "report").iterdir()) == sorted(
        ["index.html"] + [f"{p}.png" for p in ALL_PLOTS]
    )  # no temp files left behind


def test_report_of_a_sparse_run_lists_skipped_plots(tmp_path):
    run = tmp_path / "sparse"
    run.mkdir()
    rows = [
        {"step": s, "rollout/reward": 0.1 * (s % 7), "rollout/pass@1": 0.1, "rollout/response_len": 5,
         "rollout/entropy": 1.0, "loss/clip_frac": 0.0, "adv/mean": 0.0, "adv/std": 1.0,
         "perf/tokens_per_s": 1000.0, "select/proposal_swapped": 0.0, "note": "strings are ignored"}
        for s in range(1, 41)  # long enough to be smoothed
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "\n", encoding="utf-8")
    out = tmp_path / "elsewhere"
    index = build_report(run, out)
    assert index == out / "index.html" and not (run / "report").exists()
    page = index.read_text(encoding="utf-8")
    drawn = {"reward", "entropy", "response_len", "clip_frac", "advantage", "tokens_per_s"}
    assert set(_figures(page)) == drawn
    assert _skipped(page) == ALL_PLOTS - drawn  # no eval/*, no kl/*, select/* constant zero, no eval_*.json
    assert "kl/*, eval/kl_to_base" in page
    assert all((out / f"{p}.png").read_bytes().startswith(PNG_MAGIC) for p in drawn)


def test_missing_run_dir_or_metrics_is_a_one_line_error(tmp_path):
    with pytest.raises(TiltError, match=re.escape(str(tmp_path / "nope"))):
        build_report(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(TiltError, match="no metrics.jsonl in .*empty"):
        build_report(tmp_path / "empty")


@pytest.mark.parametrize("bad", ['{"step": 2, "rollout/reward": 0.', '{"rollout/reward": 0.5}', "[1, 2]"])
def test_malformed_metrics_line_names_file_and_line(tmp_path, bad):
    (tmp_path / "metrics.jsonl").write_text('{"step": 0}\n\n' + bad + "\n", encoding="utf-8")
    with pytest.raises(TiltError) as err:
        build_report(tmp_path)
    assert f"{tmp_path / 'metrics.jsonl'}:3:" in str(err.value) and "\n" not in str(err.value)


def test_cli_report(run_small, tmp_path, capsys):
    assert main(["report", str(run_small)]) == 0
    assert capsys.readouterr().out.strip() == str(run_small / "report" / "index.html")
    assert main(["report", str(run_small), "--out", str(tmp_path / "out")]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out" / "index.html")
    assert (tmp_path / "out" / "reward.png").is_file()

    assert main(["report", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tiltlm: error: ") and str(tmp_path / "missing") in err and err.count("\n") == 1


# ----------------------------------------------------------------------------------------------------- loggers


def _run(tmp_path, *overrides: str) -> Run:
    cfg = load_config(None, list(overrides))
    path = tmp_path / "run"
    path.mkdir()
    return Run(cfg, path)


def test_tensorboard_on_writes_every_numeric_metric(tmp_path, tiny_model, tokenizer):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = _run(tmp_path, "log.tensorboard=on")  # YAML reads a bare `on` as true
    run.log({"step": 1, "rollout/reward": 0.25, "loss/total": -1.0, "note": "text"})
    run.log({"step": 2, "rollout/reward": 0.5, "eval/pass@1": 0.75})
    run.save_final(SimpleNamespace(model=tiny_model, tokenizer=tokenizer))  # closes the writer
    assert list((run.dir / "tb").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(run.dir / "tb"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == {"rollout/reward", "loss/total", "eval/pass@1"}
    assert [(e.step, e.value) for e in acc.Scalars("rollout/reward")] == [(1, 0.25), (2, 0.5)]
    assert [(e.step, e.value) for e in acc.Scalars("eval/pass@1")] == [(2, 0.75)]
    assert len(run.dir.joinpath("metrics.jsonl").read_text().splitlines()) == 2  # metrics.jsonl unchanged


def test_tensorboard_off_writes_nothing(tmp_path, tiny_model, tokenizer):
    run = _run(tmp_path, "log.tensorboard=off")
    run.log({"step": 1, "rollout/reward": 0.25})
    run.save_final(SimpleNamespace(model=tiny_model, tokenizer=tokenizer))
    assert not (run.dir / "tb").exists()


def test_tensorboard_on_without_tensorboard_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # simulate tensorboard not installed
    with pytest.raises(TiltError, match="pip install tensorboard"):
        _run(tmp_path, "log.tensorboard=on")


def test_tensorboard_value_is_validated():
    with pytest.raises(TiltError, match=r"unknown log.tensorboard 'sometimes' \(valid: auto, on, off\)"):
        load_config(None, ["log.tensorboard=sometimes"])
    assert load_config(None, ["log.tensorboard=off"]).log.tensorboard == "off"
    assert load_config(None, []).log.tensorboard == "auto"


def test_wandb_project_without_wandb_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # simulate wandb not installed
    with pytest.raises(TiltError, match="wandb is not installed: pip install wandb"):
        _run(tmp_path, "log.wandb_project=tiltlm-test", "log.tensorboard=off")
