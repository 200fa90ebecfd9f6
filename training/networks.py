"""The network factory: a body that maps raw features to a feature vector and a bank of M light
heads on top of it, both built by name from the registries of ``training.registry``. This
module registers the bodies mlp and cnn and the heads linear and mlp; ``training.resnet``
registers resnet and block. An ensemble member is the same network with one head, so a
member, the KD student and the Hydra share one code path (``build_network``).

Head weights are stored stacked per head ([M, F, O]) so all heads run as one batched matmul;
"copying" the phase-1 head M times clones that slice.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from training.config import ConfigError, ModelConfig
from training.data import Dataset
from training.registry import BODIES, HEADS, NetSpec
from training.resnet import BlockHeadBank, ResNetBody  # importing it registers resnet and block
from training.scaling import feature_stats, target_stats
from training.uncertainty import to_target_units

# The network API; the resnet parts are re-exported (and so registered wherever networks are built).
__all__ = ["BODIES", "HEADS", "MIN_VARIANCE", "BlockHeadBank", "CNNBody", "Ensemble", "HeadBank",
           "HydraNet", "MLPBody", "NetSpec", "ResNetBody", "build_network", "count_parameters",
           "net_spec"]

# Regression variances never go below this (in target units squared, times the target scale).
MIN_VARIANCE = 1e-6


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


@BODIES.register("mlp")
def _mlp_body(cfg: ModelConfig, spec: NetSpec) -> MLPBody:
    return MLPBody(math.prod(spec.feature_shape), cfg.hidden, cfg.dropout)


@BODIES.register("cnn")
def _cnn_body(cfg: ModelConfig, spec: NetSpec) -> CNNBody:
    return CNNBody(cfg.image_shape or spec.feature_shape, cfg.channels, cfg.hidden, cfg.dropout,
                   math.prod(spec.feature_shape))


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


@HEADS.register("linear")
def _linear_heads(cfg: ModelConfig, spec: NetSpec, body: nn.Module, num_heads: int) -> HeadBank:
    return HeadBank(num_heads, body.out_features, spec.head_out, 0)


@HEADS.register("mlp")
def _mlp_heads(cfg: ModelConfig, spec: NetSpec, body: nn.Module, num_heads: int) -> HeadBank:
    return HeadBank(num_heads, body.out_features, spec.head_out, cfg.head_hidden)


# ---------------------------------------------------------------------------------- network

class HydraNet(nn.Module):
    """Normalization, body, heads. Raw features in; per-head outputs out.

    classification: logits [B, M, C]; regression: [B, M, 2, D] with mean and variance in
    the target's units. With M = 1 this is an ensemble member or the KD student.
    """

    def __init__(self, cfg: ModelConfig, spec: NetSpec, num_heads: int) -> None:
        super().__init__()
        body, heads = BODIES.get(cfg.body), HEADS.get(cfg.head)
        self.spec = spec
        self.body = body(cfg, spec)
        self.heads = heads(cfg, spec, self.body, num_heads)
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

    def standardized_heads(self, z: torch.Tensor) -> torch.Tensor:
        """Regression: per-head mean and variance [B, M, 2, D] in standardized target units
        (the units training fits in), from normalized inputs [B, d]."""
        raw = self.heads(self.body(z))  # [B, M, 2D]
        d = self.spec.out_dim
        return torch.stack([raw[..., :d], F.softplus(raw[..., d:]) + MIN_VARIANCE], dim=2)

    def target_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The training targets' mean and std [D]: standardized units -> target units."""
        return self.y_mean, self.y_std

    def forward_normalized(self, z: torch.Tensor) -> torch.Tensor:
        """Per-head outputs from already normalized inputs [B, d] (for input perturbations)."""
        if self.spec.task == "classification":
            return self.heads(self.body(z))  # [B, M, C]
        return to_target_units(self.standardized_heads(z), self.y_mean, self.y_std)

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

    def standardized_heads(self, z: torch.Tensor) -> torch.Tensor:
        return torch.cat([m.standardized_heads(z) for m in self.members], dim=1)

    def target_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Members are built for one data set (``build_network``) and keyed by its digest when
        # loaded, so they share its target statistics.
        return self.members[0].target_stats()

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return self.members[0].normalize(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([m(x) for m in self.members], dim=1)


def net_spec(data: Dataset) -> NetSpec:
    out = data.num_classes if data.task == "classification" else data.output_dim
    return NetSpec(data.task, data.feature_shape, out)


# Heads that hold a copy of the body's last stage only split a network for sharing: one member
# with such a head is the whole network with a linear head, the same function. Members are
# built that way, so that every head type of a Hydra is distilled from the same members.
MEMBER_HEAD = {"block": "linear"}


def member_model(model: ModelConfig) -> ModelConfig:
    """The architecture of one ensemble member for a Hydra of architecture ``model``."""
    return dataclasses.replace(model, head=MEMBER_HEAD.get(model.head, model.head))


def build_network(model: ModelConfig, data: Dataset, num_heads: int) -> HydraNet:
    """The one network factory: ``model``'s body and ``num_heads`` heads for ``data``, with the
    data's normalization statistics in its buffers. Draws its initial weights from torch's
    global generator, so the caller's seeding decides them."""
    net = HydraNet(model, net_spec(data), num_heads)
    x_mean, x_std = feature_stats(data.train.X.reshape(len(data.train), -1))
    if data.task == "regression":
        net.set_stats(x_mean, x_std, *target_stats(data.train.y))
    else:
        net.set_stats(x_mean, x_std)
    return net


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
