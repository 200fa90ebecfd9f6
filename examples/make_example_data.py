"""Example inputs as a user would bring them, made offline from scikit-learn's digits.

    .venv/bin/python examples/make_example_data.py [OUT]        # OUT defaults to examples/data

writes

- ``OUT/digits-png/<class>/<n>.png``: 32x32 RGB images of digits 0-9, a folder per class
  (the half of the digits the members below never saw);
- ``OUT/digits-png-ood/<n>.png``: the same digits inverted (white background), an OOD set;
- ``OUT/members/member_<m>.onnx`` and ``member_<m>.pt2``: an ensemble of small CNNs trained
  by this script's own plain PyTorch loop on the other half of the digits, standing in for
  an ensemble trained in another code base. Each takes raw pixels (float32, 0-255,
  [B, 3, 32, 32]) and returns 10 logits; ``.onnx`` through ``torch.onnx.export``, ``.pt2``
  through ``torch.export.save``.

The members never see an image of ``digits-png``, so the Hydra's calibration and test
splits of that folder are unseen by its teachers too.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch import nn

SIZE = 32


def upscale(pixels_8x8: np.ndarray) -> np.ndarray:
    """[N, 64] values 0-16 -> [N, 32, 32, 3] uint8, bilinear, grey replicated to RGB."""
    out = np.empty((len(pixels_8x8), SIZE, SIZE, 3), dtype=np.uint8)
    for i, row in enumerate(pixels_8x8):
        img = Image.fromarray((row.reshape(8, 8) * (255 / 16)).astype(np.uint8), mode="L")
        out[i] = np.asarray(img.resize((SIZE, SIZE), Image.BILINEAR).convert("RGB"))
    return out


def write_images(out: Path, images: np.ndarray, labels: np.ndarray | None) -> None:
    for i, img in enumerate(images):
        folder = out / str(labels[i]) if labels is not None else out
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:04d}.png")


class SmallCNN(nn.Module):
    """A member as another code base might define it: raw 0-255 pixels in, logits out."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(32 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x / 255.0)


def train_member(seed: int, X: torch.Tensor, y: torch.Tensor, epochs: int) -> SmallCNN:
    torch.manual_seed(seed)
    model = SmallCNN()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(X), generator=g).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", type=Path, default=Path(__file__).parent / "data")
    parser.add_argument("--members", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=15)
    args = parser.parse_args()
    out: Path = args.out
    if (out / "digits-png").exists():
        print(f"{out / 'digits-png'} exists: remove {out} to make the example data again", file=sys.stderr)
        return 1

    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    members_rows, folder_rows = order[: len(order) // 2], order[len(order) // 2:]
    images = upscale(digits.data)

    write_images(out / "digits-png", images[folder_rows], digits.target[folder_rows])
    write_images(out / "digits-png-ood", 255 - images[folder_rows[:300]], None)

    X = torch.as_tensor(images[members_rows].transpose(0, 3, 1, 2), dtype=torch.float32)
    y = torch.as_tensor(digits.target[members_rows])
    (out / "members").mkdir(parents=True, exist_ok=True)
    for m in range(args.members):
        model = train_member(m, X, y, args.epochs)
        example = (X[:2],)
        batch = {"x": {0: torch.export.Dim("batch")}}
        program = torch.onnx.export(model, example, input_names=["pixels"], output_names=["logits"],
                                    dynamic_shapes=batch, dynamo=True, external_data=False, verbose=False)
        program.save(str(out / "members" / f"member_{m}.onnx"))  # type: ignore[union-attr]
        torch.export.save(torch.export.export(model, example, dynamic_shapes=batch),
                          str(out / "members" / f"member_{m}.pt2"))
        with torch.no_grad():
            accuracy = (model(X).argmax(1) == y).float().mean().item()
        print(f"member {m}: training accuracy {accuracy:.3f}", file=sys.stderr)
    print(f"wrote {len(folder_rows)} images in {out / 'digits-png'}, 300 OOD images and "
          f"{args.members} members in {out / 'members'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
