"""Checkpoint files: the key that refuses stale ones, atomic saves, loading, and the one rule
every fitted network follows: load the finished checkpoint, or fit (resuming the partial one),
save the finished one and drop the partial.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import nn

from contract.files import write_atomic
from training.config import RunConfig
from training.device import Runtime

log = logging.getLogger(__name__)

Net = TypeVar("Net", bound=nn.Module)


def config_key(*parts: Any) -> str:
    """A short hash of whatever decides a checkpoint's content, to refuse stale ones."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_atomic(obj: Any, path: Path) -> None:
    """torch.save to a temporary file beside ``path``, then rename: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: Path, key: str) -> dict[str, Any] | None:
    """The checkpoint at ``path`` if it was written for ``key``; None if absent or stale."""
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a truncated or foreign file: start that stage over
        log.warning("ignoring unreadable checkpoint %s: %s", path, exc)
        return None
    if state.get("key") != key:
        log.warning("ignoring checkpoint %s: written for another configuration", path)
        return None
    return state


def partial_path(final: Path) -> Path:
    """Where the per-epoch checkpoint of the fit that ends in ``final`` lives."""
    return final.with_suffix(".partial.pt")


@dataclass(frozen=True)
class Checkpoints:
    """A run's checkpoint folder (``runs/<name>/``).

    ``scope`` goes into every key (the data settings: the same arrays read differently make
    another model); ``record`` is stored in every finished checkpoint (the run's config).
    """

    folder: Path
    scope: tuple[Any, ...]
    record: dict[str, Any]

    @classmethod
    def of_run(cls, config: RunConfig) -> Checkpoints:
        return cls(Path(config.runs_dir) / config.name, (config.data,), config.to_dict())

    def key(self, *parts: Any) -> str:
        return config_key(*self.scope, *parts)

    def fit_or_load(self, net: Net, name: str, key: str, rt: Runtime, fit: Callable[[Path], object],
                    label: str) -> Net:
        """``net`` with the weights of the finished checkpoint ``name`` when it was written
        for ``key``; otherwise ``fit(partial)`` trains it in place (resuming from and writing
        to the per-epoch ``partial`` file), and the finished checkpoint replaces the partial.
        ``label`` names the network in the log. Returned on ``rt``'s device, in eval mode.
        """
        final = self.folder / name
        state = load_checkpoint(final, key)
        if state is not None:
            net.load_state_dict(state["model"])
            log.info("%s: loaded finished checkpoint %s", label, final)
            return net.to(rt.device).eval()
        fit(partial_path(final))
        if rt.is_main:
            save_atomic({"key": key, "model": net.state_dict(), "config": self.record}, final)
            partial_path(final).unlink(missing_ok=True)
        rt.barrier()
        return net.to(rt.device).eval()
