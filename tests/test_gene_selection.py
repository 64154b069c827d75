"""Gene selection: all, the most variable on training regions only, or a gene list file."""

import dataclasses

import numpy as np
import pytest

from xattn.data import load_dataset, region_folds
from xattn.data.gene_selection import select_genes
from xattn.data.spec import DataSpec
from xattn.errors import DataError, SpecError
from xattn.experiment import prepare_experiment
from xattn.tuning.spec_file import parse_spec


@pytest.fixture(scope="module")
def s100(data_mirror):
    return load_dataset("hcp-s100", mirror=data_mirror)


def test_top_variance_never_looks_at_validation_or_test_regions(s100):
    """Replace the held-out regions' expression by noise: the selection does not change."""
    split = region_folds(s100, 4, method="spatial", seed=0)[1]
    chosen = select_genes(s100, {"top_variance": 100}, split.train)
    noisy = s100.expression.copy()
    held_out = np.concatenate([split.val, split.test])
    noisy[held_out] = np.random.default_rng(0).random((held_out.size, s100.n_genes))
    assert np.array_equal(
        select_genes(dataclasses.replace(s100, expression=noisy), {"top_variance": 100}, split.train), chosen
    )
    # ...while the training regions do decide it
    noisy_train = s100.expression.copy()
    noisy_train[split.train] = np.random.default_rng(1).random((split.train.size, s100.n_genes))
    assert not np.array_equal(
        select_genes(dataclasses.replace(s100, expression=noisy_train), {"top_variance": 100}, split.train), chosen
    )
    variance = s100.expression[split.train].var(axis=0)
    assert variance[chosen].min() >= np.delete(variance, chosen).max()
    assert chosen.size == 100 and np.all(np.diff(chosen) > 0)  # the dataset's gene order is kept


def test_the_whole_pipeline_selects_on_training_regions(s100, data_mirror):
    spec = DataSpec(dataset="hcp-s100", split={"method": "spatial", "folds": 4, "fold": 2}, genes={"top_variance": 50})
    experiment = prepare_experiment(spec, {}, seed=0, mirror=str(data_mirror))
    expected = select_genes(s100, {"top_variance": 50}, experiment.split.train)
    assert experiment.data.genes == [s100.genes[k] for k in expected]
    assert experiment.pairs.expression.shape == (100, 50)
    extra = experiment.checkpoint_extra(spec, {}, 0)
    assert extra["genes"] == experiment.data.genes and extra["data"]["genes"] == {"top_variance": 50}


@pytest.mark.parametrize("dataset", ["hcp-s100-r08", "hcp-s100-sc", "hcp-s400", "synthetic"])
def test_every_named_dataset_accepts_a_selection(dataset, data_mirror):
    spec = DataSpec(dataset=dataset, genes={"top_variance": 12})
    assert prepare_experiment(spec, {}, seed=0, mirror=str(data_mirror)).data.n_genes == 12


def test_a_gene_list_file_picks_its_genes(tmp_path, s100):
    wanted = [s100.genes[5], s100.genes[2].lower(), s100.genes[700]]
    path = tmp_path / "genes.txt"
    path.write_text(f"# my genes\n{wanted[0]}\n\n{wanted[1]}  # lower case is fine\n{wanted[2]}\n{wanted[0]}\n")
    chosen = select_genes(s100, {"file": str(path)}, np.arange(10))
    assert chosen.tolist() == [2, 5, 700]


def test_user_files_take_a_gene_list_relative_to_the_spec(tmp_path):
    from xattn.data import make_synthetic

    data = make_synthetic(n_regions=20, n_genes=6, seed=0)
    import pandas as pd

    pd.DataFrame(data.expression, index=data.labels, columns=data.genes).rename_axis("label").to_csv(
        tmp_path / "expr.csv"
    )
    pd.DataFrame(data.connectivity, index=data.labels, columns=data.labels).to_csv(tmp_path / "fc.csv")
    pd.DataFrame(data.coords, index=data.labels, columns=["x", "y", "z"]).rename_axis("label").to_csv(
        tmp_path / "xyz.csv"
    )
    (tmp_path / "genes.txt").write_text(f"{data.genes[4]}\n{data.genes[1]}\n")
    (tmp_path / "spec.yaml").write_text(
        "name: files\ndata:\n  dataset: null\n  files: {expression: expr.csv, connectivity: fc.csv, coords: xyz.csv}\n"
        "  genes: {file: genes.txt}\nsearch: {space: {d_model: [16]}}\n"
    )
    from xattn.tuning.spec_file import load_spec

    spec = load_spec(tmp_path / "spec.yaml")
    assert spec.data.genes.file == tmp_path / "genes.txt"
    experiment = prepare_experiment(spec.data, {}, seed=0)
    assert experiment.data.genes == [data.genes[1], data.genes[4]]


@pytest.mark.parametrize(
    "content,message",
    [
        ("NOT_A_GENE\nALSO_NOT\n", "2 of 2 genes are not in 'hcp-s100' (NOT_A_GENE, ALSO_NOT): remove them"),
        ("# nothing\n\n", "holds no gene symbols"),
    ],
)
def test_bad_gene_lists_are_one_line_errors(tmp_path, s100, content, message):
    path = tmp_path / "genes.txt"
    path.write_text(content)
    with pytest.raises(DataError) as error:
        select_genes(s100, {"file": str(path)}, np.arange(10))
    assert message in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(DataError, match="does not exist"):
        select_genes(s100, {"file": str(tmp_path / "missing.txt")}, np.arange(10))
    with pytest.raises(DataError, match="top_variance 811 does not fit 'hcp-s100', which has 810 genes"):
        select_genes(s100, {"top_variance": 811}, np.arange(10))


@pytest.mark.parametrize(
    "genes,message",
    [
        ({"top_variance": 0}, "data.genes: top_variance must be a whole number >= 1, got 0"),
        ("most", "data.genes: 'most' is not a gene selection: use all, {top_variance: N} or {file: PATH}"),
        ({"top_variance": 10, "file": "x"}, "is not a gene selection"),
    ],
)
def test_bad_selections_in_a_spec_are_one_line_errors(genes, message):
    with pytest.raises(SpecError) as error:
        parse_spec({"name": "x", "data": {"genes": genes}, "search": {"space": {"d_model": [16]}}})
    assert message in str(error.value) and "\n" not in str(error.value)
