"""Load a user's own parcellated data from CSV files into a `ConnectomeData`.

Three files describe one dataset:

- expression: a header row, then one row per region: a label column (any name), then one
  numeric column per gene. Regions whose expression is entirely missing (parcels without
  tissue samples) are dropped; `original_index` keeps their positions.
- connectivity: a square region x region matrix, with or without a header row of labels
  and with or without a leading label column. A first row that is not all numbers is
  taken as a header; a first column that is not all numbers is taken as labels. (So
  region labels must not be plain numbers.)
- coords (optional): one row per region: a label column and three numeric columns, or
  just three numeric columns; with a header, columns named x/y/z or mni_x/mni_y/mni_z are
  picked out of a wider table.

Where a file carries labels, its rows are reordered to the expression's order; where it
carries none, its rows must already be in that order. Without coords, the coordinates are
zeros and `metadata["coords"] == "missing"`: everything works except spatial folds, which
refuse such data.

The readers here are also used by `xattn.data.datasets` for the published files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from xattn.data.connectome import ConnectomeData
from xattn.errors import DataError

COORD_COLUMN_SETS = (("x", "y", "z"), ("mni_x", "mni_y", "mni_z"))


def load_user_files(
    expression: str | Path,
    connectivity: str | Path,
    coords: str | Path | None = None,
    *,
    name: str = "user",
    target: str = "user",
) -> ConnectomeData:
    """Read, align and check the three CSV files (see the module docstring for formats)."""
    expression, connectivity = Path(expression), Path(connectivity)
    expr_labels, genes, values = read_expression(expression)
    conn_labels, matrix = read_connectivity(connectivity)
    matrix = align_square(matrix, conn_labels, expr_labels, connectivity, expression)
    if coords is None:
        xyz, coords_status = np.zeros((len(expr_labels), 3)), "missing"
    else:
        coords = Path(coords)
        coord_labels, xyz = read_coords(coords)
        xyz, coords_status = align_rows(xyz, coord_labels, expr_labels, coords, expression), "file"

    keep = sampled_regions(values, expression, expr_labels)
    matrix = matrix[np.ix_(keep, keep)]
    check_finite_matrix(matrix, connectivity)
    return ConnectomeData(
        name=name,
        expression=as_float32(values[keep], expression),
        genes=genes,
        connectivity=as_float32(matrix, connectivity),
        coords=as_float32(xyz[keep], coords),
        labels=[expr_labels[k] for k in keep],
        original_index=keep.astype(np.int64),
        target=target,
        metadata={
            "source_files": {
                "expression": str(expression),
                "connectivity": str(connectivity),
                "coords": None if coords is None else str(coords),
            },
            "coords": coords_status,
            "dropped_regions": [expr_labels[k] for k in np.setdiff1d(np.arange(len(expr_labels)), keep)],
        },
    )


# ---------------------------------------------------------------- reading one file


def read_table(path: Path, role: str) -> pd.DataFrame:
    """The raw cells of a CSV as strings (NaN where empty), or a DataError saying why not."""
    if not path.is_file():
        raise DataError(f"{role} file {path} does not exist: check the path")
    try:
        table = pd.read_csv(path, header=None, dtype=object, skip_blank_lines=True)
    except pd.errors.EmptyDataError:
        raise DataError(f"{role} file {path} is empty: it needs a CSV table") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{role} file {path} is not a readable CSV ({reason}): fix or re-export it") from None
    return table


def to_numbers(cells: pd.DataFrame, path: Path, role: str) -> np.ndarray:
    """Convert cells of `read_table` to float64; empty cells become NaN, other text is an error.

    The frame keeps `read_table`'s integer row and column labels, which locate a bad cell
    in the file for the message.
    """
    try:  # fast path: every cell is a number or empty
        return cells.to_numpy(dtype=object).astype(np.float64)
    except (TypeError, ValueError):
        pass
    numbers = cells.apply(pd.to_numeric, errors="coerce")
    bad = numbers.isna().to_numpy() & cells.notna().to_numpy()
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(
            f"{role} file {path} line {cells.index[row] + 1}, column {cells.columns[col] + 1}: "
            f"{cells.iat[row, col]!r} is not a number: fix the value or leave the cell empty"
        )
    return numbers.to_numpy(dtype=np.float64)


def is_numeric(cells: pd.Series) -> bool:
    """True when every non-empty cell parses as a number (used to detect header/label cells)."""
    present = cells.dropna()
    return bool(pd.to_numeric(present, errors="coerce").notna().all())


def check_unique(labels: list[str], path: Path, role: str, what: str = "region label") -> None:
    duplicated = pd.Index(labels)[pd.Index(labels).duplicated()].unique().tolist()
    if duplicated:
        raise DataError(f"{role} file {path} repeats {what}(s) {duplicated[:5]}: each must appear once")


def read_expression(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """(region labels, gene symbols, values R x G) from a label column + one column per gene."""
    table = read_table(path, "expression")
    if table.shape[0] < 2 or table.shape[1] < 2:
        raise DataError(
            f"expression file {path} has {table.shape[0]} line(s) and {table.shape[1]} column(s): "
            "it needs a header row, one row per region, a label column and at least one gene column"
        )
    genes = [str(g).strip() for g in table.iloc[0, 1:]]
    if any(g in ("", "nan") for g in genes):
        raise DataError(f"expression file {path} has an unnamed gene column: name every column in the header")
    if is_numeric(table.iloc[0, 1:]):
        raise DataError(
            f"expression file {path} has no header row (its first line is all numbers): "
            "add a header naming the label column and each gene"
        )
    check_unique(genes, path, "expression", "gene column")
    labels = [str(x).strip() for x in table.iloc[1:, 0]]
    check_unique(labels, path, "expression")
    values = to_numbers(table.iloc[1:, 1:], path, "expression")
    if np.isinf(values).any():
        row = int(np.argwhere(np.isinf(values))[0, 0])
        raise DataError(f"expression file {path} line {row + 2} has an infinite value: fix it")
    return labels, genes, values


def split_header_and_labels(table: pd.DataFrame) -> tuple[bool, bool]:
    """(has header row, has label column), decided by which cells are not numbers.

    The label column is judged on the rows after the first (the first may be a header
    whose corner cell is text); the header on the first row's cells outside the label
    column.
    """
    has_label_column = table.shape[0] > 1 and not is_numeric(table.iloc[1:, 0])
    has_header = not is_numeric(table.iloc[0, 1 if has_label_column else 0 :])
    return has_header, has_label_column


def read_connectivity(path: Path) -> tuple[list[str] | None, np.ndarray]:
    """(labels or None, square matrix) from a CSV with optional header row and label column."""
    table = read_table(path, "connectivity")
    has_header, has_label_column = split_header_and_labels(table)
    body = table.iloc[1:] if has_header else table
    if body.empty:
        raise DataError(f"connectivity file {path} has a header but no rows: it needs a square matrix")
    cells = body.iloc[:, 1:] if has_label_column else body
    matrix = to_numbers(cells, path, "connectivity")
    if matrix.shape[0] != matrix.shape[1]:
        raise DataError(
            f"connectivity file {path} is {matrix.shape[0]} x {matrix.shape[1]}, not square: "
            "it needs one row and one column per region (labels, if any, must not be plain numbers)"
        )
    row_labels = [str(x).strip() for x in body.iloc[:, 0]] if has_label_column else None
    col_labels = [str(x).strip() for x in table.iloc[0, 1 if has_label_column else 0 :]] if has_header else None
    if row_labels and col_labels and row_labels != col_labels:
        raise DataError(
            f"connectivity file {path}: the header labels and the row labels differ in content or order: "
            "rows and columns must list the same regions in the same order"
        )
    labels = row_labels or col_labels
    if labels is not None:
        check_unique(labels, path, "connectivity")
    return labels, matrix


def read_coords(path: Path) -> tuple[list[str] | None, np.ndarray]:
    """(labels or None, R x 3 coordinates) from a label column + x, y, z, or just x, y, z.

    With a header, a column named `label` supplies the labels and columns named x/y/z or
    mni_x/mni_y/mni_z the coordinates, so a wider atlas table can be passed as is.
    """
    table = read_table(path, "coords")
    has_header, has_label_column = split_header_and_labels(table)
    body = table.iloc[1:] if has_header else table
    columns = [str(c).strip().lower() for c in table.iloc[0]] if has_header else []
    named = next((names for names in COORD_COLUMN_SETS if set(names) <= set(columns)), None)
    if named is not None:
        cells = body.iloc[:, [columns.index(c) for c in named]]
    elif body.shape[1] == 3 + has_label_column:
        cells = body.iloc[:, -3:]
    else:
        raise DataError(
            f"coords file {path} has {body.shape[1]} columns: it needs x, y, z (optionally after a label "
            "column), or a header naming x,y,z or mni_x,mni_y,mni_z"
        )
    label_column = columns.index("label") if "label" in columns else (0 if has_label_column else None)
    labels = None if label_column is None else [str(x).strip() for x in body.iloc[:, label_column]]
    if labels is not None:
        check_unique(labels, path, "coords")
    xyz = to_numbers(cells, path, "coords")
    if not np.isfinite(xyz).all():
        row = int(np.argwhere(~np.isfinite(xyz))[0, 0])
        raise DataError(
            f"coords file {path} line {row + (2 if has_header else 1)} has a missing coordinate: fill it in"
        )
    return labels, xyz


# ---------------------------------------------------------------- aligning files


def label_order(labels: list[str] | None, reference: list[str], path: Path, reference_path: Path) -> np.ndarray:
    """Row indices that put `labels` in `reference` order (identity when there are no labels)."""
    if labels is None:
        return np.arange(len(reference))
    missing_here = [x for x in reference if x not in set(labels)]
    extra_here = [x for x in labels if x not in set(reference)]
    if missing_here or extra_here:
        parts = []
        if missing_here:
            parts.append(f"lacks {len(missing_here)} region(s) of {reference_path.name} {missing_here[:5]}")
        if extra_here:
            parts.append(f"has {len(extra_here)} region(s) not in {reference_path.name} {extra_here[:5]}")
        raise DataError(f"{path} {' and '.join(parts)}: both files must label the same regions")
    position = {label: k for k, label in enumerate(labels)}
    return np.array([position[x] for x in reference], dtype=np.int64)


def check_size(n_rows: int, reference: list[str], path: Path, reference_path: Path) -> None:
    if n_rows != len(reference):
        raise DataError(
            f"{path} has {n_rows} regions but {reference_path} has {len(reference)}: "
            "they must describe the same regions (add labels to align them by name)"
        )


def align_square(
    matrix: np.ndarray, labels: list[str] | None, reference: list[str], path: Path, reference_path: Path
) -> np.ndarray:
    """`matrix` with rows and columns in `reference` order."""
    order = label_order(labels, reference, path, reference_path)  # labelled: names what differs, before sizes
    check_size(matrix.shape[0], reference, path, reference_path)
    return matrix[np.ix_(order, order)]


def align_rows(
    rows: np.ndarray, labels: list[str] | None, reference: list[str], path: Path, reference_path: Path
) -> np.ndarray:
    """`rows` in `reference` order."""
    order = label_order(labels, reference, path, reference_path)
    check_size(rows.shape[0], reference, path, reference_path)
    return rows[order]


def sampled_regions(values: np.ndarray, path: Path, labels: list[str]) -> np.ndarray:
    """Indices of regions with expression; all-NaN rows are dropped, partial NaN rows rejected."""
    missing = np.isnan(values)
    partial = missing.any(axis=1) & ~missing.all(axis=1)
    if partial.any():
        row = int(np.flatnonzero(partial)[0])
        raise DataError(
            f"expression file {path} region {labels[row]!r} (line {row + 2}) has {int(missing[row].sum())} "
            "missing gene value(s): impute them, or leave the whole row empty to drop the region"
        )
    keep = np.flatnonzero(~missing.all(axis=1))
    if keep.size < 2:
        raise DataError(f"expression file {path} has {keep.size} region(s) with expression: at least 2 are needed")
    return keep


def as_float32(values: np.ndarray, path: Path | None) -> np.ndarray:
    limit = np.finfo(np.float32).max
    if values.size and np.nanmax(np.abs(values)) > limit:
        raise DataError(f"{path} has values beyond +-{limit:.1e}, too large for float32: rescale the data")
    return values.astype(np.float32)


def check_finite_matrix(matrix: np.ndarray, path: Path) -> None:
    bad = ~np.isfinite(matrix)
    if bad.any():
        i, j = np.argwhere(bad)[0]
        raise DataError(
            f"connectivity file {path} has {int(bad.sum())} missing or infinite value(s) among the kept regions "
            f"(first at row {i + 1}, column {j + 1} in expression order): fill them in"
        )
