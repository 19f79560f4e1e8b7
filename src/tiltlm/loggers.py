"""Optional metric sinks beside ``metrics.jsonl``: TensorBoard (``log.tensorboard``) and Weights & Biases
(``log.wandb_project``). Both are imported lazily, only when enabled."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from tiltlm.config import Config, config_to_dict
from tiltlm.errors import TiltError


def _scalars(metrics: dict) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()
            if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}


def check_loggers(cfg: Config) -> None:
    """Fail before the run directory exists when a requested logger is not installed."""
    if cfg.log.tensorboard == "on" and importlib.util.find_spec("tensorboard") is None:
        raise TiltError("log.tensorboard=on needs tensorboard: pip install tensorboard (or set log.tensorboard=off)")
    if cfg.log.wandb_project and importlib.util.find_spec("wandb") is None:
        raise TiltError("log.wandb_project is set but wandb is not installed: pip install wandb (or unset "
                        "log.wandb_project)")


class ExtraLoggers:
    """TensorBoard writer (``RUN_DIR/tb``) and/or a wandb run; ``log`` writes every numeric metric at its step."""

    def __init__(self, cfg: Config, run_dir: Path):
        self.tb: Any = None
        self.wandb: Any = None
        mode = cfg.log.tensorboard
        if mode == "on" or (mode == "auto" and importlib.util.find_spec("tensorboard") is not None):
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                if mode == "on":
                    raise TiltError(
                        "log.tensorboard=on needs tensorboard: pip install tensorboard (or set log.tensorboard=off)"
                    ) from None
            else:
                self.tb = SummaryWriter(log_dir=str(run_dir / "tb"))
        if cfg.log.wandb_project:
            try:
                import wandb
            except ImportError:
                self.close()
                raise TiltError(
                    "log.wandb_project is set but wandb is not installed: pip install wandb (or unset log.wandb_project)"
                ) from None
            self.wandb = wandb.init(project=cfg.log.wandb_project, dir=str(run_dir), name=run_dir.name,
                                    config=config_to_dict(cfg))

    def log(self, metrics: dict) -> None:
        step = metrics.get("step")
        values = _scalars(metrics)
        if self.tb is not None:
            for key, value in values.items():
                self.tb.add_scalar(key, value, global_step=step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
            self.tb = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
