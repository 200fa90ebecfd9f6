"""Registries of network parts by name, as ``model.body`` and ``model.head`` name them.

A module that defines a body or a head registers its builder here with a decorator;
``training.networks`` builds networks from these registries (and imports every module that
registers built-in parts).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from torch import nn

from training.config import ConfigError, ModelConfig

B = TypeVar("B", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class NetSpec:
    """What the data decides about a network: task, input and output sizes."""

    task: str
    feature_shape: tuple[int, ...]
    # Classes for classification; regression output dimensions D otherwise.
    out_dim: int

    @property
    def head_out(self) -> int:
        return self.out_dim if self.task == "classification" else 2 * self.out_dim


class Registry(Generic[B]):
    """Builders by name for one part of a network (``kind``: "body" or "head")."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, B] = {}

    def register(self, name: str) -> Callable[[B], B]:
        def add(builder: B) -> B:
            if name in self._builders:
                raise ValueError(f"a {self.kind} named {name!r} is already registered")
            self._builders[name] = builder
            return builder
        return add

    def __contains__(self, name: object) -> bool:
        return name in self._builders

    def __iter__(self) -> Iterator[str]:
        return iter(self._builders)

    def get(self, name: str) -> B:
        if name not in self._builders:
            raise ConfigError(f"unknown model.{self.kind} {name!r}; registered: {sorted(self._builders)}")
        return self._builders[name]


# body(cfg, spec) -> a module [B, d] (normalized inputs) -> features, with ``out_features``.
BodyBuilder = Callable[[ModelConfig, NetSpec], nn.Module]
# head(cfg, spec, body, num_heads) -> a module features -> [B, M, O], with ``num_heads`` and
# ``replicate(num_heads)`` (M copies of a one-head bank: phase 2's start).
HeadBuilder = Callable[[ModelConfig, NetSpec, Any, int], nn.Module]

BODIES: Registry[BodyBuilder] = Registry("body")
HEADS: Registry[HeadBuilder] = Registry("head")
