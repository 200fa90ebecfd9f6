"""Networks built by name: a body (mlp | cnn) that maps raw features to a feature vector, and a
bank of M light heads (linear | mlp) on top of it. An ensemble member is the same network
with one head, so a member, the KD student and the Hydra share one code path.

Head weights are stored stacked per head ([M, F, O]) so all heads run as one batched matmul;
"copying" the phase-1 head M times clones that slice.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from training.config import ConfigError, ModelConfig
from training.resnet import BlockHeadBank, ResNetBody

# Regression variances never go below this (in target units squared, times the target scale).
MIN_VARIANCE = 1e-6


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


# ---------------------------------------------------------------------------------- bodies

class MLPBody(nn.Module):
    def __init__(self, in_features: int, hidden: tuple[int, ...], dropout: float) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.net = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))  # [B, F]


class CNNBody(nn.Module):
    """Two 3x3 conv layers per stage, 2x2 max-pool between stages, then a linear layer."""

    def __init__(self, image_shape: tuple[int, ...], channels: tuple[int, ...],
                 hidden: tuple[int, ...], dropout: float, in_features: int) -> None:
        super().__init__()
        if len(image_shape) != 3:
            raise ConfigError(f"model.image_shape must be (C, H, W) for the cnn body, got {list(image_shape)}")
        self.image_shape = tuple(image_shape)
        if math.prod(self.image_shape) != in_features:
            raise ConfigError(f"model.image_shape {list(image_shape)} holds {math.prod(image_shape)} "
                              f"values, the data has {in_features} features per row")
        c, h, w = image_shape
        layers: list[nn.Module] = []
        for i, out in enumerate(channels):
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU()]
            c = out
            if i % 2 == 1 and min(h, w) >= 4:
                layers.append(nn.MaxPool2d(2))
                h, w = h // 2, w // 2
        self.conv = nn.Sequential(*layers)
        width = hidden[-1] if hidden else 128
        self.fc = nn.Sequential(nn.Linear(c * h * w, width), nn.ReLU(),
                                *( [nn.Dropout(dropout)] if dropout > 0 else [] ))
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = x.reshape(x.shape[0], *self.image_shape)  # [B, C, H, W]
        return self.fc(self.conv(images).flatten(1))  # [B, F]


BODIES: dict[str, Callable[[ModelConfig, NetSpec], nn.Module]] = {
    "mlp": lambda cfg, spec: MLPBody(math.prod(spec.feature_shape), cfg.hidden, cfg.dropout),
    "cnn": lambda cfg, spec: CNNBody(
        cfg.image_shape or spec.feature_shape, cfg.channels, cfg.hidden, cfg.dropout,
        math.prod(spec.feature_shape)),
    # With block heads the body stops before its last residual block (the heads copy it).
    "resnet": lambda cfg, spec: ResNetBody(
        cfg.image_shape or spec.feature_shape, math.prod(spec.feature_shape), cfg.channels,
        cfg.blocks, keep_last_block=cfg.head != "block"),
}


# ----------------------------------------------------------------------------------- heads

class HeadBank(nn.Module):
    """M heads applied at once: [B, F] -> [B, M, O]. ``hidden`` 0 means linear heads."""

    def __init__(self, num_heads: int, in_features: int, out_features: int, hidden: int = 0) -> None:
        super().__init__()
        self.num_heads, self.in_features, self.out_features, self.hidden = (
            num_heads, in_features, out_features, hidden)
        dims = [in_features, hidden, out_features] if hidden else [in_features, out_features]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(dims, dims[1:]):
            bound = 1.0 / math.sqrt(fan_in)  # nn.Linear's default initialisation
            self.weights.append(nn.Parameter(torch.empty(num_heads, fan_in, fan_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(num_heads, fan_out).uniform_(-bound, bound)))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        h = torch.einsum("bf,mfo->bmo", features, self.weights[0]) + self.biases[0]  # [B, M, O]
        for w, b in zip(list(self.weights)[1:], list(self.biases)[1:]):
            h = torch.einsum("bmf,mfo->bmo", F.relu(h), w) + b  # [B, M, O]
        return h

    @torch.no_grad()
    def replicate(self, num_heads: int) -> HeadBank:
        """A bank of ``num_heads`` exact copies of this bank's single head (phase 2's start)."""
        if self.num_heads != 1:
            raise ValueError(f"replicate needs a one-head bank, this one has {self.num_heads}")
        bank = HeadBank(num_heads, self.in_features, self.out_features, self.hidden)
        for dst, src in zip([*bank.weights, *bank.biases], [*self.weights, *self.biases]):
            dst.copy_(src.expand_as(dst))
        return bank.to(self.weights[0].device)


HEADS: dict[str, Callable[[ModelConfig, NetSpec, nn.Module, int], nn.Module]] = {
    "linear": lambda cfg, spec, body, m: HeadBank(m, body.out_features, spec.head_out, 0),
    "mlp": lambda cfg, spec, body, m: HeadBank(m, body.out_features, spec.head_out, cfg.head_hidden),
    "block": lambda cfg, spec, body, m: BlockHeadBank(m, body.out_features, spec.head_out),
}


# ---------------------------------------------------------------------------------- network

class HydraNet(nn.Module):
    """Normalization, body, heads. Raw features in; per-head outputs out.

    classification: logits [B, M, C]; regression: [B, M, 2, D] with mean and variance in
    the target's units. With M = 1 this is an ensemble member or the KD student.
    """

    def __init__(self, cfg: ModelConfig, spec: NetSpec, num_heads: int) -> None:
        super().__init__()
        if cfg.body not in BODIES:
            raise ConfigError(f"unknown model.body {cfg.body!r}; registered: {sorted(BODIES)}")
        if cfg.head not in HEADS:
            raise ConfigError(f"unknown model.head {cfg.head!r}; registered: {sorted(HEADS)}")
        if cfg.head == "block" and cfg.body != "resnet":
            raise ConfigError(f"model.head = \"block\" copies the last residual block: it needs "
                              f"model.body = \"resnet\", got {cfg.body!r}")
        self.spec = spec
        self.body = BODIES[cfg.body](cfg, spec)
        self.heads = HEADS[cfg.head](cfg, spec, self.body, num_heads)
        d = math.prod(spec.feature_shape)
        self.register_buffer("x_mean", torch.zeros(d))
        self.register_buffer("x_std", torch.ones(d))
        self.register_buffer("y_mean", torch.zeros(spec.out_dim))
        self.register_buffer("y_std", torch.ones(spec.out_dim))

    @property
    def num_heads(self) -> int:
        return self.heads.num_heads

    def set_stats(self, x_mean: np.ndarray, x_std: np.ndarray,
                  y_mean: np.ndarray | None = None, y_std: np.ndarray | None = None) -> None:
        with torch.no_grad():
            self.x_mean.copy_(torch.as_tensor(x_mean).flatten())
            self.x_std.copy_(torch.as_tensor(x_std).flatten())
            if y_mean is not None and y_std is not None:
                self.y_mean.copy_(torch.as_tensor(y_mean).flatten())
                self.y_std.copy_(torch.as_tensor(y_std).flatten())

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(x.shape[0], -1)  # [B, d]
        return (flat - self.x_mean) / self.x_std

    def forward_normalized(self, z: torch.Tensor) -> torch.Tensor:
        """Per-head outputs from already normalized inputs [B, d] (for input perturbations)."""
        raw = self.heads(self.body(z))  # [B, M, O]
        if self.spec.task == "classification":
            return raw
        d = self.spec.out_dim
        mean = raw[..., :d] * self.y_std + self.y_mean  # [B, M, D]
        var = (F.softplus(raw[..., d:]) + MIN_VARIANCE) * self.y_std**2  # [B, M, D]
        return torch.stack([mean, var], dim=2)  # [B, M, 2, D]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_normalized(self.normalize(x))


class Ensemble(nn.Module):
    """M independent members behind the same output shape as a Hydra: [B, M, ...]."""

    def __init__(self, members: list[HydraNet]) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.spec = members[0].spec

    @property
    def num_heads(self) -> int:
        return len(self.members)

    def forward_normalized(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([m.forward_normalized(z) for m in self.members], dim=1)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return self.members[0].normalize(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m(x) for m in self.members], dim=1)


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
