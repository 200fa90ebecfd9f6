"""A compact ResNet (He et al. 2016, basic blocks) for images of any size, and heads that take
its last residual block, as the Hydra paper does for image models.

Body: a 3x3 stem, then one stage per entry of ``model.channels`` with ``model.blocks[i]``
basic blocks (the first block of every stage after the first halves the resolution), then
global average pooling. With ``model.head = "block"`` the body stops before its last block
and each head is its own copy of that block, pooled, followed by its own linear layer: the
heads share everything but the last stage. All M head blocks run as one grouped convolution.

They register themselves: body "resnet" (stages from ``model.channels`` and ``model.blocks``),
the fixed layouts "resnet18" (64-128-256-512 channels, 2-2-2-2 blocks) and "resnet34"
(3-4-6-3 blocks) of He et al., and head "block". The stem is a 3x3 convolution without
downsampling, as for 32x32 images.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from training.config import ConfigError, ModelConfig
from training.registry import BODIES, HEADS, NetSpec


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus the input (1x1 conv when the shape changes), ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.skip(x))


class ResNetBody(nn.Module):
    """[B, C*H*W] (normalized, flat) -> pooled features [B, F], or, with ``keep_last_block``
    False, the feature map before the last block [B, F, h, w]."""

    def __init__(self, image_shape: tuple[int, ...], in_features: int, channels: tuple[int, ...],
                 blocks: tuple[int, ...], keep_last_block: bool = True) -> None:
        super().__init__()
        if len(image_shape) != 3:
            raise ConfigError(f"the resnet body needs an image shape (C, H, W): set model.image_shape, "
                              f"got {list(image_shape)}")
        if image_shape[0] * image_shape[1] * image_shape[2] != in_features:
            raise ConfigError(f"model.image_shape {list(image_shape)} holds "
                              f"{image_shape[0] * image_shape[1] * image_shape[2]} values, the data has "
                              f"{in_features} features per row")
        if not channels or len(blocks) != len(channels) or min(blocks) < 1:
            raise ConfigError(f"model.blocks {list(blocks)} must give at least one block for each of "
                              f"the {len(channels)} stages in model.channels {list(channels)}")
        self.image_shape = tuple(image_shape)
        self.stem = nn.Sequential(nn.Conv2d(image_shape[0], channels[0], 3, padding=1, bias=False),
                                  nn.BatchNorm2d(channels[0]), nn.ReLU())
        layers: list[nn.Module] = []
        c = channels[0]
        for stage, (width, count) in enumerate(zip(channels, blocks)):
            for b in range(count):
                layers.append(BasicBlock(c, width, stride=2 if (stage > 0 and b == 0) else 1))
                c = width
        if not keep_last_block:
            last = layers.pop()
            if not isinstance(last.skip, nn.Identity):
                raise ConfigError("with model.head = \"block\" the last stage needs at least 2 blocks "
                                  "when it changes resolution (the heads copy a shape-preserving block)")
        self.blocks = nn.Sequential(*layers)
        self.keep_last_block = keep_last_block
        self.out_features = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        images = x.reshape(x.shape[0], *self.image_shape)  # [B, C, H, W]
        maps = self.blocks(self.stem(images))  # [B, F, h, w]
        if not self.keep_last_block:
            return maps
        return maps.mean(dim=(2, 3))  # [B, F]


class BlockHeadBank(nn.Module):
    """M heads, each a residual block on the shared map, pooled, then linear: [B, F, h, w] ->
    [B, M, O]. The M blocks are one grouped convolution over the map repeated M times."""

    def __init__(self, num_heads: int, channels: int, out_features: int) -> None:
        super().__init__()
        m, c = num_heads, channels
        self.num_heads, self.channels, self.out_features = m, c, out_features
        self.conv1 = nn.Conv2d(m * c, m * c, 3, padding=1, groups=m, bias=False)
        self.bn1 = nn.BatchNorm2d(m * c)
        self.conv2 = nn.Conv2d(m * c, m * c, 3, padding=1, groups=m, bias=False)
        self.bn2 = nn.BatchNorm2d(m * c)
        bound = 1.0 / c**0.5  # nn.Linear's default initialisation
        self.weight = nn.Parameter(torch.empty(m, c, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(m, out_features).uniform_(-bound, bound))

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        b, c, h, w = maps.shape
        x = maps.repeat(1, self.num_heads, 1, 1)  # [B, M*C, h, w], head m sees channels m*C..
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)) + x)  # [B, M*C, h, w]
        pooled = y.mean(dim=(2, 3)).reshape(b, self.num_heads, c)  # [B, M, C]
        return torch.einsum("bmc,mco->bmo", pooled, self.weight) + self.bias  # [B, M, O]

    @torch.no_grad()
    def replicate(self, num_heads: int) -> BlockHeadBank:
        """``num_heads`` exact copies of this bank's single head (phase 2's start)."""
        if self.num_heads != 1:
            raise ValueError(f"replicate needs a one-head bank, this one has {self.num_heads}")
        bank = BlockHeadBank(num_heads, self.channels, self.out_features).to(self.weight.device)
        for name in ("conv1", "conv2"):
            getattr(bank, name).weight.copy_(getattr(self, name).weight.repeat(num_heads, 1, 1, 1))
        for name in ("bn1", "bn2"):
            src, dst = getattr(self, name), getattr(bank, name)
            for attr in ("weight", "bias", "running_mean", "running_var"):
                getattr(dst, attr).copy_(getattr(src, attr).repeat(num_heads))
            dst.num_batches_tracked.copy_(src.num_batches_tracked)
        bank.weight.copy_(self.weight.expand_as(bank.weight))
        bank.bias.copy_(self.bias.expand_as(bank.bias))
        return bank


# With block heads the body stops before its last residual block (the heads copy it).
@BODIES.register("resnet")
def _resnet_body(cfg: ModelConfig, spec: NetSpec) -> ResNetBody:
    return ResNetBody(cfg.image_shape or spec.feature_shape, math.prod(spec.feature_shape), cfg.channels,
                      cfg.blocks, keep_last_block=cfg.head != "block")


LAYOUTS = {
    "resnet18": ((64, 128, 256, 512), (2, 2, 2, 2)),
    "resnet34": ((64, 128, 256, 512), (3, 4, 6, 3)),
}


def _fixed_layout(name: str) -> None:
    channels, blocks = LAYOUTS[name]
    defaults = ModelConfig()

    @BODIES.register(name)
    def body(cfg: ModelConfig, spec: NetSpec) -> ResNetBody:
        given = (tuple(cfg.channels), tuple(cfg.blocks))
        if given not in ((channels, blocks), (defaults.channels, defaults.blocks)):
            raise ConfigError(f"model.body = {name!r} has channels {list(channels)} and blocks "
                              f"{list(blocks)}; got model.channels {list(cfg.channels)} and model.blocks "
                              f"{list(cfg.blocks)}: leave them out, or use body \"resnet\" to choose them")
        return ResNetBody(cfg.image_shape or spec.feature_shape, math.prod(spec.feature_shape), channels,
                          blocks, keep_last_block=cfg.head != "block")


for _name in LAYOUTS:
    _fixed_layout(_name)


@HEADS.register("block")
def _block_heads(cfg: ModelConfig, spec: NetSpec, body: nn.Module, num_heads: int) -> BlockHeadBank:
    if not isinstance(body, ResNetBody):
        raise ConfigError(f"model.head = \"block\" copies the last residual block: it needs "
                          f"a ResNet body (resnet, {', '.join(LAYOUTS)}), got {cfg.body!r}")
    return BlockHeadBank(num_heads, body.out_features, spec.head_out)
