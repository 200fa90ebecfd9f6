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

from contract.layout import MODEL_FILE, NAME_PATTERN, version_of, versions
from contract.model import ContractError, ModelMetadata
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


def newest_metadata(repository: Path, name: str) -> tuple[int, ModelMetadata] | None:
    """The newest published version of ``name`` and its model file's metadata, or None when
    there is none (or its file is not a model: the service refuses it too)."""
    import onnx

    found = versions(repository / name)
    if not found:
        return None
    # The folder as written ("01" is version 1 too).
    folder = next(p for p in (repository / name).iterdir() if p.is_dir() and version_of(p.name) == found[-1])
    path = folder / MODEL_FILE
    try:
        model = onnx.load(str(path), load_external_data=False)
        return found[-1], ModelMetadata.from_props({p.key: p.value for p in model.metadata_props})
    except (OSError, ContractError, onnx.onnx_cpp2py_export.checker.ValidationError, ValueError,
            RuntimeError):
        return None


def check_publishable(repository: Path, name: str, task: str, class_labels: tuple[str, ...],
                      feature_shape: tuple[int, ...], allow: bool) -> None:
    """Refuse to publish under ``name`` a model whose task, class labels or feature shape differ
    from its newest version's: clients of that name would get answers of another kind from
    the same URL (a copied config keeps the default model's name). ``allow`` publishes anyway."""
    newest = newest_metadata(repository, name)
    if newest is None or allow:
        return
    version, meta = newest
    differs = []
    if meta.task != task:
        differs.append(f"task {task} (version {version}: {meta.task})")
    if tuple(meta.class_labels) != tuple(class_labels):
        differs.append(f"class labels {list(class_labels)[:10]} (version {version}: "
                       f"{list(meta.class_labels)[:10]})")
    if tuple(meta.feature_shape) != tuple(feature_shape):
        differs.append(f"feature shape {list(feature_shape)} (version {version}: "
                       f"{list(meta.feature_shape)})")
    if differs:
        raise ConfigError(
            f"model {name!r} in {repository} is another model: this run has " + "; ".join(differs)
            + ". Give this run its own name (the config's name = \"...\", or --set name=...), or set "
            "export.replace_model = true to publish it as the next version of that name anyway")
