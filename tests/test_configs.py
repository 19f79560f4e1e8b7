"""Every recipe in configs/ loads strictly and resolves against the registries (no training)."""

from pathlib import Path

import pytest

from tiltlm.config import load_config
from tiltlm.run import prepare

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_there_are_recipes():
    assert len(CONFIGS) >= 20


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_recipe_resolves(path, tmp_path):
    cfg = load_config(path, [f"log.run_dir={tmp_path}", "objective.rehearsal_prompts=32"])
    s = prepare(cfg)
    assert s.objective is not None and callable(s.advantage)
    assert not any(tmp_path.iterdir())  # resolving writes nothing
