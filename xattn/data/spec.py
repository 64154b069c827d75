"""The data part of a study spec: which dataset or files, which genes, how regions are split.

Validated with the rest of the spec (xattn.tuning.spec) before anything runs; read by
xattn.experiment to load and split the data of a trial.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

GENEVEC_KINDS = ("gene2vec", "coexpression", "onehot")


def whole_number(value: Any) -> Any:
    """1e9 and "1e9" as 1000000000: YAML reads scientific notation without a dot as text."""
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return value
        return int(number) if number.is_integer() else value
    return value


Whole = Annotated[int, BeforeValidator(whole_number)]


class Strict(BaseModel):
    """A spec section: unknown fields are errors, and assignments are validated too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SplitSpec(Strict):
    """Regions, not pairs, are split: every pair has both regions in one set."""

    method: Literal["random", "spatial"] = Field(
        "random", description="random folds, or spatially coherent patches (balanced k-means on the coordinates)"
    )
    folds: Whole = Field(5, ge=2, description="number of region folds (K)")
    fold: Whole = Field(0, ge=0, description="which fold is the test set")
    val_fraction: float = Field(0.2, gt=0, le=0.5, description="share of training regions held out for validation")
    inner_folds: Whole = Field(
        0,
        ge=0,
        description="0: search on one validation set; K >= 2: each trial on K inner folds, ranked by their mean",
    )

    @model_validator(mode="after")
    def _fold_in_range(self) -> SplitSpec:
        if self.fold >= self.folds:
            raise ValueError(f"fold={self.fold} but there are only {self.folds} folds (0..{self.folds - 1})")
        if self.inner_folds == 1:
            raise ValueError("inner_folds=1 is not cross-validation: use 0 (one validation set) or 2 or more")
        return self


class TopVarianceSpec(Strict):
    top_variance: Whole = Field(ge=1, description="the N genes that vary most across the training regions")


class GeneFileSpec(Strict):
    file: Path = Field(description="a gene list: one symbol a line (relative to the spec)")


class FilesSpec(Strict):
    """Your own data: CSV files aligned by region label, paths relative to the spec."""

    expression: Path = Field(description="a label column, then one column per gene, values in [0, 1]")
    connectivity: Path = Field(description="a square region x region matrix, with or without a header")
    coords: Path | None = Field(None, description="x, y, z of each region; without them spatial folds are refused")


class SyntheticSpec(Strict):
    """A seeded connectome whose connectivity is a known function of distance and expression similarity."""

    regions: Whole = Field(64, ge=8, description="regions generated")
    genes: Whole = Field(32, ge=2, description="genes generated")
    noise: float = Field(0.1, ge=0, description="sd of the noise added to connectivity")
    similarity: float = Field(0.5, description="weight beta of the expression-similarity term; 0: distance only")
    seed: Whole = Field(0, description="seeds the generator (independent of the study's seed)")


class DataSpec(Strict):
    """Which data a study reads, which genes, how its regions are split (docs/data.md)."""

    dataset: str | None = Field("synthetic", description="a named dataset (xattn data list), or null with `files`")
    files: FilesSpec | None = Field(None, description="your own CSV files instead of a named dataset")
    synthetic: SyntheticSpec = Field(SyntheticSpec(), description="options of the `synthetic` dataset")
    split: SplitSpec = Field(SplitSpec(), description="how regions are split into test, validation and training")
    genes: Literal["all"] | TopVarianceSpec | GeneFileSpec = Field(
        "all", description="all | {top_variance: N} (ranked on training regions) | {file: PATH}"
    )
    genevec: Literal["gene2vec", "coexpression", "onehot"] = Field(
        "coexpression",
        description="each gene's identity vector: co-expression over the training regions, Gene2Vec (needs "
        "gene2vec_file) or one-hot",
    )
    gene2vec_file: Path | None = Field(None, description="a Gene2Vec text file (relative to the spec)")

    @field_validator("genes", mode="before")
    @classmethod
    def _gene_selection(cls, value: Any) -> Any:
        # One message for every malformed selection, instead of one per member of the union.
        usage = "use all, {top_variance: N} or {file: PATH}"
        if value == "all" or isinstance(value, (TopVarianceSpec, GeneFileSpec)):
            return value
        if isinstance(value, dict) and list(value) == ["top_variance"]:
            n = value["top_variance"]
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"top_variance must be a whole number >= 1, got {n!r}")
            return TopVarianceSpec(top_variance=n)
        if isinstance(value, dict) and list(value) == ["file"] and isinstance(value["file"], (str, Path)):
            return GeneFileSpec(file=value["file"])
        raise ValueError(f"{value!r} is not a gene selection: {usage}")

    @model_validator(mode="after")
    def _one_source(self) -> DataSpec:
        if self.files is not None and self.dataset not in (None, "synthetic"):
            raise ValueError("give either `dataset` or `files`, not both")
        if self.files is not None:
            self.__dict__["dataset"] = None
        return self

    def resolve_paths(self, base: Path) -> None:
        """Make the paths relative to `base` (the spec file's folder), as users expect when they copy a spec."""

        def resolve(p: Path | None) -> Path | None:
            if p is None or p.is_absolute():
                return p
            return (base / p).resolve() if (base / p).exists() or not p.exists() else p.resolve()

        if self.files is not None:
            self.files = FilesSpec(
                expression=resolve(self.files.expression),
                connectivity=resolve(self.files.connectivity),
                coords=resolve(self.files.coords),
            )
        if self.gene2vec_file is not None:
            self.gene2vec_file = resolve(self.gene2vec_file)
        if isinstance(self.genes, GeneFileSpec):
            self.genes = GeneFileSpec(file=resolve(self.genes.file))
