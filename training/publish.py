"""Publishing into the versioned model repository: ``<repository>/<name>/<version>/``.

A version is assembled in a hidden staging folder beside the versions and renamed into place
in one step, so the service never sees a half-written version; a published version is never
modified (a new calibration or training makes a new version).
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from contract.layout import NAME_PATTERN, versions
from training.config import ConfigError

log = logging.getLogger(__name__)

def publish(repository: Path, name: str, write: Callable[[Path], None]) -> Path:
    """Call ``write(staging_dir)`` then move the folder into the next free version."""
    if not NAME_PATTERN.match(name):
        raise ConfigError(f"model name (the config's name) must match {NAME_PATTERN.pattern}, got {name!r}")
    model_dir = repository / name
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f".staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        write(staging)
        for _ in range(100):
            target = model_dir / str((versions(model_dir) or [0])[-1] + 1)
            try:
                os.rename(staging, target)  # atomic; fails if another publisher took it
            except OSError:
                continue
            log.info("published %s", target)
            return target
        raise RuntimeError(f"could not find a free version under {model_dir}")
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
