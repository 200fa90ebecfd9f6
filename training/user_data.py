"""Data as users keep it: CSV and npz files, folders of class sub-folders of image files, and
class labels of any kind (integers, integral floats, strings) mapped to contiguous indices.

Every problem is a ``DataError`` naming the file, the row and the column.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import numpy as np

from training.config import DataConfig
from training.data import Array, Dataset, DataError, check_arrays, tabular_dataset


def _label_name(value: object) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def encode_labels(y: np.ndarray, task: str, where: str) -> tuple[str, np.ndarray, tuple[str, ...]]:
    """The task, the targets the networks train on, and the class labels.

    Class labels may be integers, integral floats (as a CSV gives them) or strings; they are
    mapped in sorted order to contiguous indices 0..C-1, and their names kept for the model's
    metadata. ``task`` (classification | regression | "") is inferred only when the values
    leave no doubt: strings or booleans are classes, non-integral numbers are a regression
    target, two distinct values are a binary class; anything else asks for ``data.task``.
    """
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim == 2:
        numeric = y.dtype.kind in "biuf"
        if numeric and y.shape[1] > 1 and np.isin(y, (0, 1)).all() and np.all(y.sum(axis=1) == 1):
            raise DataError(f"{where}: y looks one-hot encoded ({list(y.shape)}, one 1 per row); give "
                            "one class label per row instead (for example y.argmax(axis=1))")
        if task == "classification":
            raise DataError(f"{where}: classification y must hold one label per row [N], got shape "
                            f"{list(y.shape)}")
        if task == "":
            task = "regression"
    if y.ndim != 1 and y.ndim != 2:
        raise DataError(f"{where}: y must be [N] or [N, D], got shape {list(y.shape)}")
    if y.dtype.kind in "US":
        if task == "regression":
            example = next((v for v in y if not _is_number(v)), y[0])
            raise DataError(f"{where}: a regression target must be numeric, got {str(example)!r}")
        task = "classification"
    elif y.dtype.kind == "b":
        if task == "regression":
            raise DataError(f"{where}: a regression target must be numeric, got booleans")
        task = "classification"
    elif y.dtype.kind in "iuf":
        if not np.all(np.isfinite(y)):
            raise DataError(f"{where}: y has {int((~np.isfinite(y)).sum())} NaN/Inf values")
        integral = bool(np.all(y == np.round(y)))
        distinct = np.unique(y)
        if task == "classification" and not integral:
            row = int(np.flatnonzero(y != np.round(y))[0])
            raise DataError(f"{where}: class labels must be integers or strings, got {y[row].item()!r} in "
                            f"row {row}")
        if task == "":
            if not integral:
                task = "regression"
            elif len(distinct) == 2:
                task = "classification"
            else:
                shown = ", ".join(_label_name(v) for v in distinct[:5])
                raise DataError(
                    f"{where}: cannot tell whether y is a class label or a regression target: it "
                    f"holds {len(distinct)} distinct integer values ({shown}"
                    f"{', ...' if len(distinct) > 5 else ''}); set data.task = \"classification\" "
                    "or \"regression\"")
    else:
        raise DataError(f"{where}: y must hold numbers or strings, got dtype {y.dtype}")
    if task == "regression":
        return task, y, ()
    distinct, indices = np.unique(y, return_inverse=True)
    if len(distinct) < 2:
        raise DataError(f"{where}: classification needs at least 2 classes, got {len(distinct)}")
    labels = tuple(_label_name(v) for v in distinct)
    if len(set(labels)) != len(labels):
        raise DataError(f"{where}: class labels {list(labels)} are not distinct as text")
    return task, indices.reshape(-1).astype(np.int64), labels


def _is_number(text: object) -> bool:
    try:
        float(str(text))
    except ValueError:
        return False
    return True


def _read_csv(path: Path, target: str) -> tuple[np.ndarray, np.ndarray | None]:
    """Numeric feature columns and the target column (numbers when every value is one,
    strings otherwise). Errors name the row (1-based, header = row 1) and the column."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:  # a BOM is not part of a name
            rows = list(csv.reader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot be read as CSV: {exc}") from exc
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if len(rows) < 2:
        raise DataError(f"{path}: expected a header row and data rows, found {len(rows)} rows")
    header = [h.strip() for h in rows[0]]
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise DataError(f"{path}: row {number} has {len(row)} fields, the header has {len(header)}")
    if len(header) == 1 and any(sep in header[0] for sep in ";\t|"):
        raise DataError(f"{path}: the header {header[0]!r} is one column; columns must be separated "
                        "by commas")
    col = header.index(target) if target in header else None
    features = [i for i in range(len(header)) if i != col]
    if not features:
        raise DataError(f"{path}: no feature columns besides the target {target!r}")
    X = np.empty((len(rows) - 1, len(features)), dtype=np.float64)
    for r, row in enumerate(rows[1:]):
        for j, i in enumerate(features):
            try:
                X[r, j] = float(row[i])
            except ValueError:
                raise DataError(f"{path}: row {r + 2}, column {header[i]!r}: expected a number, got "
                                f"{row[i]!r}") from None
    if col is None:
        return X, None
    values = [row[col].strip() for row in rows[1:]]
    if all(_is_number(v) for v in values):
        return X, np.array([float(v) for v in values])
    if any(v == "" for v in values):
        raise DataError(f"{path}: column {target!r} has empty values (first in row "
                        f"{values.index('') + 2})")
    return X, np.array(values)


def _read_file(path: Path, target: str) -> tuple[np.ndarray, np.ndarray | None]:
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                if "X" not in f:
                    raise DataError(f"{path}: expected an array named 'X', found {sorted(f.files)}")
                return np.asarray(f["X"]), (np.asarray(f["y"]) if "y" in f else None)
        except DataError:
            raise
        except (OSError, ValueError, EOFError) as exc:  # not an npz, or object arrays
            raise DataError(f"{path}: cannot be read as .npz (numeric or string arrays X, y): "
                            f"{exc}") from exc
    if path.suffix == ".csv":
        return _read_csv(path, target)
    raise DataError(f"{path}: expected a .npz (arrays X, y) or .csv file")


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _read_images(files: list[Path], config: DataConfig, where: str) -> np.ndarray:
    """[N, C, H, W] uint8 pixel values 0-255 (a quarter of float32's size until the splits
    are cut); every file resized to ``data.image_size`` or required to share one size."""
    from PIL import Image, UnidentifiedImageError

    if config.channels not in (1, 3):
        raise DataError(f"data.channels must be 1 (grey) or 3 (RGB), got {config.channels}")
    if config.image_size and len(config.image_size) != 2:
        raise DataError(f"data.image_size must be [height, width], got {list(config.image_size)}")
    mode = "L" if config.channels == 1 else "RGB"
    out: np.ndarray | None = None
    for i, file in enumerate(files):
        try:
            with Image.open(file) as img:
                img = img.convert(mode)
                if config.image_size:
                    img = img.resize((config.image_size[1], config.image_size[0]), Image.BILINEAR)
                pixels = np.asarray(img, dtype=np.uint8)  # modes L and RGB: 8 bits a channel
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"{file}: not an image that can be read: {exc}") from exc
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # [C, H, W]
        if out is None:
            out = np.empty((len(files), *pixels.shape), dtype=np.uint8)
        elif pixels.shape != out.shape[1:]:
            raise DataError(f"{file}: {pixels.shape[2]}x{pixels.shape[1]} pixels, the first image of "
                            f"{where} has {out.shape[3]}x{out.shape[2]}; set data.image_size = "
                            "[height, width] to resize them all")
        out[i] = pixels
    if out is None:
        raise DataError(f"{where}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return out


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_image_folder(config: DataConfig) -> Dataset:
    """Images as users keep them: ``path/<class name>/<image files>``."""
    root = Path(config.path)
    if not root.is_dir():
        raise DataError(f"data.path {root} is not a folder of class sub-folders")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files, labels = [], []
    for folder in classes:
        found = _image_files(folder)
        files += found
        labels += [folder.name] * len(found)
    if len({*labels}) < 2:
        raise DataError(f"{root}: expected at least 2 class sub-folders holding image files, found "
                        f"{len({*labels})}")
    X = _read_images(files, config, str(root))
    task, y, names = encode_labels(np.array(labels), config.task or "classification", str(root))
    X, y = check_arrays(X, y, task, str(root))
    ood: dict[str, Array] = {}
    if config.ood_path:
        X_ood = _read_images(_image_files(Path(config.ood_path)), config, config.ood_path)
        if X_ood.shape[1:] != X.shape[1:]:
            raise DataError(f"{config.ood_path}: images of shape {list(X_ood.shape[1:])}, expected "
                            f"{list(X.shape[1:])} like the training images")
        ood = {Path(config.ood_path).name + "_ood": X_ood.astype(np.float32)}
    data = tabular_dataset(root.name, X, y, task, config, names, ood)
    return replace(data, preprocessing={"input": f"image [{X.shape[1]}, {X.shape[2]}, {X.shape[3]}] "
                                                 "(channels, height, width), pixel values 0-255"})


def load_user_file(config: DataConfig) -> Dataset:
    path = Path(config.path)
    X, y = _read_file(path, config.target)
    if y is None:
        raise DataError(f"{path}: no target found (array 'y' or column {config.target!r})")
    if config.task not in ("", "classification", "regression"):
        raise DataError(f"data.task must be classification or regression, got {config.task!r}")
    if X.ndim >= 1 and y.ndim >= 1 and X.shape[0] != y.shape[0]:
        raise DataError(f"{path}: X has {X.shape[0]} rows but y has {y.shape[0]}")
    task, y, labels = encode_labels(y, config.task, str(path))
    X, y = check_arrays(X, y, task, str(path))
    ood: dict[str, Array] = {}
    if config.ood_path:
        X_ood, _ = _read_file(Path(config.ood_path), config.target)
        if X_ood.dtype.kind not in "biuf":
            raise DataError(f"{config.ood_path}: X must be numeric, got dtype {X_ood.dtype}")
        with np.errstate(over="ignore"):
            X_ood = X_ood.astype(np.float32)
        if X_ood.shape[1:] != X.shape[1:]:
            raise DataError(
                f"{config.ood_path}: OOD features have shape {list(X_ood.shape[1:])}, "
                f"expected {list(X.shape[1:])} like the training data"
            )
        if not np.all(np.isfinite(X_ood)):
            raise DataError(f"{config.ood_path}: X has NaN/Inf values")
        ood = {path.stem + "_ood": X_ood}
    return tabular_dataset(path.stem, X, y, task, config, labels, ood)
