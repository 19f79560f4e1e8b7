"""``tiltlm report RUN_DIR``: one self-contained HTML page (plots embedded as base64 PNG, inline CSS, no external
resource) plus the same plots as PNG files, built from a run directory's ``metrics.jsonl``, ``config.yaml``,
``eval_start.json`` / ``eval_final.json`` and ``forgetting.json``. Every file except ``metrics.jsonl`` is optional;
a plot whose metrics the run did not log is listed as skipped instead of drawn."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tiltlm.atomic import write_atomic
from tiltlm.errors import TiltError

Series = dict[str, tuple[list[int], list[float]]]  # metric key -> (steps, values), sorted by step
PASS_KEY = re.compile(r"^eval/pass@(\d+)$")
SMOOTH_MIN_POINTS = 30  # below this, per-step series are drawn as they are


@dataclass
class RunData:
    config: dict
    series: Series
    eval_start: dict[int, float]
    eval_final: dict[int, float]
    forgetting: list[dict]


@dataclass(frozen=True)
class PlotSpec:
    id: str
    title: str
    ylabel: str
    keys: Callable[[Series], list[str]]  # the metric keys this plot draws (empty -> skipped)
    needs: str  # what the run must log, shown when the plot is skipped


def _prefixed(prefix: str) -> Callable[[Series], list[str]]:
    return lambda s: sorted(k for k in s if k.startswith(prefix))


def _fixed(*keys: str) -> Callable[[Series], list[str]]:
    return lambda s: [k for k in keys if k in s]


def _pass_keys(s: Series) -> list[str]:
    return sorted((k for k in s if PASS_KEY.match(k)), key=lambda k: int(PASS_KEY.match(k).group(1)))


def _selector_keys(s: Series) -> list[str]:
    return [k for k in _prefixed("select/")(s) if any(v != 0 for v in s[k][1])]


def _kl_keys(s: Series) -> list[str]:
    return _prefixed("kl/")(s) + _fixed("eval/kl_to_base")(s)


PLOTS = [
    PlotSpec("reward", "Training reward", "reward / pass@1", _fixed("rollout/reward", "rollout/pass@1"),
             "rollout/reward, rollout/pass@1"),
    PlotSpec("heldout_pass_at_k", "Held-out pass@k during training", "pass@k", _pass_keys, "eval/pass@k"),
    PlotSpec("kl", "KL divergence", "KL (nats)", _kl_keys, "kl/*, eval/kl_to_base"),
    PlotSpec("entropy", "Entropy", "entropy (nats / token)", _fixed("rollout/entropy", "eval/entropy"),
             "rollout/entropy, eval/entropy"),
    PlotSpec("response_len", "Response length", "tokens", _fixed("rollout/response_len"), "rollout/response_len"),
    PlotSpec("clip_frac", "Clip fraction", "fraction of tokens clipped", _fixed("loss/clip_frac"), "loss/clip_frac"),
    PlotSpec("advantage", "Advantage statistics", "advantage", _prefixed("adv/"), "adv/*"),
    PlotSpec("tokens_per_s", "Throughput", "tokens / s", _fixed("perf/tokens_per_s"), "perf/tokens_per_s"),
    PlotSpec("selector", "Selector statistics", "value", _selector_keys, "select/* (not constant zero)"),
]
BASE_VS_TUNED = ("base_vs_tuned", "Held-out pass@k: base vs tuned", "eval_start.json / eval_final.json")


# ----------------------------------------------------------------------------------------------------- reading


def read_metrics(path: Path) -> Series:
    """Numeric metrics per key; lines sharing a step are merged (a later value for the same key wins)."""
    by_key: dict[str, dict[int, float]] = {}
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise TiltError(f"{path}:{lineno}: malformed metrics line ({e.msg})") from None
            if not isinstance(row, dict) or isinstance(row.get("step"), bool) or not isinstance(row.get("step"), int):
                raise TiltError(f"{path}:{lineno}: malformed metrics line (expected a JSON object with an integer 'step')")
            for key, value in row.items():
                if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                    by_key.setdefault(key, {})[row["step"]] = float(value)
    return {k: (sorted(v), [v[s] for s in sorted(v)]) for k, v in by_key.items()}


def _read_json(path: Path) -> Any:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TiltError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from None


def _pass_at(data: Any) -> dict[int, float]:
    """``{"pass_at": {"1": 0.5, ...}}`` (or flat ``"pass@1"`` keys) -> {1: 0.5, ...}."""
    if not isinstance(data, dict):
        return {}
    raw = data.get("pass_at")
    if not isinstance(raw, dict):
        raw = {k.removeprefix("pass@"): v for k, v in data.items() if k.startswith("pass@")}
    out = {}
    for k, v in raw.items():
        if str(k).isdigit() and isinstance(v, (int, float)) and not isinstance(v, bool):
            out[int(k)] = float(v)
    return dict(sorted(out.items()))


def load_run(run_dir: Path) -> RunData:
    if not run_dir.is_dir():
        raise TiltError(f"run directory not found: {run_dir}")
    metrics = run_dir / "metrics.jsonl"
    if not metrics.is_file():
        raise TiltError(f"no metrics.jsonl in {run_dir} (is it a tiltlm run directory?)")
    config: Any = {}
    if (run_dir / "config.yaml").is_file():
        try:
            config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
        except yaml.YAMLError:
            raise TiltError(f"{run_dir / 'config.yaml'}: malformed YAML") from None
    forgetting = _read_json(run_dir / "forgetting.json")
    families = forgetting.get("families") if isinstance(forgetting, dict) else None
    return RunData(
        config=config if isinstance(config, dict) else {},
        series=read_metrics(metrics),
        eval_start=_pass_at(_read_json(run_dir / "eval_start.json")),
        eval_final=_pass_at(_read_json(run_dir / "eval_final.json")),
        forgetting=[f for f in families if isinstance(f, dict)] if isinstance(families, list) else [],
    )


# ----------------------------------------------------------------------------------------------------- plotting


def _moving_average(values: list[float], window: int) -> list[float]:
    out, acc, finite = [], 0.0, []
    for i, v in enumerate(values):
        finite.append(v if math.isfinite(v) else 0.0)
        acc += finite[-1]
        if i >= window:
            acc -= finite[i - window]
        out.append(acc / min(i + 1, window))
    return out


def _draw_series(ax: Any, series: Series, key: str) -> None:
    steps, values = series[key]
    if key.startswith("eval/"):  # sparse: every few steps
        if key == "eval/kl_to_base" and "eval/kl_to_base_se" in series:
            se = dict(zip(*series["eval/kl_to_base_se"]))
            ax.errorbar(steps, values, yerr=[se.get(s, 0.0) for s in steps], marker="o", capsize=3, label=key)
        else:
            ax.plot(steps, values, marker="o", label=key)
    elif len(steps) >= SMOOTH_MIN_POINTS:
        (line,) = ax.plot(steps, values, linewidth=0.7, alpha=0.35)
        window = max(2, len(steps) // 25)
        ax.plot(steps, _moving_average(values, window), color=line.get_color(), label=f"{key} (avg {window})")
    else:
        ax.plot(steps, values, marker=".", label=key)


def png_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def figure(title: str, xlabel: str, ylabel: str) -> tuple[Any, Any]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3.6))
    ax = fig.subplots()
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if xlabel == "step":
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return fig, ax


def pass_at_k_plot(curves: dict[str, dict[int, float]], title: str, crossover: int | None = None) -> bytes:
    """pass@k against k (log2 axis), one curve per model; a dotted line at the crossover k, if any."""
    fig, ax = figure(title, "k", "pass@k")
    ks: set[int] = set()
    for label, curve in curves.items():
        if curve:
            ax.plot(list(curve), list(curve.values()), marker="o", label=label)
            ks |= set(curve)
    if crossover:
        ax.axvline(crossover, color="grey", ls=":", label=f"crossover k={crossover}")
    ax.set_xscale("log", base=2)
    ax.minorticks_off()
    ax.set_xticks(sorted(ks), labels=[str(k) for k in sorted(ks)])
    ax.legend()
    return png_bytes(fig)


def render_plots(data: RunData) -> tuple[list[tuple[str, str, bytes]], list[tuple[str, str, str]]]:
    """(drawn: [(id, title, png)], skipped: [(id, title, what the run must log)])."""
    drawn, skipped = [], []
    for spec in PLOTS:
        keys = spec.keys(data.series)
        if not keys:
            skipped.append((spec.id, spec.title, spec.needs))
            continue
        fig, ax = figure(spec.title, "step", spec.ylabel)
        for key in keys:
            _draw_series(ax, data.series, key)
        ax.legend(fontsize=8)
        drawn.append((spec.id, spec.title, png_bytes(fig)))
    if data.eval_start or data.eval_final:
        drawn.append((BASE_VS_TUNED[0], BASE_VS_TUNED[1], pass_at_k_plot({"base": data.eval_start, "tuned": data.eval_final}, BASE_VS_TUNED[1])))
    else:
        skipped.append(BASE_VS_TUNED)
    return drawn, skipped


# ----------------------------------------------------------------------------------------------------- html

CSS = """body{font-family:sans-serif;max-width:60em;margin:1.5em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:0.25em 0.7em;text-align:right}
th:first-child,td:first-child{text-align:left}figure{margin:1em 0}img{max-width:100%}
figcaption{font-weight:bold}.muted{color:#777}"""


def _get(config: dict, *paths: str) -> str:
    """The first of the dotted ``paths`` present in ``config``, or an em dash."""
    for dotted in paths:
        node: Any = config
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None and not isinstance(node, dict):
            return str(node)
    return "\u2014"


def _num(value: Any, fmt: str = ".3f") -> str:
    return format(value, fmt) if isinstance(value, (int, float)) and not isinstance(value, bool) else "\u2014"


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def render_html(run_dir: Path, data: RunData, drawn: list, skipped: list) -> str:
    c = data.config
    steps = sorted({s for xs, _ in data.series.values() for s in xs})
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>tiltlm report: {html.escape(run_dir.name)}</title>",
        f"<style>{CSS}</style></head><body><h1>tiltlm report: {html.escape(run_dir.name)}</h1>",
        _table(["setting", "value"], [
            ["objective", _get(c, "objective.name")], ["advantage", _get(c, "advantage.name")],
            ["task", _get(c, "task.name")], ["steps", _get(c, "train.steps", "steps")],
            ["model", _get(c, "model.name_or_path", "model.path")],
            ["logged steps", f"{steps[0]}..{steps[-1]}" if steps else "\u2014"],
        ]),
    ]
    if data.eval_start or data.eval_final:
        rows = []
        for k in sorted(set(data.eval_start) | set(data.eval_final)):
            base, tuned = data.eval_start.get(k), data.eval_final.get(k)
            change = f"{(tuned - base) * 100:+.1f} pts" if base is not None and tuned is not None else "\u2014"
            rows.append([f"pass@{k}", _num(base), _num(tuned), change])
        parts += ["<h2>Held-out pass@k</h2>", _table(["metric", "base", "tuned", "change"], rows)]
    if data.forgetting:
        rows = [[str(f.get("family", "?")), _num(f.get("base")), _num(f.get("tuned")), _num(f.get("change"), "+.3f"),
                 _num(f.get("se"))] for f in data.forgetting]
        parts += ["<h2 id='forgetting'>Forgetting (held-out task families)</h2>",
                  _table(["family", "base", "tuned", "change", "se"], rows)]
    parts.append("<h2>Plots</h2>")
    for plot_id, title, png in drawn:
        b64 = base64.b64encode(png).decode("ascii")
        parts.append(f"<figure id='plot-{plot_id}'><figcaption>{html.escape(title)}</figcaption>"
                     f"<img alt='{html.escape(title)}' src='data:image/png;base64,{b64}'></figure>")
    if skipped:
        items = "".join(f"<li data-plot='{i}'>{html.escape(t)} <span class='muted'>(not logged: {html.escape(n)})"
                        f"</span></li>" for i, t, n in skipped)
        parts.append(f"<h2>Skipped plots</h2><ul id='skipped'>{items}</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def build_report(run_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write ``index.html`` and one PNG per plot to ``out_dir`` (default ``RUN_DIR/report``); returns the html path.

    Raises TiltError (one line naming the path) if the run directory or its ``metrics.jsonl`` is missing or a
    metrics line is malformed."""
    import matplotlib

    matplotlib.use("Agg")
    run_dir = Path(run_dir)
    data = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    drawn, skipped = render_plots(data)
    for plot_id, _, png in drawn:
        write_atomic(out / f"{plot_id}.png", png)
    index = out / "index.html"
    write_atomic(index, render_html(run_dir, data, drawn, skipped).encode("utf-8"))
    return index
