"""Gene vectors: reading Gene2Vec files, and the three kinds built for a dataset."""

from __future__ import annotations

import dataclasses
import gzip

import numpy as np
import pytest

from xattn.data import GeneVectors, build_gene_vectors, make_synthetic, read_gene2vec
from xattn.errors import DataError


def write_vectors(path, rows, header=None):
    lines = [header] if header else []
    lines += [" ".join([symbol, *map(str, values)]) for symbol, values in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


ROWS = [("GENE_000", [0.1, 0.2, 0.3]), ("GENE_002", [1.0, -1.0, 0.5]), ("OTHER", [3.0, 3.0, 3.0])]


@pytest.mark.parametrize("header", [None, "3 3"])
def test_reads_with_and_without_word2vec_header(tmp_path, header):
    symbols, vectors = read_gene2vec(write_vectors(tmp_path / "g2v.txt", ROWS, header))
    assert symbols == ["GENE_000", "GENE_002", "OTHER"]
    assert vectors.dtype == np.float32 and vectors.shape == (3, 3)
    np.testing.assert_allclose(vectors[1], [1.0, -1.0, 0.5])


def test_reads_gzip_and_tabs(tmp_path):
    path = tmp_path / "g2v.txt.gz"
    with gzip.open(path, "wt") as handle:
        handle.write("A\t1\t2\nB\t3\t4\n")
    symbols, vectors = read_gene2vec(path)
    assert symbols == ["A", "B"] and vectors.tolist() == [[1, 2], [3, 4]]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("A 1 2 3\nB 1 2\n", r"line 2: 'B' has 2 values, expected 3"),
        ("A 1 2\nB 1 x\n", r"line 2: 'x' is not a number"),
        ("A 1 2\nA 3 4\n", r"line 2: 'A' already appeared on line 1"),
        ("", r"has no vectors"),
        ("5 2\nA 1 2\n", r"header says 5 x 2 but holds 1 x 2"),
        ("A\n", r"line 1: 'A' has 0 values"),
    ],
)
def test_bad_files_name_the_line(tmp_path, content, expected):
    path = tmp_path / "bad.txt"
    path.write_text(content)
    with pytest.raises(DataError, match=expected):
        read_gene2vec(path)


@pytest.fixture(scope="module")
def data():
    return make_synthetic(n_regions=30, n_genes=6, seed=2)


def test_gene2vec_keeps_shared_genes_in_dataset_order(tmp_path, data):
    rows = [("gene_004", [4.0, 4.0]), ("GENE_001", [1.0, 1.0]), ("UNRELATED", [0.0, 0.0])]
    vectors = build_gene_vectors(data, "gene2vec", np.arange(20), path=write_vectors(tmp_path / "g.txt", rows))
    assert isinstance(vectors, GeneVectors) and vectors.kind == "gene2vec" and not vectors.learnable
    np.testing.assert_array_equal(vectors.gene_index, [1, 4])
    np.testing.assert_array_equal(vectors.vectors, [[1, 1], [4, 4]])
    assert vectors.overlap == {"dataset_genes": 6, "file_genes": 3, "shared": 2}


def test_gene2vec_without_shared_genes_or_path(tmp_path, data):
    path = write_vectors(tmp_path / "g.txt", [("UNRELATED", [0.0, 1.0])])
    with pytest.raises(DataError, match="none of the 6 genes"):
        build_gene_vectors(data, "gene2vec", np.arange(20), path=path)
    with pytest.raises(DataError, match="need a file"):
        build_gene_vectors(data, "gene2vec", np.arange(20))


def test_coexpression_uses_training_regions_only(data):
    train = np.arange(0, 30, 2)
    before = build_gene_vectors(data, "coexpression", train, dim=16)
    held_out = np.setdiff1d(np.arange(30), train)
    changed = data.expression.copy()
    changed[held_out] = np.random.default_rng(9).random((held_out.size, data.n_genes))
    after = build_gene_vectors(dataclasses.replace(data, expression=changed), "coexpression", train, dim=16)
    np.testing.assert_array_equal(before.vectors, after.vectors)
    moved_training = changed.copy()
    moved_training[train[0]] = 1 - moved_training[train[0]]
    different = build_gene_vectors(dataclasses.replace(data, expression=moved_training), "coexpression", train, dim=16)
    assert not np.allclose(before.vectors, different.vectors)


def test_coexpression_reproduces_gene_correlations(data):
    train = np.arange(25)
    vectors = build_gene_vectors(data, "coexpression", train, dim=16)
    assert vectors.vectors.shape == (6, 16) and vectors.vectors.dtype == np.float32
    assert not vectors.vectors[:, 6:].any()  # at most G components, zero padded
    expected = np.corrcoef(data.expression[train].astype(float), rowvar=False)
    np.testing.assert_allclose(vectors.vectors @ vectors.vectors.T, expected, atol=1e-5)
    again = build_gene_vectors(data, "coexpression", train[::-1], dim=16)
    np.testing.assert_array_equal(vectors.vectors, again.vectors)


def test_onehot_is_a_seeded_small_learnable_start(data):
    first = build_gene_vectors(data, "onehot", np.arange(10), dim=200, seed=1)
    assert first.learnable and first.vectors.shape == (6, 200)
    assert 0.01 < first.vectors.std() < 0.03
    np.testing.assert_array_equal(first.vectors, build_gene_vectors(data, "onehot", np.arange(10), seed=1).vectors)
    assert not np.allclose(first.vectors, build_gene_vectors(data, "onehot", np.arange(10), seed=2).vectors)


def test_unknown_kind_lists_valid_kinds(data):
    with pytest.raises(DataError, match="gene2vec, coexpression, onehot"):
        build_gene_vectors(data, "word2vec", np.arange(10))


def test_too_few_training_regions(data):
    with pytest.raises(DataError, match="train_regions"):
        build_gene_vectors(data, "coexpression", np.array([3]))
