"""Data layer: named and user datasets, synthetic data, gene vectors, region splits."""

from xattn.data.connectome import ConnectomeData
from xattn.data.datasets import DATASETS, DatasetInfo, data_mirror, fetch, load_dataset
from xattn.data.files import load_user_files
from xattn.data.genevec import GeneVectors, build_gene_vectors, read_gene2vec
from xattn.data.splits import RegionSplit, ordered_pairs, region_folds
from xattn.data.synthetic import make_synthetic

__all__ = [
    "ConnectomeData",
    "DATASETS",
    "DatasetInfo",
    "GeneVectors",
    "RegionSplit",
    "build_gene_vectors",
    "data_mirror",
    "fetch",
    "load_dataset",
    "load_user_files",
    "make_synthetic",
    "ordered_pairs",
    "read_gene2vec",
    "region_folds",
]
