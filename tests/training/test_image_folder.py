"""Images as users keep them: a folder of class sub-folders of image files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.config import DataConfig
from training.data import DataError
from training.datasets import load_dataset


def _folder(root: Path, sizes: dict[str, tuple[int, int]] | None = None, n: int = 15) -> Path:
    """Two classes: bright squares on the left half ("left") or the right half ("right")."""
    rng = np.random.default_rng(0)
    for name in ("left", "right"):
        (root / name).mkdir(parents=True)
        for i in range(n):
            h, w = (sizes or {}).get(name, (12, 16))
            pixels = rng.integers(0, 40, size=(h, w, 3)).astype(np.uint8)
            cols = slice(0, w // 2) if name == "left" else slice(w // 2, w)
            pixels[:, cols] = 200
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    (root / "left" / "notes.txt").write_text("not an image, ignored")
    return root


def test_class_folders_become_labels_and_images_channels_first(tmp_path: Path) -> None:
    data = load_dataset(DataConfig(source="folder", path=str(_folder(tmp_path / "imgs"))))
    assert data.task == "classification" and data.class_labels == ("left", "right")
    assert data.feature_shape == (3, 12, 16)
    assert len(data.train) + len(data.calibration) + len(data.test) == 30
    # The label follows the image: "left" images are bright in their left half.
    for split in (data.train, data.calibration, data.test):
        left_bright = split.X[:, :, :, :8].mean(axis=(1, 2, 3)) > split.X[:, :, :, 8:].mean(axis=(1, 2, 3))
        np.testing.assert_array_equal(split.y, np.where(left_bright, 0, 1))
    assert data.ood["extrapolation"].shape == (len(data.test), 3, 12, 16)


def test_sizes_must_agree_or_be_resized(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", sizes={"right": (10, 10)})
    with pytest.raises(DataError, match=r"10x10 pixels, the first image of .* has 16x12; set data.image_size"):
        load_dataset(DataConfig(source="folder", path=str(root)))
    grey = load_dataset(DataConfig(source="folder", path=str(root), image_size=(8, 8), channels=1))
    assert grey.feature_shape == (1, 8, 8)


def test_bad_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"is not a folder of class sub-folders"):
        load_dataset(DataConfig(source="folder", path=str(tmp_path / "missing")))
    (tmp_path / "one" / "only").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "one" / "only" / "a.png")
    with pytest.raises(DataError, match=r"expected at least 2 class sub-folders holding image files, found 1"):
        load_dataset(DataConfig(source="folder", path=str(tmp_path / "one")))
    root = _folder(tmp_path / "imgs")
    (root / "right" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"broken.png: not an image that can be read"):
        load_dataset(DataConfig(source="folder", path=str(root)))


@pytest.mark.slow
def test_an_image_folder_trains_a_model_that_takes_images(tmp_path: Path) -> None:
    import onnxruntime as ort

    from training.config import load_config
    from training.pipeline import run_pipeline

    root = _folder(tmp_path / "imgs", n=30)
    config = load_config(Path(__file__).resolve().parents[2] / "configs" / "tiny.toml", [
        f'runs_dir="{tmp_path / "runs"}"', 'name="squares"', 'data.source="folder"', f'data.path="{root}"',
        'model.body="cnn"', "model.channels=[4, 8]", "ensemble.optim.epochs=20", "ensemble.optim.lr=0.01"])
    version = run_pipeline(config, tmp_path / "models")
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [3, 12, 16]
    left = np.zeros((1, 3, 12, 16), np.float32)
    left[..., :8] = 200.0
    (probs,) = session.run(["mean_probs"], {"input": left})
    assert probs.argmax() == 0  # "left"
