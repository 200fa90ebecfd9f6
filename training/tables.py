"""CSV files as users keep them: a header row, one row a sample, numbers in the feature
columns and a target column of numbers or class labels.

A file is read the way a spreadsheet or pandas reads it, or refused; never read wrong in
silence. Every problem is a ``DataError`` that names the file, the line as an editor numbers
it (1-based, counting the header, blank lines and the lines of multi-line quoted fields), the
column, what was found and what was expected.

- Encoding: UTF-8 (a byte order mark is dropped); anything else is refused with its line.
- Separators: commas, semicolons or tabs, whichever splits the header into the most columns
  that the first rows share (``;`` is what Excel writes where the decimal separator is a
  comma). Decimal commas ("1,5") are refused, never read: "1,234" could be either number.
- Columns: every column has a distinct name. A column without a name (an empty header cell, or
  pandas' "Unnamed: 0") is dropped when it holds the row numbers 0..N-1 or 1..N (the index
  ``DataFrame.to_csv`` writes) or nothing at all, and refused otherwise.
- Missing values (``MISSING``, pandas' markers and a few more): never a class label nor a
  number. A missing feature is refused (no imputation); a missing target is refused, or its row
  dropped with ``data.missing_targets = "drop"``.
- Numbers are what Python's ``float`` reads, finite; "nan"/"inf" text is refused.
"""

from __future__ import annotations

import csv
import io
import itertools
import logging
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.data import DataError

log = logging.getLogger(__name__)

# Cells that mean "no value", compared after stripping spaces: pandas' default NA strings,
# "?" and "-". Case-insensitive except the short words that are also names ("Na" is sodium,
# "none" a severity level), which count only as written here.
MISSING_ANY_CASE = frozenset({
    "", "nan", "-nan", "+nan", "n/a", "#n/a", "#n/a n/a", "#na", "null", "<na>", "-1.#ind",
    "-1.#qnan", "1.#ind", "1.#qnan", "?", "-"})
MISSING_EXACT = frozenset({"NA", "None", "NONE"})

DELIMITERS = (",", ";", "\t")
_DELIMITER_NAMES = {",": "commas", ";": "semicolons", "\t": "tabs"}
# Rows after the header that the separator must split like the header.
_SNIFF_ROWS = 20
# How many lines a message lists.
_SHOWN = 10

_UNNAMED = re.compile(r"Unnamed: \d+(_level_\d+)?")  # pandas' name for a nameless column
_DECIMAL_COMMA = re.compile(r"[+-]?(\d{1,3}(\.\d{3})+|\d*),\d+")


def is_missing(cell: str) -> bool:
    text = cell.strip()
    return text in MISSING_EXACT or text.lower() in MISSING_ANY_CASE


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _looks_numeric(text: str) -> bool:
    """A number written with currency signs, thousands separators, a percent sign or a
    decimal comma: "$1,234.50", "12%", "1.234,5", "(3.5)"."""
    core = re.sub(r"[\s$€£¥%']", "", text).strip("()")
    if not any(c.isdigit() for c in core):
        return False
    if "," in core and "." in core:  # 1,234.5 or 1.234,5: both separators go
        core = core.replace(".", "")
    core = core.replace(",", "")
    return _is_number(core)


def _shown(text: str) -> str:
    return "an empty cell" if not text.strip() else repr(text)


def _list_lines(lines: Sequence[int]) -> str:
    shown = ", ".join(str(int(n)) for n in lines[:_SHOWN])
    return shown + (f" and {len(lines) - _SHOWN} more" if len(lines) > _SHOWN else "")


@dataclass(frozen=True)
class Table:
    """What a CSV file holds, checked."""

    X: np.ndarray  # float64 [N, F]
    y: np.ndarray | None  # [N]: float64 when every value is a number, else str; None: no target
    feature_names: tuple[str, ...]
    lines: np.ndarray  # int64 [N]: the line each row starts on, as an editor numbers it
    # What was left out and why, for the model's metadata.
    notes: dict[str, object] = field(default_factory=dict)

    @property
    def preprocessing(self) -> dict[str, object]:
        return {"feature_names": list(self.feature_names), **self.notes}


@dataclass(frozen=True)
class _Sheet:
    path: Path
    delimiter: str
    header: list[str]
    header_line: int
    rows: list[list[str]]
    lines: list[int]


def _decode(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot be read: {exc}") from exc
    if raw.startswith(b"\xef\xbb\xbf"):  # a byte order mark is not part of a name
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start].decode("utf-8")
        line = 1 + len(re.findall(r"\r\n|\r|\n", before))
        column = len(before) - max(before.rfind("\n"), before.rfind("\r"))
        raise DataError(
            f"{path}: line {line} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at character "
            f"{column}; Latin-1 or Windows-1252, as older Excel versions save CSV?); save the file "
            "as UTF-8 (Excel: \"CSV UTF-8\"; or iconv -f latin1 -t utf-8)") from None


def _records(text: str, delimiter: str) -> csv.reader:
    return csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)


def _delimiter(text: str) -> str:
    """Of commas, semicolons and tabs, the one that splits the header into the most columns
    and the first rows into as many; ties go to the comma, then the semicolon."""
    best, best_count, fallback, fallback_count = ",", 1, ",", 1
    for delimiter in DELIMITERS:
        try:
            filled = (r for r in _records(text, delimiter) if any(c.strip() for c in r))
            rows = list(itertools.islice(filled, _SNIFF_ROWS + 1))
        except csv.Error:
            continue
        if not rows:
            return ","
        count = len(rows[0])
        if count > fallback_count:
            fallback, fallback_count = delimiter, count
        if count > best_count and all(len(r) == count for r in rows[1:]):
            best, best_count = delimiter, count
    return best if best_count > 1 else fallback


def _read_sheet(path: Path) -> _Sheet:
    text = _decode(path)
    delimiter = _delimiter(text)
    reader = _records(text, delimiter)
    rows: list[list[str]] = []
    lines: list[int] = []
    previous = 0
    try:
        for row in reader:
            if any(cell.strip() for cell in row):  # blank lines, or only separators (Excel)
                rows.append(row)
                lines.append(previous + 1)
            previous = reader.line_num
    except csv.Error as exc:
        raise DataError(f"{path}: line {reader.line_num}: cannot be read as CSV: {exc}") from exc
    if len(rows) < 2:
        raise DataError(f"{path}: expected a header row and data rows, found {len(rows)} rows")
    header = [h.strip() for h in rows[0]]
    if len(header) == 1 and "|" in header[0]:
        raise DataError(f"{path}: line {lines[0]}: the header {header[0]!r} is one column; "
                        "separate columns by commas, semicolons or tabs")
    for line, row in zip(lines[1:], rows[1:], strict=True):
        if len(row) != len(header):
            raise DataError(f"{path}: line {line} has {len(row)} fields, the header (line "
                            f"{lines[0]}) has {len(header)} ({_DELIMITER_NAMES[delimiter]} "
                            "separate the columns)")
    if delimiter != ",":
        log.info("%s: columns separated by %s", path, _DELIMITER_NAMES[delimiter])
    return _Sheet(path, delimiter, header, lines[0], rows[1:], lines[1:])


def _named_columns(sheet: _Sheet, target: str) -> tuple[list[int], dict[str, object]]:
    """The columns kept (all but the dropped nameless ones) and the record of those dropped.
    Names must be distinct."""
    kept: list[int] = []
    dropped: list[str] = []
    n = len(sheet.rows)
    for i, name in enumerate(sheet.header):
        if name == target or (name and not _UNNAMED.fullmatch(name)):
            kept.append(i)
            continue
        cells = [row[i].strip() for row in sheet.rows]
        what = "no name" if not name else f"no name ({name!r}, as pandas calls a nameless column)"
        if cells == [str(k) for k in range(n)] or cells == [str(k) for k in range(1, n + 1)]:
            why = f"the row numbers {cells[0]}..{cells[-1]} (an index, as pandas' to_csv writes it)"
        elif not any(cells):
            why = "no values"
        else:
            raise DataError(
                f"{sheet.path}: column {i + 1} (header line {sheet.header_line}) "
                f"has {what} and is not the row numbers 0..{n - 1}: name it or drop it (pandas "
                "writes its index as such a column; save with df.to_csv(path, index=False))")
        log.info("%s: dropped column %d, which has %s and holds %s", sheet.path, i + 1, what, why)
        dropped.append(f"column {i + 1} ({what}): {why}")
    seen: dict[str, int] = {}
    for i in kept:
        name = sheet.header[i]
        if name in seen:
            raise DataError(f"{sheet.path}: columns {seen[name] + 1} and {i + 1} are both named "
                            f"{name!r}; column names must be distinct")
        seen[name] = i
    return kept, ({"dropped_columns": dropped} if dropped else {})


def _number_hint(text: str, delimiter: str) -> str:
    """Why a cell that is not a number looks like one. In a file separated by semicolons or
    tabs, "1,5" is a decimal comma; quoted in a comma-separated file, "1,234" may be either."""
    if delimiter != "," and _DECIMAL_COMMA.fullmatch(text.strip()):
        return (f"; decimal commas are not read (this file separates columns by "
                f"{_DELIMITER_NAMES[delimiter]}, as Excel writes CSV where the decimal separator "
                "is a comma): save the numbers with decimal points (1.5, not 1,5)")
    if _looks_numeric(text):
        return ("; write plain numbers: no currency signs, thousands separators, decimal commas, "
                "units or percent signs (1234.5, not $1,234.50)")
    return ""


def _target(sheet: _Sheet, col: int, task: str, missing_targets: str, rows: list[list[str]],
            lines: np.ndarray) -> tuple[np.ndarray, list[list[str]], np.ndarray, dict[str, object]]:
    """The target column (float64 when every value is a number, else str), and the rows and
    lines left once rows without a target are dropped (``missing_targets = "drop"``)."""
    path, name, notes = sheet.path, sheet.header[col], {}
    values = [row[col].strip() for row in rows]
    missing = [k for k, v in enumerate(values) if is_missing(v)]
    if missing:
        found = sorted({_shown(values[k]) for k in missing})
        at = _list_lines(lines[missing])
        if missing_targets != "drop":
            raise DataError(
                f"{path}: column {name!r} (the target) has {len(missing)} missing values "
                f"({', '.join(found[:5])}) at lines {at}; fill them in, drop those rows, or set "
                "data.missing_targets = \"drop\" to leave them out")
        log.info("%s: dropped %d rows whose target %r is missing (%s), at lines %s", path,
                 len(missing), name, ", ".join(found[:5]), at)
        keep = np.setdiff1d(np.arange(len(rows)), missing)
        rows, lines, values = [rows[k] for k in keep], lines[keep], [values[k] for k in keep]
        notes["rows_dropped_for_missing_target"] = len(missing)
    bad = [k for k, v in enumerate(values) if not _is_number(v)]
    if not bad:
        y = np.array([float(v) for v in values])
        with np.errstate(over="ignore"):
            off = np.flatnonzero(~np.isfinite(y.astype(np.float32)))
        if off.size:
            k = int(off[0])
            raise DataError(f"{path}: line {lines[k]}, column {name!r}: expected a finite number "
                            f"within float32's range (±3.4e38), got {values[k]!r}")
        return y, rows, lines, notes
    k = bad[0]
    more = f" ({len(bad)} such values, at lines {_list_lines(lines[bad])})" if len(bad) > 1 else ""
    if task == "regression":
        hint = _number_hint(values[k], sheet.delimiter)
        raise DataError(f"{path}: line {lines[k]}, column {name!r}: a regression target must be "
                        f"numeric, got {values[k]!r}{hint}{more}")
    if task == "":
        distinct = set(values)
        numeric = sum(1 for v in distinct if _is_number(v) or _looks_numeric(v))
        if 2 * numeric > len(distinct):
            shown = ", ".join(f"line {lines[b]}: {values[b]!r}" for b in bad[:5])
            hints = (_number_hint(values[b], sheet.delimiter) for b in bad)
            hint = next((h for h in hints if h), "")
            raise DataError(
                f"{path}: column {name!r} (the target) looks numeric ({numeric} of its "
                f"{len(distinct)} distinct values are numbers or written like numbers) but "
                f"{len(bad)} values are not "
                f"plain numbers ({shown}{', ...' if len(bad) > 5 else ''}){hint}. A regression "
                "target must hold plain numbers; if the column is a class label, set data.task = "
                "\"classification\"")
    return np.array(values), rows, lines, notes


def _feature_error(sheet: _Sheet, rows: list[list[str]], lines: np.ndarray,
                   features: list[int]) -> DataError:
    """The first cell, in file order, that is not a finite number."""
    for r, row in enumerate(rows):
        for i in features:
            cell = row[i]
            try:
                if math.isfinite(float(cell)):
                    continue
            except ValueError:
                pass
            at = f"{sheet.path}: line {lines[r]}, column {sheet.header[i]!r}"
            if is_missing(cell):
                cells = [(k, i2) for k, row2 in enumerate(rows) for i2 in features
                         if is_missing(row2[i2])]
                return DataError(
                    f"{at}: missing value ({_shown(cell)}); missing features are not imputed: "
                    f"fill them in or drop those rows ({len(cells)} missing cells, in "
                    f"{len({k for k, _ in cells})} rows)")
            if _is_number(cell):
                return DataError(f"{at}: expected a finite number, got {cell!r}")
            return DataError(f"{at}: expected a number, got {cell!r}"
                             f"{_number_hint(cell, sheet.delimiter)}")
    raise AssertionError("no bad cell")  # pragma: no cover - called only when there is one


def _features(sheet: _Sheet, rows: list[list[str]], lines: np.ndarray,
              features: list[int]) -> np.ndarray:
    """float64 [N, F]: each cell read by ``float``, finite."""
    X = np.empty((len(rows), len(features)), dtype=np.float64)
    try:
        for r, row in enumerate(rows):
            for j, i in enumerate(features):
                X[r, j] = float(row[i])
    except ValueError:
        raise _feature_error(sheet, rows, lines, features) from None
    if not np.isfinite(X).all():
        raise _feature_error(sheet, rows, lines, features)
    return X


def read_table(path: Path, target: str, task: str = "", missing_targets: str = "refuse") -> Table:
    """A training file: the feature columns, in file order, and the target column ``target``."""
    sheet = _read_sheet(path)
    kept, notes = _named_columns(sheet, target)
    names = [sheet.header[i] for i in kept]
    if target not in names:
        raise DataError(f"{path}: no column {target!r} (data.target) among the columns "
                        f"{', '.join(map(repr, names))}; set data.target to the target's name")
    col = kept[names.index(target)]
    features = [i for i in kept if i != col]
    if not features:
        raise DataError(f"{path}: no feature columns besides the target {target!r}")
    y, rows, lines, dropped = _target(sheet, col, task, missing_targets, sheet.rows,
                                      np.asarray(sheet.lines, dtype=np.int64))
    X = _features(sheet, rows, lines, features)
    return Table(X, y, tuple(sheet.header[i] for i in features), lines, {**notes, **dropped})


def read_features(path: Path, target: str, feature_names: Sequence[str] | None = None) -> Table:
    """A file of inputs only (an OOD set, rows to predict): every column but ``target`` (which
    may be there and is ignored). With ``feature_names`` (the training file's), its columns are
    matched by name and put in that order; a missing or extra column is refused."""
    sheet = _read_sheet(path)
    kept, notes = _named_columns(sheet, target)
    features = [i for i in kept if sheet.header[i] != target]
    names = [sheet.header[i] for i in features]
    if feature_names is not None:
        missing = [n for n in feature_names if n not in names]
        extra = [n for n in names if n not in feature_names]
        if missing or extra:
            def listed(names: list[str]) -> str:
                return ", ".join(map(repr, names))

            parts = [f"lacks the training data's columns {listed(missing)}"] if missing else []
            if extra:
                parts.append(f"has columns the training data does not: {listed(extra)}")
            raise DataError(f"{path}: {' and '.join(parts)}; columns are matched by name (the "
                            f"training columns are {listed(list(feature_names))})")
        if names != list(feature_names):
            log.info("%s: columns put in the training data's order", path)
        features = [features[names.index(n)] for n in feature_names]
    if not features:
        raise DataError(f"{path}: no feature columns besides the target {target!r}")
    lines = np.asarray(sheet.lines, dtype=np.int64)
    X = _features(sheet, sheet.rows, lines, features)
    return Table(X, None, tuple(sheet.header[i] for i in features), lines, notes)
