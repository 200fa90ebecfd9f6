"""Data as users keep it: CSV and npz files (folders of image files: ``training.images``), and
class labels of any kind (integers, integral floats, strings) mapped to contiguous indices.

Every problem is a ``DataError`` naming the file, the line and column (CSV: ``training.tables``)
or the row and feature index (npz), what was found and what was expected.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from training import tables
from training.config import DataConfig
from training.data import Array, DataError, Dataset, check_arrays, finite_float32, tabular_dataset

log = logging.getLogger(__name__)


def _label_name(value: object) -> str:
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def encode_labels(y: np.ndarray, task: str, where: str, *, lines: Sequence[int] | None = None
                  ) -> tuple[str, np.ndarray, tuple[str, ...]]:
    """The task, the targets the networks train on, and the class labels.

    Class labels may be integers, integral floats (as a CSV gives them) or strings; they are
    mapped in sorted order to contiguous indices 0..C-1, and their names kept for the model's
    metadata. ``task`` (classification | regression | "") is inferred only when the values
    leave no doubt: strings or booleans are classes, non-integral numbers are a regression
    target, two distinct values are a binary class; anything else asks for ``data.task``.
    A row is named by its index (counted from 0), or by its file line when ``lines`` are given.
    """
    def at(row: int) -> str:
        return f"line {lines[row]}" if lines is not None else f"row {row}"

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
            first = int(np.argwhere(~np.isfinite(y))[0][0])
            drop = ('; rows whose target is NaN (missing) are left out with data.missing_targets = '
                    '"drop"' if np.isnan(y).any() else "")
            counted = "" if lines is not None else ", counted from 0"
            raise DataError(f"{where}: y has {int((~np.isfinite(y)).sum())} NaN/Inf values (first "
                            f"in {at(first)}{counted}){drop}")
        integral = bool(np.all(y == np.round(y)))
        distinct = np.unique(y)
        if task == "classification" and not integral:
            row = int(np.flatnonzero(y != np.round(y))[0])
            raise DataError(f"{where}: class labels must be integers or strings, got "
                            f"{y[row].item()!r} in {at(row)}")
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


def _decoded(y: np.ndarray, path: Path) -> np.ndarray:
    """Byte-string labels (dtype kind "S", as np.array([b"cat"]) makes) as text: UTF-8."""
    flat = y.reshape(-1)
    text = []
    for k, value in enumerate(flat):
        try:
            text.append(value.decode("utf-8"))
        except UnicodeDecodeError:
            at = [int(i) for i in np.unravel_index(k, y.shape)]
            raise DataError(f"{path}: y[{', '.join(map(str, at))}] = {bytes(value)!r} is not UTF-8 "
                            f"text (row {at[0]}, counted from 0); store labels as str (dtype U) "
                            "or UTF-8 bytes") from None
    return np.array(text, dtype=str).reshape(y.shape)


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as f:
            if "X" not in f:
                raise DataError(f"{path}: expected an array named 'X', found {sorted(f.files)}")
            X, y = np.asarray(f["X"]), (np.asarray(f["y"]) if "y" in f else None)
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as exc:  # not an npz, or object arrays
        raise DataError(f"{path}: cannot be read as .npz (numeric or string arrays X, y): "
                        f"{exc}") from exc
    if y is not None and y.dtype.kind == "S":
        y = _decoded(y, path)
    return X, y


def _npz_missing_targets(X: np.ndarray, y: np.ndarray, how: str, path: Path
                         ) -> tuple[np.ndarray, np.ndarray, dict[str, object]]:
    """Text labels that mean "no value" (``tables.is_missing``) are refused with their rows, or
    with ``how = "drop"`` their rows are left out, as are rows whose numeric target is NaN."""
    if y.dtype.kind == "U":
        flags = [tables.is_missing(v) for v in y.reshape(-1)]
        missing = np.array(flags, dtype=bool).reshape(y.shape)
    elif y.dtype.kind == "f":
        missing = np.isnan(y)
    else:
        return X, y, {}
    rows = np.flatnonzero(missing.reshape(len(y), -1).any(axis=1)) if y.ndim else np.array([], int)
    if rows.size == 0:
        return X, y, {}
    if y.dtype.kind == "U" and how != "drop":
        found = sorted({repr(str(v)) for v in y[missing].reshape(-1)})
        shown = ", ".join(map(str, rows[:10])) + (f" and {rows.size - 10} more"
                                                  if rows.size > 10 else "")
        raise DataError(f"{path}: y has {rows.size} missing labels ({', '.join(found[:5])}) in "
                        f"rows {shown} (counted from 0); fill them in, drop those rows, or set "
                        "data.missing_targets = \"drop\" to leave them out")
    if how != "drop":
        return X, y, {}  # NaN: refused by encode_labels, with its row
    keep = np.setdiff1d(np.arange(len(y)), rows)
    log.info("%s: dropped %d rows whose target is missing", path, rows.size)
    return X[keep], y[keep], {"rows_dropped_for_missing_target": int(rows.size)}


def _ood_inputs(path: Path, target: str, shape: tuple[int, ...],
                feature_names: Sequence[str] | None) -> Array:
    """The OOD set ``data.ood_path``: float32 like the training features. A CSV file's
    columns are matched to a training CSV's by name."""
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    lines = columns = None
    if path.suffix == ".csv":
        table = tables.read_features(path, target, feature_names)
        X, lines, columns = table.X, table.lines, table.feature_names
    elif path.suffix == ".npz":
        X, _ = _read_npz(path)
    else:
        raise DataError(f"{path}: expected a .npz (array X) or .csv file")
    if X.dtype.kind not in "biuf":
        raise DataError(f"{path}: X must be numeric, got dtype {X.dtype}")
    if X.shape[1:] != shape:
        raise DataError(f"{path}: OOD features have shape {list(X.shape[1:])}, expected "
                        f"{list(shape)} like the training data")
    return finite_float32(X, str(path), lines=lines, columns=columns)


def load_user_file(config: DataConfig) -> Dataset:
    """A CSV file (``training.tables``) or an npz file of arrays X and y."""
    path = Path(config.path)
    if config.task not in ("", "classification", "regression"):
        raise DataError(f"data.task must be classification or regression, got {config.task!r}")
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    lines = columns = None
    if path.suffix == ".csv":
        table = tables.read_table(path, config.target, config.task, config.missing_targets)
        X, y, lines, columns = table.X, table.y, table.lines, table.feature_names
        preprocessing = table.preprocessing
    elif path.suffix == ".npz":
        X, y = _read_npz(path)
        if y is None:
            raise DataError(f"{path}: no target found (array 'y')")
        if X.ndim >= 1 and y.ndim >= 1 and X.shape[0] != y.shape[0]:
            raise DataError(f"{path}: X has {X.shape[0]} rows but y has {y.shape[0]}")
        X, y, preprocessing = _npz_missing_targets(X, y, config.missing_targets, path)
    else:
        raise DataError(f"{path}: expected a .npz (arrays X, y) or .csv file")
    task, y, labels = encode_labels(y, config.task, str(path), lines=lines)
    X, y = check_arrays(X, y, task, str(path), lines=lines, columns=columns)
    ood: dict[str, Array] = {}
    if config.ood_path:
        ood = {path.stem + "_ood": _ood_inputs(Path(config.ood_path), config.target, X.shape[1:],
                                               columns)}
    data = tabular_dataset(path.stem, X, y, task, config, labels, ood)
    # Only what a file told: a model of the offline defaults keeps its metadata as it was.
    if not preprocessing:
        return data
    return replace(data, preprocessing={**data.preprocessing, **preprocessing})
