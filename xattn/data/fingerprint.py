"""What data a study read, as hashes: the sha256 of every file, and one hash over them all.

A named dataset's files are those of its registry, whose sha256 every read checks (a changed
file is refused), so their registry hashes are what was read. A user's own files (and a gene
list or gene vector file) are hashed as they are now. Synthetic data has no files: its
generator options stand for it, since (options, code) fixes every number.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pooch

from xattn.data.datasets import REGISTRY, dataset_info
from xattn.data.spec import DataSpec, GeneFileSpec


@dataclass(frozen=True)
class DataFingerprint:
    files: dict[str, str]  # a file (a named dataset's relative path, else its role) -> sha256
    synthetic: dict[str, Any] | None = None  # the generator options of synthetic data
    paths: dict[str, str] = field(default_factory=dict)  # a user file's role -> its path when hashed

    @property
    def hash(self) -> str:
        """One sha256 for the whole: equal exactly when every file (or option) is."""
        canonical = json.dumps({"files": self.files, "synthetic": self.synthetic}, sort_keys=True)
        return hashlib.sha256(canonical.encode()).hexdigest()

    def to_dict(self) -> dict[str, Any]:
        return {"hash": self.hash, "files": self.files, "synthetic": self.synthetic}


def data_fingerprint(data: DataSpec) -> DataFingerprint:
    """The fingerprint of the data `data` names (its files must exist: check them first)."""
    files: dict[str, str] = {}
    paths: dict[str, str] = {}
    synthetic = None

    def add(role: str, path: Path | None) -> None:
        if path is not None:
            files[role] = file_sha256(path)
            paths[role] = str(path)

    if data.files is not None:
        add("expression", data.files.expression)
        add("connectivity", data.files.connectivity)
        add("coords", data.files.coords)
    elif dataset_info(data.dataset).files:
        files.update({relative: REGISTRY[relative] for relative in dataset_info(data.dataset).files})
    else:
        synthetic = data.synthetic.model_dump(mode="json")
    if isinstance(data.genes, GeneFileSpec):
        add("genes", data.genes.file)
    add("gene2vec", data.gene2vec_file)
    return DataFingerprint(files, synthetic, paths)


def file_sha256(path: str | Path) -> str:
    return pooch.file_hash(str(path), alg="sha256")
