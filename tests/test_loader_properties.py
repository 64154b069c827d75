"""Property tests: whatever a user's spec or data files contain, loading them ends either in a
valid object or in a one-line XattnError, never in a traceback."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xattn.data import load_user_files, read_gene2vec
from xattn.errors import XattnError
from xattn.tuning.spec import StudySpec
from xattn.tuning.spec_file import load_spec

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = yaml.safe_load((REPO / "studies" / "quickstart.yaml").read_text())
EXAMPLE = {"s100": yaml.safe_load((REPO / "studies" / "s100-compare.yaml").read_text())}
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["cross_attention", "hcp-s100", "spatial", "asha", "1e-3", "-1", "[1, 2]"]),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6,
)


def paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from paths(value, (*prefix, index))


@st.composite
def mutated_specs(draw):
    raw = copy.deepcopy(draw(st.sampled_from([QUICKSTART, EXAMPLE["s100"]])))
    for _ in range(draw(st.integers(1, 3))):
        targets = [p for p in paths(raw) if p]
        path = draw(st.sampled_from(targets))
        *parents, leaf = path
        node = raw
        for part in parents:
            node = node[part]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete" and isinstance(node, dict):
            del node[leaf]
        elif action == "add" and isinstance(node, dict):
            node[draw(st.text(min_size=1, max_size=10))] = draw(values)
        else:
            node[leaf] = draw(values)
    return raw


def assert_loads_or_explains(load):
    try:
        return load()
    except XattnError as error:
        message = str(error)
        assert message and "\n" not in message, f"not a one-line error: {message!r}"
        return None


@PROPERTY
@given(raw=mutated_specs())
def test_a_mutated_spec_loads_or_gets_a_one_line_error(tmp_path, raw):
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    spec = assert_loads_or_explains(lambda: load_spec(path))
    assert spec is None or isinstance(spec, StudySpec)


@PROPERTY
@given(text=st.text(max_size=300), keep=st.integers(0, 400))
def test_a_spec_file_of_any_text_loads_or_gets_a_one_line_error(tmp_path, text, keep):
    path = tmp_path / "spec.yaml"
    original = (REPO / "studies" / "quickstart.yaml").read_text()
    path.write_text(original[:keep] + text + original[keep:])
    assert_loads_or_explains(lambda: load_spec(path))


CELLS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr), st.sampled_from(["", "NA", "x", "1,2", '"', "nan", "-"]),
    st.text(max_size=5),
)  # fmt: skip


def valid_files(folder: Path, n: int = 5, genes: int = 3) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    labels = [f"R{k}" for k in range(n)]
    expression = ["label," + ",".join(f"G{g}" for g in range(genes))]
    expression += [f"{label}," + ",".join(f"{v:.3f}" for v in rng.random(genes)) for label in labels]
    matrix = rng.random((n, n))
    matrix = (matrix + matrix.T) / 2
    connectivity = [",".join(labels)] + [",".join(f"{v:.3f}" for v in row) for row in matrix]
    coords = ["label,x,y,z"] + [f"{label}," + ",".join(f"{v:.2f}" for v in rng.normal(size=3)) for label in labels]
    files = {"expression": expression, "connectivity": connectivity, "coords": coords}
    for role, lines in files.items():
        (folder / f"{role}.csv").write_text("\n".join(lines) + "\n")
    return {role: folder / f"{role}.csv" for role in files}


@st.composite
def file_mutations(draw):
    role = draw(st.sampled_from(["expression", "connectivity", "coords"]))
    kind = draw(st.sampled_from(["cell", "drop_line", "duplicate_line", "truncate", "drop_column", "garbage"]))
    return role, kind, draw(st.integers(0, 10)), draw(st.integers(0, 10)), draw(CELLS), draw(st.binary(max_size=40))


@PROPERTY
@given(mutations=st.lists(file_mutations(), min_size=1, max_size=3))
def test_mutated_data_files_load_or_get_a_one_line_error(tmp_path, mutations):
    files = valid_files(tmp_path)
    for role, kind, row, column, cell, garbage in mutations:
        path = files[role]
        lines = path.read_text(errors="replace").splitlines()
        row = row % max(len(lines), 1)
        if kind == "cell" and lines:
            cells = lines[row].split(",")
            cells[column % len(cells)] = cell
            lines[row] = ",".join(cells)
        elif kind == "drop_line" and lines:
            del lines[row]
        elif kind == "duplicate_line" and lines:
            lines.insert(row, lines[row])
        elif kind == "truncate":
            lines = lines[:row]
        elif kind == "drop_column":
            lines = [
                ",".join(c for k, c in enumerate(line.split(",")) if k != column % max(len(line.split(",")), 1))
                for line in lines
            ]
        if kind == "garbage":
            path.write_bytes(path.read_bytes()[: row * 7] + garbage)
        else:
            path.write_text("\n".join(lines) + "\n")
    data = assert_loads_or_explains(
        lambda: load_user_files(files["expression"], files["connectivity"], files["coords"])
    )
    if data is not None:
        assert data.connectivity.shape == (data.n_regions, data.n_regions)
        assert np.isfinite(data.connectivity).all() and np.isfinite(data.expression).all()


@PROPERTY
@given(
    lines=st.lists(
        st.one_of(
            st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr), min_size=0, max_size=5).map(
                " ".join
            ),
            st.text(max_size=20),
        ),
        max_size=6,
    ),
    symbols=st.lists(st.sampled_from(["G0", "G1", "TP53", "", "#"]), min_size=6, max_size=6),
)
def test_a_gene_vector_file_of_any_shape_reads_or_gets_a_one_line_error(tmp_path, lines, symbols):
    path = tmp_path / "gene2vec.txt"
    path.write_text("\n".join(f"{symbol} {line}" for symbol, line in zip(symbols, lines)))
    result = assert_loads_or_explains(lambda: read_gene2vec(path))
    if result is not None:
        genes, vectors = result
        assert len(genes) == vectors.shape[0] and np.isfinite(vectors).all()
