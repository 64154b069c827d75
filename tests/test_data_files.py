"""User CSV files: formats accepted, alignment by label, and one-line errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest
from data_fixtures import write_csv

from xattn.data import load_user_files
from xattn.errors import DataError

LABELS = ["A", "B", "C", "D"]
GENES = ["G1", "G2", "G3"]
EXPRESSION = np.array([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.7, 0.8, 0.9], [0.2, 0.4, 0.6]])
MATRIX = np.array([[0, 1, 2, 3], [1, 0, 4, 5], [2, 4, 0, 6], [3, 5, 6, 0]], dtype=float)
XYZ = np.arange(12, dtype=float).reshape(4, 3)


@pytest.fixture
def expression_file(tmp_path):
    rows = [[label, *values] for label, values in zip(LABELS, EXPRESSION)]
    return write_csv(tmp_path / "expression.csv", rows, ["label", *GENES])


def test_plain_matrix_without_labels_keeps_expression_order(tmp_path, expression_file):
    connectivity = write_csv(tmp_path / "fc.csv", MATRIX.tolist())
    data = load_user_files(expression_file, connectivity)
    assert data.labels == LABELS and data.genes == GENES
    np.testing.assert_allclose(data.connectivity, MATRIX)
    np.testing.assert_allclose(data.expression, EXPRESSION, rtol=1e-6)
    assert data.metadata["coords"] == "missing" and not data.coords.any()
    assert (data.name, data.target) == ("user", "user")


def test_header_row_reorders_connectivity_by_label(tmp_path, expression_file):
    order = [2, 0, 3, 1]
    shuffled = MATRIX[np.ix_(order, order)]
    connectivity = write_csv(tmp_path / "fc.csv", shuffled.tolist(), [LABELS[k] for k in order])
    data = load_user_files(expression_file, connectivity, name="mine", target="fc")
    np.testing.assert_allclose(data.connectivity, MATRIX)
    assert (data.name, data.target) == ("mine", "fc")


def test_label_column_without_header_reorders_connectivity(tmp_path, expression_file):
    order = [3, 2, 1, 0]
    rows = [[LABELS[k], *MATRIX[k, order]] for k in order]
    data = load_user_files(expression_file, write_csv(tmp_path / "fc.csv", rows))
    np.testing.assert_allclose(data.connectivity, MATRIX)


def test_header_and_label_column_together(tmp_path, expression_file):
    rows = [[label, *MATRIX[k]] for k, label in enumerate(LABELS)]
    data = load_user_files(expression_file, write_csv(tmp_path / "fc.csv", rows, ["", *LABELS]))
    np.testing.assert_allclose(data.connectivity, MATRIX)


def test_coords_with_labels_are_reordered(tmp_path, expression_file):
    connectivity = write_csv(tmp_path / "fc.csv", MATRIX.tolist())
    rows = [[LABELS[k], *XYZ[k]] for k in [1, 3, 0, 2]]
    for header in (["region", "x", "y", "z"], None):
        coords = write_csv(tmp_path / "xyz.csv", rows, header)
        data = load_user_files(expression_file, connectivity, coords)
        np.testing.assert_allclose(data.coords, XYZ)
        assert data.metadata["coords"] == "file"


def test_coords_picked_from_a_wider_table_by_column_name(tmp_path, expression_file):
    connectivity = write_csv(tmp_path / "fc.csv", MATRIX.tolist())
    rows = [[k, "net", label, *XYZ[k]] for k, label in enumerate(LABELS)]
    coords = write_csv(tmp_path / "atlas.csv", rows, ["index", "network", "label", "mni_x", "mni_y", "mni_z"])
    np.testing.assert_allclose(load_user_files(expression_file, connectivity, coords).coords, XYZ)


def test_plain_three_column_coords(tmp_path, expression_file):
    connectivity = write_csv(tmp_path / "fc.csv", MATRIX.tolist())
    coords = write_csv(tmp_path / "xyz.csv", XYZ.tolist())
    np.testing.assert_allclose(load_user_files(expression_file, connectivity, coords).coords, XYZ)


def test_regions_without_expression_are_dropped_and_remembered(tmp_path):
    rows = [[label, *values] for label, values in zip(LABELS, EXPRESSION)]
    rows[1] = ["B", None, None, None]
    expression = write_csv(tmp_path / "expression.csv", rows, ["label", *GENES])
    matrix = MATRIX.copy()
    matrix[1, :] = matrix[:, 1] = np.nan  # unusable only for the dropped region
    data = load_user_files(expression, write_csv(tmp_path / "fc.csv", matrix.tolist()))
    assert data.labels == ["A", "C", "D"]
    np.testing.assert_array_equal(data.original_index, [0, 2, 3])
    np.testing.assert_allclose(data.connectivity, MATRIX[np.ix_([0, 2, 3], [0, 2, 3])])
    assert data.metadata["dropped_regions"] == ["B"]


# ---------------------------------------------------------------- errors


def error_for(tmp_path, expression, connectivity, coords=None) -> str:
    with pytest.raises(DataError) as caught:
        load_user_files(expression, connectivity, coords)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_missing_file_is_named(tmp_path, expression_file):
    message = error_for(tmp_path, expression_file, tmp_path / "nope.csv")
    assert "connectivity file" in message and "nope.csv does not exist" in message


def test_empty_file_is_named(tmp_path, expression_file):
    (tmp_path / "fc.csv").write_text("")
    assert "fc.csv is empty" in error_for(tmp_path, expression_file, tmp_path / "fc.csv")


def test_non_square_connectivity(tmp_path, expression_file):
    connectivity = write_csv(tmp_path / "fc.csv", MATRIX[:, :3].tolist())
    assert "4 x 3, not square" in error_for(tmp_path, expression_file, connectivity)


def test_size_mismatch_without_labels(tmp_path, expression_file):
    connectivity = write_csv(tmp_path / "fc.csv", MATRIX[:3, :3].tolist())
    assert "has 3 regions but" in error_for(tmp_path, expression_file, connectivity)


def test_labels_missing_on_either_side_are_named(tmp_path, expression_file):
    connectivity = write_csv(tmp_path / "fc.csv", MATRIX.tolist(), ["A", "B", "C", "Z"])
    message = error_for(tmp_path, expression_file, connectivity)
    assert "['D']" in message and "['Z']" in message


def test_partial_missing_expression_is_rejected(tmp_path):
    rows = [[label, *values] for label, values in zip(LABELS, EXPRESSION)]
    rows[2][2] = None
    expression = write_csv(tmp_path / "expression.csv", rows, ["label", *GENES])
    message = error_for(tmp_path, expression, write_csv(tmp_path / "fc.csv", MATRIX.tolist()))
    assert "'C'" in message and "missing gene value" in message


def test_missing_connectivity_value_is_rejected(tmp_path, expression_file):
    matrix = MATRIX.copy()
    matrix[0, 2] = np.nan
    message = error_for(tmp_path, expression_file, write_csv(tmp_path / "fc.csv", matrix.tolist()))
    assert "fc.csv has 1 missing" in message


def test_non_numeric_cell_is_located(tmp_path):
    rows = [[label, *values] for label, values in zip(LABELS, EXPRESSION)]
    rows[1][2] = "high"
    expression = write_csv(tmp_path / "expression.csv", rows, ["label", *GENES])
    message = error_for(tmp_path, expression, write_csv(tmp_path / "fc.csv", MATRIX.tolist()))
    assert "line 3, column 3" in message and "'high' is not a number" in message


def test_duplicate_labels_and_genes_are_rejected(tmp_path):
    rows = [[label, *values] for label, values in zip(["A", "A", "C", "D"], EXPRESSION)]
    expression = write_csv(tmp_path / "expression.csv", rows, ["label", *GENES])
    assert "repeats region label" in error_for(tmp_path, expression, write_csv(tmp_path / "fc.csv", MATRIX.tolist()))
    (tmp_path / "genes.csv").write_text("label,G1,G1\nA,0.1,0.2\nB,0.3,0.4\n")
    fc = write_csv(tmp_path / "fc2.csv", MATRIX[:2, :2].tolist())
    assert "repeats gene column" in error_for(tmp_path, tmp_path / "genes.csv", fc)


def test_expression_without_header_is_rejected(tmp_path):
    rows = [[label, *values] for label, values in zip(LABELS, EXPRESSION)]
    expression = write_csv(tmp_path / "expression.csv", rows)
    assert "no header row" in error_for(tmp_path, expression, write_csv(tmp_path / "fc.csv", MATRIX.tolist()))


def test_bad_coords_are_named(tmp_path, expression_file):
    connectivity = write_csv(tmp_path / "fc.csv", MATRIX.tolist())
    coords = write_csv(tmp_path / "xyz.csv", XYZ[:, :2].tolist())
    assert "xyz.csv has 2 columns" in error_for(tmp_path, expression_file, connectivity, coords)
