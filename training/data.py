"""Data: the offline defaults (digits, diabetes), user files, deterministic splits, OOD and shift sets.

Features are kept raw, exactly as the data set gives them (digits: pixel values 0-16); the
normalization statistics travel with the model and become part of the exported graph.
"""

from __future__ import annotations

import csv
import hashlib
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

from training.config import DataConfig

log = logging.getLogger(__name__)

Array = npt.NDArray[np.float32]


class DataError(ValueError):
    """Input data is malformed; the message names the file, array and problem."""


@dataclass(frozen=True)
class Split:
    X: Array
    y: npt.NDArray[np.generic]

    def __len__(self) -> int:
        return int(self.X.shape[0])


@dataclass(frozen=True)
class Dataset:
    """Train / calibration / test splits plus OOD and covariate-shift sets.

    ``X`` arrays are float32 ``[N, *feature_shape]``; ``y`` int64 class indices ``[N]`` or
    float32 regression targets ``[N, D]``.
    """

    name: str
    task: str
    feature_shape: tuple[int, ...]
    class_labels: tuple[str, ...]
    train: Split
    calibration: Split
    test: Split
    ood: dict[str, Array] = field(default_factory=dict)
    # Shift intensity (0 = clean) -> corrupted test split.
    shift: dict[float, Split] = field(default_factory=dict)
    preprocessing: dict[str, object] = field(default_factory=dict)
    # OOD set name -> how it is drawn, where that matters for what it measures ("uniform":
    # uniformly over the features' range, like the transfer set's uniform inputs).
    ood_drawn_like: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_labels)

    @property
    def output_dim(self) -> int:
        return 1 if self.task == "classification" else int(self.train.y.shape[1])

    def digest(self) -> str:
        """sha256 of what training sees: task, labels, shapes and the split arrays' bytes.

        Checkpoints are keyed by it, so a data file rewritten in place (other labels, other
        rows, other features) retrains instead of reusing what was fitted to the old one.
        """
        h = hashlib.sha256()
        h.update(repr((self.task, self.feature_shape, self.class_labels)).encode())
        for split in (self.train, self.calibration, self.test):
            for array in (split.X, split.y):
                h.update(repr((array.dtype.str, array.shape)).encode())
                h.update(np.ascontiguousarray(array).tobytes())
        return h.hexdigest()


def check_arrays(X: np.ndarray, y: np.ndarray, task: str, where: str) -> tuple[Array, np.ndarray]:
    """Fail fast on shapes, types and non-finite values, naming the array and the problem.

    Classification ``y`` must already be class indices (``encode_labels`` makes them).
    """
    if X.ndim < 2:
        raise DataError(f"{where}: X must be [N, features...], got shape {list(X.shape)}")
    if y.ndim not in (1, 2):
        raise DataError(f"{where}: y must be [N] or [N, D], got shape {list(y.shape)}")
    if X.shape[0] != y.shape[0]:
        raise DataError(f"{where}: X has {X.shape[0]} rows but y has {y.shape[0]}")
    if X.shape[0] < 20:
        raise DataError(f"{where}: need at least 20 samples, got {X.shape[0]}")
    if X.dtype.kind not in "biuf":
        raise DataError(f"{where}: X must be numeric, got dtype {X.dtype}")
    with np.errstate(over="ignore"):
        X = X.astype(np.float32)
    bad = ~np.isfinite(X)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise DataError(f"{where}: X has {int(bad.sum())} NaN/Inf values or values beyond float32 "
                        f"(first in row {row})")
    if task == "classification":
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise DataError(f"{where}: classification y must be class indices [N], got "
                            f"{y.dtype} {list(y.shape)}")
        y = y.astype(np.int64)
    else:
        if y.dtype.kind not in "biuf":
            raise DataError(f"{where}: regression y must be numeric, got dtype {y.dtype}")
        y = y.astype(np.float32)
        if not np.all(np.isfinite(y)):
            raise DataError(f"{where}: y has {int((~np.isfinite(y)).sum())} NaN/Inf values")
        y = y.reshape(y.shape[0], -1)
    return X, y


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


def split_indices(n: int, cal: float, test: float, seed: int) -> tuple[np.ndarray, ...]:
    """Deterministic shuffled split into train, calibration, test index arrays."""
    order = np.random.default_rng(seed).permutation(n)
    n_test = int(round(n * test))
    n_cal = int(round(n * cal))
    return order[n_test + n_cal :], order[n_test : n_test + n_cal], order[:n_test]


# Seeds of the random OOD draws on the validation split differ from the test split's.
_VALIDATION_SEED_OFFSET = 1000


def evaluation_split(config: DataConfig, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(train, calibration, evaluated rows, seed for random OOD/shift draws).

    With ``data.evaluate_on = "validation"`` the evaluated rows are a validation split taken
    from the training rows (as many as the test split), the test rows are left out of the run
    altogether, and the random OOD sets are drawn with other seeds: choosing settings on that
    report never looks at the test or OOD sets of the final one.
    """
    tr, ca, te = split_indices(n, config.calibration_fraction, config.test_fraction, config.seed)
    if config.evaluate_on == "test":
        return tr, ca, te, config.seed
    return tr[len(te):], ca, tr[: len(te)], config.seed + _VALIDATION_SEED_OFFSET


def _photo_patches(n: int, seed: int) -> Array:
    """8x8 grey patches of scikit-learn's two sample photographs, scaled to digits' 0-16."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    patches = []
    for image in load_sample_images().images:
        grey = image.astype(np.float32).mean(axis=2)  # [H, W]
        # Downsample 4x so a patch covers a 32x32 region, like a whole digit would.
        h, w = (grey.shape[0] // 4) * 4, (grey.shape[1] // 4) * 4
        small = grey[:h, :w].reshape(h // 4, 4, w // 4, 4).mean(axis=(1, 3))
        for _ in range(n // 2 + 1):
            r = rng.integers(0, small.shape[0] - 8)
            c = rng.integers(0, small.shape[1] - 8)
            patches.append(small[r : r + 8, c : c + 8].reshape(64))
    out = np.stack(patches[:n]) / 255.0 * 16.0
    return out.astype(np.float32)


def corrupt_digits(X: Array, intensity: float, seed: int) -> Array:
    """Gaussian pixel noise of std ``intensity`` (pixel units, of 16) and, with probability
    0.1 * intensity, a one-pixel translation in a random direction; clipped to 0-16."""
    rng = np.random.default_rng(seed)
    images = X.reshape(-1, 8, 8).copy()
    if intensity > 0:
        moves = rng.random(images.shape[0]) < 0.1 * intensity
        for i in np.flatnonzero(moves):
            dy, dx = [(0, 1), (0, -1), (1, 0), (-1, 0)][rng.integers(4)]
            images[i] = np.roll(images[i], (dy, dx), axis=(0, 1))
        images = images + rng.normal(0.0, intensity, size=images.shape)
    return np.clip(images, 0.0, 16.0).reshape(X.shape).astype(np.float32)


def _digits(config: DataConfig) -> Dataset:
    from sklearn.datasets import load_digits

    raw = load_digits()
    X, y = check_arrays(raw.data, raw.target, "classification", "digits")
    tr, ca, te, seed = evaluation_split(config, len(X))
    test = Split(X[te], y[te])
    rng = np.random.default_rng(seed + 1)
    n_ood = len(te)
    ood = {
        "photo_patches": _photo_patches(n_ood, seed),
        # The test digits with ink and paper swapped: same strokes, unseen statistics.
        "inverted_digits": (16.0 - X[te]).astype(np.float32),
        "uniform_noise": rng.uniform(0.0, 16.0, size=(n_ood, 64)).astype(np.float32),
    }
    shift = {
        float(s): Split(corrupt_digits(X[te], s, seed + 2), y[te])
        for s in (0.0, 1.0, 2.0, 3.0, 4.0, 6.0)
    }
    return Dataset(
        name="digits",
        task="classification",
        feature_shape=(64,),
        class_labels=tuple(str(i) for i in range(10)),
        train=Split(X[tr], y[tr]),
        calibration=Split(X[ca], y[ca]),
        test=test,
        ood=ood,
        shift=shift,
        preprocessing={"input": "8x8 grey image flattened row-major, pixel values 0-16"},
        ood_drawn_like={"uniform_noise": "uniform"},
    )


def _regression_shift(X: Array, intensity: float, seed: int) -> Array:
    rng = np.random.default_rng(seed)
    scale = X.std(axis=0, keepdims=True)
    return (X + rng.normal(0.0, 1.0, size=X.shape) * scale * intensity).astype(np.float32)


def _tabular(name: str, X: Array, y: np.ndarray, task: str, config: DataConfig,
             labels: tuple[str, ...], ood: dict[str, Array]) -> Dataset:
    tr, ca, te, seed = evaluation_split(config, len(X))
    if not ood:
        # Far outside the training range in every feature: an extrapolation set.
        spread = X[tr].std(axis=0, keepdims=True) + 1e-6
        rng = np.random.default_rng(seed + 1)
        signs = rng.choice([-1.0, 1.0], size=(len(te), *X.shape[1:]))
        ood = {"extrapolation": (X[te] + 4.0 * spread * signs).astype(np.float32)}
    shift = {
        float(s): Split(_regression_shift(X[te], s, seed + 2), y[te])
        for s in (0.0, 0.5, 1.0, 2.0)
    }
    return Dataset(
        name=name,
        task=task,
        feature_shape=tuple(X.shape[1:]),
        class_labels=labels,
        train=Split(X[tr], y[tr]),
        calibration=Split(X[ca], y[ca]),
        test=Split(X[te], y[te]),
        ood=ood,
        shift=shift,
    )


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


def _read_images(files: list[Path], config: DataConfig, where: str) -> Array:
    """[N, C, H, W] float32 pixel values 0-255; every file resized to ``data.image_size`` or
    required to share one size."""
    from PIL import Image, UnidentifiedImageError

    if config.channels not in (1, 3):
        raise DataError(f"data.channels must be 1 (grey) or 3 (RGB), got {config.channels}")
    if config.image_size and len(config.image_size) != 2:
        raise DataError(f"data.image_size must be [height, width], got {list(config.image_size)}")
    mode = "L" if config.channels == 1 else "RGB"
    out: Array | None = None
    for i, file in enumerate(files):
        try:
            with Image.open(file) as img:
                img = img.convert(mode)
                if config.image_size:
                    img = img.resize((config.image_size[1], config.image_size[0]), Image.BILINEAR)
                pixels = np.asarray(img, dtype=np.float32)
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"{file}: not an image that can be read: {exc}") from exc
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # [C, H, W]
        if out is None:
            out = np.empty((len(files), *pixels.shape), dtype=np.float32)
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


def _folder(config: DataConfig) -> Dataset:
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
        ood = {Path(config.ood_path).name + "_ood": X_ood}
    data = _tabular(root.name, X, y, task, config, names, ood)
    return replace(data, preprocessing={"input": f"image [{X.shape[1]}, {X.shape[2]}, {X.shape[3]}] "
                                                 "(channels, height, width), pixel values 0-255"})


def _user(config: DataConfig) -> Dataset:
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
    return _tabular(path.stem, X, y, task, config, labels, ood)


def _as_colour_images(data: Dataset, factor: int = 4, channels: int = 3) -> Dataset:
    """The digits as 32x32 colour images: every pixel a factor x factor block, in every channel.

    An offline stand-in for image data sets of the usual shape ([N, 3, 32, 32]), to exercise
    image bodies (ResNet) without downloads.
    """
    def up(X: Array) -> Array:
        images = X.reshape(-1, 8, 8)
        big = np.kron(images, np.ones((factor, factor), dtype=np.float32))  # [N, 8f, 8f]
        return np.repeat(big[:, None], channels, axis=1).astype(np.float32)  # [N, C, 8f, 8f]

    def split(s: Split) -> Split:
        return Split(up(s.X), s.y)

    return replace(
        data, name="digits32", feature_shape=(channels, 8 * factor, 8 * factor),
        train=split(data.train), calibration=split(data.calibration), test=split(data.test),
        ood={k: up(v) for k, v in data.ood.items()},
        shift={k: split(v) for k, v in data.shift.items()},
        preprocessing={"input": f"the 8x8 digit upscaled {factor}x, repeated in {channels} channels, "
                                f"[{channels}, {8 * factor}, {8 * factor}], pixel values 0-16"})


def load_dataset(config: DataConfig) -> Dataset:
    if config.source == "digits":
        return _digits(config)
    if config.source == "digits32":
        return _as_colour_images(_digits(config))
    if config.source == "diabetes":
        from sklearn.datasets import load_diabetes

        raw = load_diabetes()
        X, y = check_arrays(raw.data, raw.target, "regression", "diabetes")
        return _tabular("diabetes", X, y, "regression", config, (), {})
    if config.source in ("npz", "csv", "file"):
        return _user(config)
    if config.source == "folder":
        return _folder(config)
    raise DataError(f"data.source must be digits, digits32, diabetes, npz, csv or folder, got "
                    f"{config.source!r}")


def value_resolution(X: Array, max_rows: int = 20000, max_decimals: int = 6) -> Array:
    """Per feature, the step its values are recorded in: 10^-k for the fewest decimals k that
    write every value exactly (1 for integer pixels, 0.01 for values with two decimals), or 0
    when no k up to ``max_decimals`` does (a continuous feature). Computed on at most
    ``max_rows`` rows."""
    rows = np.asarray(X[:max_rows], dtype=np.float64)
    eps = float(np.finfo(np.float32).eps)
    magnitude = np.abs(rows).max(axis=0)
    # Only steps well above float32's precision at the feature's magnitude can be told apart.
    usable = np.floor(-np.log10(np.maximum(100.0 * eps * magnitude, 1e-30)))
    resolution = np.zeros(rows.shape[1], dtype=np.float64)
    undecided = np.ones(rows.shape[1], dtype=bool)
    for k in range(max_decimals + 1):
        undecided &= usable >= k
        if not undecided.any():
            break
        scaled = rows[:, undecided] * 10.0**k
        tolerance = 8.0 * eps * np.abs(scaled) + 1e-9
        exact = np.all(np.abs(scaled - np.round(scaled)) <= tolerance, axis=0)
        idx = np.flatnonzero(undecided)[exact]
        resolution[idx] = 10.0**-k
        undecided[idx] = False
        if not undecided.any():
            break
    return resolution.astype(np.float32)


def feature_stats(X: Array) -> tuple[Array, Array]:
    """Per-feature mean and scale of the training inputs, for the in-graph normalization.

    The scale is each feature's own std, but never below the step its values are recorded in
    (``value_resolution``): a near-constant feature (a digit's border pixel, inked in a few
    images) would otherwise turn a one-step change there into a many-sigma input, while a
    feature measured on a small scale (0.05 to 0.1, in steps of 1e-4) keeps its full
    resolution. A constant feature is scaled by max(|value|, 1). Each rule looks at the
    feature alone, so features in other units never change each other's scale.
    """
    X = X.reshape(X.shape[0], -1)
    mean = X.mean(axis=0).astype(np.float32)
    std = X.std(axis=0)
    std = np.where(std <= 1e-6 * np.maximum(np.abs(mean), 1.0), 0.0, std)  # float32 rounding only
    scale = np.maximum(std, value_resolution(X))
    constant = scale <= 0
    scale = np.where(constant, np.maximum(np.abs(mean), 1.0), scale)
    return mean, scale.astype(np.float32)


def target_stats(y: np.ndarray) -> tuple[Array, Array]:
    mean = y.mean(axis=0).astype(np.float32)
    std = y.std(axis=0).astype(np.float32)
    return mean, np.where(std < 1e-6, 1.0, std).astype(np.float32)
