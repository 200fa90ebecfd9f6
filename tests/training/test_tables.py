"""CSV and npz files read right, or refused with the line an editor shows: missing values,
pandas' index column, feature names, separators, encodings, byte-string labels and targets
that are numbers written for people."""

import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd  # the writer users have (the dev extra installs it)
import pytest

from training.config import ConfigError, DataConfig, load_config
from training.data import DataError, Dataset, check_arrays
from training.datasets import load_dataset


def _rows(n: int = 60, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three features and a regression target that depends on them."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)).round(4)
    return X, (X @ [1.0, -2.0, 0.5] + 10.0).round(3)


def _all(data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Every row of the three splits, sorted by the first feature (a row order of its own)."""
    X = np.concatenate([data.train.X, data.calibration.X, data.test.X])
    y = np.concatenate([data.train.y, data.calibration.y, data.test.y])
    order = np.lexsort(X.T[::-1])
    return X[order], y[order]


def _load(path: Path, **kwargs: object) -> Dataset:
    return load_dataset(DataConfig(source=path.suffix[1:], path=str(path), **kwargs))  # type: ignore[arg-type]


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode())  # exact bytes: no newline translation
    return path


# -- 1. Missing targets and features ---------------------------------------------------------

def test_missing_regression_targets_are_refused_with_their_lines_or_dropped(tmp_path: Path,
                                                                           caplog) -> None:
    X, y = _rows()
    frame = pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "target": y})
    frame.loc[[4, 9], "target"] = np.nan  # pandas writes an empty cell
    path = tmp_path / "d.csv"
    frame.to_csv(path, index=False)
    text = path.read_text().splitlines()
    text[21] = text[21].rsplit(",", 1)[0] + ",NA"  # data row 20 (line 22): R's marker
    _write(path, "\n".join(text) + "\n")
    # Lines as an editor shows them: the header is line 1, data row k is line k + 2.
    with pytest.raises(DataError, match=r"column 'target' \(the target\) has 3 missing values "
                                        r"\('NA', an empty cell\) at lines 6, 11, 22; .*"
                                        r'data.missing_targets = "drop"'):
        _load(path)
    with caplog.at_level(logging.INFO, logger="training.tables"):
        data = _load(path, missing_targets="drop")
    assert "dropped 3 rows whose target 'target' is missing" in caplog.text
    assert data.task == "regression" and data.preprocessing["rows_dropped_for_missing_target"] == 3
    keep = np.setdiff1d(np.arange(len(y)), [4, 9, 20])
    got_X, got_y = _all(data)
    want_X = X[keep].astype(np.float32)
    order = np.lexsort(want_X.T[::-1])
    np.testing.assert_array_equal(got_X, want_X[order])
    np.testing.assert_array_equal(got_y[:, 0], y[keep].astype(np.float32)[order])


@pytest.mark.parametrize("marker", ["", "NA", "N/A", "n/a", "NaN", "nan", "null", "NULL", "None",
                                    "?", "-", "#N/A", "<NA>"])
def test_missing_markers_are_never_class_labels(tmp_path: Path, marker: str) -> None:
    X, _ = _rows()
    labels = ["cat" if v > 0 else "dog" for v in X[:, 0]]
    labels[7] = marker
    path = _write(tmp_path / "d.csv", "a,b,c,target\n" + "".join(
        f"{a},{b},{c},{t}\n" for (a, b, c), t in zip(X, labels)))
    shown = "an empty cell" if marker == "" else re.escape(repr(marker))
    with pytest.raises(DataError, match=rf"has 1 missing values \({shown}\) at lines 9;"):
        _load(path, task="classification")
    data = _load(path, task="classification", missing_targets="drop")
    assert data.class_labels == ("cat", "dog")
    assert len(data.train) + len(data.calibration) + len(data.test) == len(X) - 1


def test_names_that_are_not_markers_stay_class_labels(tmp_path: Path) -> None:
    """"Na" (sodium) and "none" (a severity) are labels; only the markers as written mean no value."""
    X, _ = _rows()
    labels = np.array(["Na", "K", "none"])[np.arange(len(X)) % 3]
    path = _write(tmp_path / "d.csv", "a,b,c,ion\n" + "".join(
        f"{a},{b},{c},{t}\n" for (a, b, c), t in zip(X, labels)))
    assert _load(path, target="ion").class_labels == ("K", "Na", "none")


@pytest.mark.parametrize("cell, found", [("", r"missing value \(an empty cell\)"),
                                         ("NA", r"missing value \('NA'\)"),
                                         ("?", r"missing value \('\?'\)"),
                                         ("nan", r"missing value \('nan'\)"),
                                         ("inf", r"expected a finite number, got 'inf'"),
                                         ("-Infinity", r"expected a finite number, got '-Infinity'")])
def test_a_missing_or_infinite_feature_is_refused_with_line_and_column(tmp_path: Path, cell: str,
                                                                      found: str) -> None:
    X, y = _rows()
    cells = [[f"{v}" for v in row] for row in X]
    cells[30][1] = cell
    path = _write(tmp_path / "d.csv", "a,b,c,target\n" + "".join(
        ",".join(r) + f",{t}\n" for r, t in zip(cells, y)))
    with pytest.raises(DataError, match=rf"d\.csv: line 32, column 'b': {found}"):
        _load(path)


def test_missing_targets_key_is_validated() -> None:
    assert load_config(None, ['data.missing_targets="drop"']).data.missing_targets == "drop"
    with pytest.raises(ConfigError, match=r"data.missing_targets must be refuse or drop, got 'skip'"):
        load_config(None, ['data.missing_targets="skip"'])


# -- 2. CSVs as pandas writes them -----------------------------------------------------------

def _frame(n: int = 80) -> "pd.DataFrame":
    X, y = _rows(n)
    return pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "target": y})


def test_the_index_pandas_writes_is_dropped_and_recorded(tmp_path: Path, caplog) -> None:
    frame = _frame()
    frame.to_csv(tmp_path / "clean.csv", index=False)
    frame.to_csv(tmp_path / "indexed.csv")  # header ",a,b,c,target", rows "0,...", "1,..."
    # Read back and saved again: a second nameless column, "Unnamed: 0".
    pd.read_csv(tmp_path / "indexed.csv").to_csv(tmp_path / "resaved.csv")
    assert (tmp_path / "resaved.csv").read_text().startswith(",Unnamed: 0,a,b,c,target\n")
    clean = _load(tmp_path / "clean.csv")
    with caplog.at_level(logging.INFO, logger="training.tables"):
        indexed = _load(tmp_path / "indexed.csv")
    assert "dropped column 1, which has no name and holds the row numbers 0..79" in caplog.text
    resaved = _load(tmp_path / "resaved.csv")
    for data in (indexed, resaved):
        assert data.digest() == clean.digest()  # the same arrays, bit for bit
        assert data.preprocessing["feature_names"] == ["a", "b", "c"]
    assert indexed.preprocessing["dropped_columns"] == [
        "column 1 (no name): the row numbers 0..79 (an index, as pandas' to_csv writes it)"]
    assert len(resaved.preprocessing["dropped_columns"]) == 2
    assert "dropped_columns" not in clean.preprocessing


def test_a_nameless_column_that_is_not_the_row_numbers_is_refused(tmp_path: Path) -> None:
    frame = _frame()
    frame.sample(frac=1.0, random_state=0).to_csv(tmp_path / "shuffled.csv")  # index 0..79 shuffled
    with pytest.raises(DataError, match=r"shuffled\.csv: column 1 \(header line 1\) has no name and "
                                        r"is not the row numbers 0..79: name it or drop it"):
        _load(tmp_path / "shuffled.csv")
    frame.to_csv(tmp_path / "one.csv", index=False)
    text = (tmp_path / "one.csv").read_text().splitlines()
    text = [text[0] + ",Unnamed: 5"] + [r + ",1.5" for r in text[1:]]
    _write(tmp_path / "one.csv", "\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"column 5 \(header line 1\) has no name \('Unnamed: 5', as "
                                        r"pandas calls a nameless column\)"):
        _load(tmp_path / "one.csv")


def test_an_empty_nameless_column_is_dropped(tmp_path: Path) -> None:
    """Excel writes a separator after the last column when a column beyond it was ever used."""
    frame = _frame()
    frame.to_csv(tmp_path / "clean.csv", index=False)
    text = (tmp_path / "clean.csv").read_text().splitlines()
    _write(tmp_path / "excel.csv", "\n".join(r + "," for r in text) + "\n")
    data = _load(tmp_path / "excel.csv")
    assert data.digest() == _load(tmp_path / "clean.csv").digest()
    assert data.preprocessing["dropped_columns"] == ["column 5 (no name): no values"]


def test_duplicate_column_names_are_refused(tmp_path: Path) -> None:
    X, y = _rows()
    path = _write(tmp_path / "d.csv", "a,b,a,target\n" + "".join(
        f"{a},{b},{c},{t}\n" for (a, b, c), t in zip(X, y)))
    with pytest.raises(DataError, match=r"columns 1 and 3 are both named 'a'"):
        _load(path)


# -- 3. Feature names; the OOD file matched by name ------------------------------------------

def test_feature_names_are_kept_and_the_ood_file_is_matched_by_name(tmp_path: Path) -> None:
    frame = _frame()
    frame[["c", "target", "a", "b"]].to_csv(tmp_path / "train.csv", index=False)
    ood = frame.iloc[:25] * 3.0
    ood[["b", "a", "c"]].to_csv(tmp_path / "ood.csv", index=False)  # another order, no target
    data = _load(tmp_path / "train.csv", ood_path=str(tmp_path / "ood.csv"))
    assert data.preprocessing["feature_names"] == ["c", "a", "b"]
    np.testing.assert_array_equal(data.ood["train_ood"],
                                  ood[["c", "a", "b"]].to_numpy().astype(np.float32))
    ood[["target", "c", "b", "a"]].to_csv(tmp_path / "ood2.csv", index=False)  # target ignored
    again = _load(tmp_path / "train.csv", ood_path=str(tmp_path / "ood2.csv"))
    np.testing.assert_array_equal(again.ood["train_ood"], data.ood["train_ood"])
    ood[["a", "b"]].assign(d=1.0).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(DataError, match=r"bad\.csv: lacks the training data's columns 'c' and has "
                                        r"columns the training data does not: 'd'"):
        _load(tmp_path / "train.csv", ood_path=str(tmp_path / "bad.csv"))


def test_an_npz_source_has_no_feature_names(tmp_path: Path) -> None:
    X, y = _rows()
    np.savez(tmp_path / "d.npz", X=X, y=y)
    assert _load(tmp_path / "d.npz").preprocessing == {}


# -- 4. Lines as an editor shows them; NaN/Inf named -----------------------------------------

def test_lines_count_the_header_blank_lines_and_multiline_fields(tmp_path: Path) -> None:
    X, _ = _rows()
    rows = [f"{a},{b},{c},{'cat' if a > 0 else 'dog'}\n" for a, b, c in X]
    rows[0] = f'{X[0, 0]},{X[0, 1]},{X[0, 2]},"cat, and\nmore"\n'  # lines 2-3
    rows[3] = f"{X[3, 0]},{X[3, 1]},{X[3, 2]},NA\n"
    path = _write(tmp_path / "d.csv", "a,b,c,target\n" + rows[0] + "\n" + "".join(rows[1:]))
    assert path.read_text().splitlines()[6].endswith(",NA")  # line 7 in an editor
    with pytest.raises(DataError, match=r"has 1 missing values \('NA'\) at lines 7;"):
        _load(path, task="classification")
    assert _load(path, task="classification", missing_targets="drop").class_labels == (
        "cat", "cat, and\nmore", "dog")


def test_npz_non_finite_features_are_named_by_row_and_feature_index(tmp_path: Path) -> None:
    X, y = _rows()
    X[17, 2] = np.inf
    np.savez(tmp_path / "d.npz", X=X, y=y)
    with pytest.raises(DataError, match=r"X has 1 NaN/Inf values or values beyond float32 \(first in "
                                        r"row 17\), X\[17, 2\] = inf; rows and features are counted "
                                        r"from 0"):
        _load(tmp_path / "d.npz")
    images = np.zeros((30, 1, 4, 4))
    images[5, 0, 2, 3] = np.nan
    with pytest.raises(DataError, match=r"X\[5, 0, 2, 3\] = nan"):
        check_arrays(images, np.arange(30) % 2, "classification", "x.npz")


def test_a_csv_value_beyond_float32_is_named_by_line_and_column(tmp_path: Path) -> None:
    X, y = _rows()
    cells = [[f"{v}" for v in row] for row in X]
    cells[10][0] = "1e39"
    path = _write(tmp_path / "d.csv", "a,b,c,target\n" + "".join(
        ",".join(r) + f",{t}\n" for r, t in zip(cells, y)))
    with pytest.raises(DataError, match=r"line 12, column 'a': 1e\+39, beyond float32"):
        _load(path)


# -- 5. Separators and encodings -------------------------------------------------------------

def test_semicolon_and_tab_separated_files_read_like_commas(tmp_path: Path) -> None:
    frame = _frame()
    frame.to_csv(tmp_path / "comma.csv", index=False)
    frame.to_csv(tmp_path / "semicolon.csv", index=False, sep=";")
    frame.to_csv(tmp_path / "tab.csv", index=False, sep="\t")
    comma = _load(tmp_path / "comma.csv")
    for name in ("semicolon", "tab"):
        data = _load(tmp_path / f"{name}.csv")
        assert data.digest() == comma.digest(), name
        assert data.preprocessing["feature_names"] == ["a", "b", "c"]


def test_decimal_commas_are_refused_with_the_fix(tmp_path: Path) -> None:
    frame = _frame()
    frame.to_csv(tmp_path / "excel.csv", index=False, sep=";", decimal=",")  # European Excel
    # The target is read first: a column of numbers with decimal commas is not made classes.
    with pytest.raises(DataError, match=r"column 'target' \(the target\) looks numeric .*decimal "
                                        r"commas are not read \(this file separates columns by "
                                        r"semicolons, as Excel writes CSV"):
        _load(tmp_path / "excel.csv")
    frame.assign(target=(frame["a"] > 0).astype(int)).to_csv(tmp_path / "excel.csv", index=False,
                                                             sep=";", decimal=",")
    first = (tmp_path / "excel.csv").read_text().splitlines()[1].split(";")[0]
    assert "," in first
    with pytest.raises(DataError, match=rf"line 2, column 'a': expected a number, got '{first}'; "
                                        r"decimal commas are not read \(this file separates columns "
                                        r"by semicolons.*save the numbers with decimal points"):
        _load(tmp_path / "excel.csv")


def test_quoted_fields_with_commas_and_newlines(tmp_path: Path) -> None:
    frame = _frame()
    frame["target"] = np.where(frame["a"] > 0, "big, round", "small\nand square")
    frame.to_csv(tmp_path / "d.csv", index=False)
    data = _load(tmp_path / "d.csv")
    assert data.class_labels == ("big, round", "small\nand square")
    _, y = _all(data)
    want = np.where(np.sort(frame["a"].to_numpy().astype(np.float32)) > 0, 0, 1)
    np.testing.assert_array_equal(y, want)


def test_a_latin1_file_is_refused_with_its_line(tmp_path: Path) -> None:
    X, _ = _rows()
    labels = ["café" if a > 0 else "thé" for a in X[:, 0]]
    path = tmp_path / "d.csv"
    path.write_bytes(("a,b,c,target\n" + "".join(f"{a},{b},{c},{t}\n" for (a, b, c), t in
                                                  zip(X, labels))).encode("latin-1"))
    first = 2 + labels.index("café") if labels.index("café") < labels.index("thé") else 2 + labels.index("thé")
    with pytest.raises(DataError, match=rf"line {first} is not UTF-8 text \(byte 0xe9 .*save the file "
                                        r"as UTF-8"):
        _load(path)


# -- 6. npz labels as bytes, and missing text labels -----------------------------------------

def test_npz_byte_labels_are_decoded(tmp_path: Path) -> None:
    X, _ = _rows()
    words = np.array(["cat", "dög"])[(X[:, 0] > 0).astype(int)]
    np.savez(tmp_path / "s.npz", X=X, y=np.char.encode(words, "utf-8"))
    np.savez(tmp_path / "u.npz", X=X, y=words)
    data = _load(tmp_path / "s.npz")
    assert data.class_labels == ("cat", "dög")
    assert data.digest() == _load(tmp_path / "u.npz").digest()
    raw = np.char.encode(words, "utf-8")
    raw[12] = b"d\xf6g"  # Latin-1
    np.savez(tmp_path / "bad.npz", X=X, y=raw)
    with pytest.raises(DataError, match=r"y\[12\] = b'd\\xf6g' is not UTF-8 text \(row 12"):
        _load(tmp_path / "bad.npz")


def test_npz_missing_text_labels_are_refused_or_dropped(tmp_path: Path) -> None:
    X, _ = _rows()
    words = np.array(["cat", "dog"])[(X[:, 0] > 0).astype(int)]
    words[[3, 40]] = ["", "nan"]
    np.savez(tmp_path / "d.npz", X=X, y=words)
    with pytest.raises(DataError, match=r"y has 2 missing labels \('', 'nan'\) in rows 3, 40 \(counted "
                                        r"from 0\)"):
        _load(tmp_path / "d.npz")
    data = _load(tmp_path / "d.npz", missing_targets="drop")
    assert data.class_labels == ("cat", "dog")
    assert data.preprocessing == {"rows_dropped_for_missing_target": 2}
    np.savez(tmp_path / "f.npz", X=X, y=np.where(np.arange(len(X)) == 5, np.nan, X[:, 0]))
    with pytest.raises(DataError, match=r"y has 1 NaN/Inf values \(first in row 5, counted from 0\)"):
        _load(tmp_path / "f.npz")
    assert len(_load(tmp_path / "f.npz", missing_targets="drop").train.y) > 0


# -- 7. Numbers written for people -----------------------------------------------------------

def _prices(tmp_path: Path, prices: list[str]) -> Path:
    X, _ = _rows(len(prices))
    return _write(tmp_path / "p.csv", "a,b,c,price\n" + "".join(
        f'{a},{b},{c},"{p}"\n' for (a, b, c), p in zip(X, prices)))


def test_a_regression_target_must_be_plain_numbers(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    prices = [f"{v:.2f}" for v in rng.uniform(100, 5000, 60)]
    prices[6] = "$1,234.50"
    path = _prices(tmp_path, prices)
    with pytest.raises(DataError, match=r"line 8, column 'price': a regression target must be "
                                        r"numeric, got '\$1,234.50'; write plain numbers"):
        _load(path, target="price", task="regression")
    # Task not given: a column of numbers with a few that are not is refused, not made classes.
    with pytest.raises(DataError, match=r"column 'price' \(the target\) looks numeric \(60 of its 60 "
                                        r"distinct values are numbers or written like numbers\) "
                                        r"but 1 values are not plain numbers \(line 8: "
                                        r"'\$1,234.50'\).*data.task = \"classification\""):
        _load(path, target="price")
    prices[6] = "1.2e3"  # a number as Python and pandas read it
    data = _load(_prices(tmp_path, prices), target="price")
    assert data.task == "regression"
    assert 1200.0 in np.concatenate([data.train.y, data.calibration.y, data.test.y])


def test_all_currency_values_are_not_taken_for_classes(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    path = _prices(tmp_path, [f"${v:,.2f}" for v in rng.uniform(100, 5000, 60)])
    with pytest.raises(DataError, match=r"looks numeric \(60 of its 60 distinct values are numbers or "
                                        r"written like numbers\) but 60 values"):
        _load(path, target="price")


# -- Clean files: the same arrays as before --------------------------------------------------

def test_a_clean_csv_gives_the_arrays_an_npz_of_the_same_numbers_gives(tmp_path: Path) -> None:
    X, y = _rows(200)
    X = X * np.pi  # full-precision floats, written by repr and read back exactly
    path = _write(tmp_path / "d.csv", "a,b,c,target\n" + "".join(
        f"{a!r},{b!r},{c!r},{t!r}\n" for (a, b, c), t in zip(X.tolist(), y.tolist())))
    np.savez(tmp_path / "d.npz", X=X, y=y)
    assert _load(path).digest() == _load(tmp_path / "d.npz").digest()


def test_targets_beyond_float32_and_non_integral_labels_are_named(tmp_path: Path) -> None:
    X, y = _rows()
    y[8] = 1e39
    np.savez(tmp_path / "d.npz", X=X, y=y)
    with pytest.raises(DataError, match=r"y has 1 NaN/Inf values or values beyond float32 \(first in "
                                        r"row 8, counted from 0\)"):
        _load(tmp_path / "d.npz", task="regression")
    rows = [f"{a},{b},{c},{t}\n" for (a, b, c), t in zip(X, y)]
    _write(tmp_path / "d.csv", "a,b,c,target\n" + "".join(rows))
    with pytest.raises(DataError, match=r"line 10, column 'target': expected a finite number within "
                                        r"float32's range \(±3.4e38\), got '1e\+39'"):
        _load(tmp_path / "d.csv")
    labels = [f"{a},{b},{c},{1.0 if a > 0 else 0.0}\n" for a, b, c in X]
    labels[4] = f"{X[4, 0]},{X[4, 1]},{X[4, 2]},0.5\n"
    _write(tmp_path / "c.csv", "a,b,c,target\n" + "".join(labels))
    with pytest.raises(DataError, match=r"class labels must be integers or strings, got 0.5 in line 6"):
        _load(tmp_path / "c.csv", task="classification")
