from __future__ import annotations

from pathlib import Path

import pytest

from training.config import RunConfig, load_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def tiny_config(tmp_path: Path) -> RunConfig:
    """The seconds-long config, with its checkpoints under tmp_path."""
    return load_config(ROOT / "configs" / "tiny.toml", [f'runs_dir="{tmp_path / "runs"}"'])
