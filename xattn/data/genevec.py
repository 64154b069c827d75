"""Per-gene vectors that give each gene token its identity in the model.

Three kinds:

- "gene2vec": published embeddings read from a text file (Du et al. 2019, 200-D); only
  the dataset's genes found in the file are kept.
- "coexpression": an embedding computed from the data itself: genes that rise and fall
  together across regions get similar vectors. Computed from training regions only, so
  held-out regions cannot leak into the model through it.
- "onehot": a free vector per gene, learned with the model; what is returned is its
  seeded initial value.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from xattn.data.connectome import ConnectomeData
from xattn.errors import DataError

KINDS = ("gene2vec", "coexpression", "onehot")
ONEHOT_INIT_SCALE = 0.02


@dataclass(frozen=True)
class GeneVectors:
    """Vectors for the genes `gene_index` (indices into `data.genes`, in that order)."""

    kind: str
    gene_index: np.ndarray  # (K,) int64
    vectors: np.ndarray  # (K, dim) float32
    learnable: bool
    overlap: dict = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]


def read_gene2vec(path: str | Path) -> tuple[list[str], np.ndarray]:
    """(symbols, vectors N x D float32) from a whitespace-separated `SYMBOL v1 ... vD` file.

    An optional word2vec header line `N D` is checked against the rows. `.gz` files are
    read compressed.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"gene vector file {path} does not exist: check the path")
    symbols: list[str] = []
    rows: list[np.ndarray] = []
    first_seen: dict[str, int] = {}
    header: tuple[int, int] | None = None
    for line_number, line in _numbered_lines(path):
        words = line.split()
        if not words:
            continue
        if not rows and header is None and _is_header(words):
            header = (int(words[0]), int(words[1]))
            continue
        symbol, vector = _parse_row(words, path, line_number, rows[0].size if rows else None)
        if symbol in first_seen:
            raise DataError(
                f"gene vector file {path} line {line_number}: {symbol!r} already appeared on line "
                f"{first_seen[symbol]}: keep one vector per gene"
            )
        first_seen[symbol] = line_number
        symbols.append(symbol)
        rows.append(vector)
    if not rows:
        raise DataError(f"gene vector file {path} has no vectors: expected lines 'SYMBOL v1 ... vD'")
    vectors = np.stack(rows)
    if header is not None and header != vectors.shape:
        raise DataError(
            f"gene vector file {path} header says {header[0]} x {header[1]} but holds "
            f"{vectors.shape[0]} x {vectors.shape[1]}: the file is truncated or the header is wrong"
        )
    return symbols, vectors


def _numbered_lines(path: Path):
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            yield from enumerate(handle, start=1)
    except (UnicodeDecodeError, OSError) as exc:
        raise DataError(f"gene vector file {path} is not readable text ({type(exc).__name__}): re-export it") from None


def _is_header(words: list[str]) -> bool:
    return len(words) == 2 and all(w.isdigit() for w in words)


def _parse_row(words: list[str], path: Path, line_number: int, dim: int | None) -> tuple[str, np.ndarray]:
    symbol, values = words[0], words[1:]
    if not values or (dim is not None and len(values) != dim):
        expected = f"{dim}" if dim is not None else "at least 1"
        raise DataError(
            f"gene vector file {path} line {line_number}: {symbol!r} has {len(values)} values, expected "
            f"{expected}: every line must be a symbol and the same number of values"
        )
    try:
        vector = np.array(values, dtype=np.float32)
    except ValueError:
        bad = next(v for v in values if not _is_float(v))
        raise DataError(f"gene vector file {path} line {line_number}: {bad!r} is not a number: fix the line") from None
    if not np.isfinite(vector).all():
        raise DataError(f"gene vector file {path} line {line_number}: {symbol!r} has a non-finite value: fix the line")
    return symbol, vector


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def build_gene_vectors(
    data: ConnectomeData,
    kind: str,
    train_regions: np.ndarray,
    *,
    path: str | Path | None = None,
    dim: int = 200,
    seed: int = 0,
) -> GeneVectors:
    """Gene vectors of `kind` for `data`; data-derived kinds look at `train_regions` only."""
    if kind not in KINDS:
        raise DataError(f"unknown gene vector kind {kind!r}: choose one of {', '.join(KINDS)}")
    if kind == "gene2vec":
        return _gene2vec(data, path)
    if int(dim) != dim or dim < 1:
        raise DataError(f"gene vector dim={dim!r}: use a positive integer")
    if kind == "coexpression":
        return _coexpression(data, _checked_regions(train_regions, data), int(dim))
    return _onehot(data, int(dim), seed)


def _gene2vec(data: ConnectomeData, path: str | Path | None) -> GeneVectors:
    if path is None:
        raise DataError("gene vectors 'gene2vec' need a file: give its path (e.g. gene2vec_dim_200_iter_9_w2v.txt)")
    symbols, vectors = read_gene2vec(path)
    row_of = {}
    for row, symbol in enumerate(symbols):
        row_of.setdefault(symbol.upper(), row)
    found = [(g, row_of[name.upper()]) for g, name in enumerate(data.genes) if name.upper() in row_of]
    if not found:
        raise DataError(
            f"none of the {data.n_genes} genes of {data.name!r} (e.g. {data.genes[:3]}) is in {path}: "
            "check that the file uses gene symbols, or choose another kind of gene vectors"
        )
    gene_index, rows = (np.array(column, dtype=np.int64) for column in zip(*found))
    return GeneVectors(
        kind="gene2vec",
        gene_index=gene_index,
        vectors=vectors[rows].astype(np.float32),
        learnable=False,
        overlap={"dataset_genes": data.n_genes, "file_genes": len(symbols), "shared": len(found)},
    )


def _checked_regions(train_regions: np.ndarray, data: ConnectomeData) -> np.ndarray:
    regions = np.unique(np.asarray(train_regions, dtype=np.int64))
    if regions.size < 2 or regions[0] < 0 or regions[-1] >= data.n_regions:
        raise DataError(
            f"train_regions must hold at least 2 region indices in [0, {data.n_regions}), got {regions.size} "
            f"in [{regions.min(initial=0)}, {regions.max(initial=0)}]"
        )
    return regions


def _coexpression(data: ConnectomeData, train_regions: np.ndarray, dim: int) -> GeneVectors:
    """Principal coordinates of the gene-gene correlation matrix over the training regions.

    With X the training expression standardised per gene (n regions x G genes) and
    X = U S V^T, the correlation matrix is V diag(S^2 / (n - 1)) V^T, so the rows of
    V * S / sqrt(n - 1) are gene vectors whose dot products reproduce the correlations.
    Components are kept in order of variance, truncated or zero-padded to `dim`; each
    component's sign is fixed so that its largest-magnitude entry is positive.
    """
    x = data.expression[train_regions].astype(np.float64)
    spread = x.std(axis=0, ddof=1)
    x = (x - x.mean(axis=0)) / np.where(spread > 0, spread, 1.0)
    _, singular, vt = np.linalg.svd(x, full_matrices=False)
    keep = min(dim, int((singular > singular.max(initial=0) * 1e-6).sum()))
    components = vt[:keep].T * (singular[:keep] / np.sqrt(len(train_regions) - 1))  # (G, keep)
    largest = np.abs(components).argmax(axis=0)
    components *= np.sign(components[largest, np.arange(keep)])
    vectors = np.zeros((data.n_genes, dim), dtype=np.float32)
    vectors[:, :keep] = components
    return GeneVectors(
        kind="coexpression",
        gene_index=np.arange(data.n_genes, dtype=np.int64),
        vectors=vectors,
        learnable=False,
        overlap={
            "dataset_genes": data.n_genes,
            "shared": data.n_genes,
            "train_regions": len(train_regions),
            "components": keep,
        },
    )


def _onehot(data: ConnectomeData, dim: int, seed: int) -> GeneVectors:
    rng = np.random.default_rng(seed)
    return GeneVectors(
        kind="onehot",
        gene_index=np.arange(data.n_genes, dtype=np.int64),
        vectors=(rng.standard_normal((data.n_genes, dim)) * ONEHOT_INIT_SCALE).astype(np.float32),
        learnable=True,
        overlap={"dataset_genes": data.n_genes, "shared": data.n_genes},
    )
