"""What a study's trials trained on, as rows for the report: the dataset, its pinned files and
their sources, the genes, the split and the gene vectors, read from the study's spec."""

from __future__ import annotations

from typing import Any


def data_context(spec) -> dict[str, Any]:
    """{"rows": [(name, text)], "files": [{"path", "sha256", "source"}]} of `spec.data`."""
    from xattn.data.datasets import DATASETS, REGISTRY, UPSTREAM

    data = spec.data
    split = data.split
    genes = data.genes
    if genes == "all":
        gene_text = "all genes of the dataset"
    elif hasattr(genes, "top_variance"):
        gene_text = f"the {genes.top_variance} genes that vary most across the training regions"
    else:
        gene_text = f"the genes listed in {genes.file}"
    rows = [("dataset", data.dataset or "user files")]
    files = []
    info = DATASETS.get(data.dataset or "")
    if info is not None:
        rows.append(("description", info.description))
        rows.append(
            (
                "regions x genes",
                f"{info.regions} x {info.genes}"
                if data.dataset != "synthetic"
                else f"{data.synthetic.regions} x {data.synthetic.genes}",
            )
        )
        for relative in info.files:
            folder, _, inside = relative.partition("/")
            repository, commit = UPSTREAM.get(folder, ("", ""))
            files.append(
                {
                    "path": relative,
                    "sha256": REGISTRY.get(relative, ""),
                    "source": f"{repository}@{commit[:12]}" if repository else "",
                }
            )
    if data.dataset == "synthetic":
        synthetic = data.synthetic
        rows.append(
            (
                "generator",
                f"regions {synthetic.regions}, genes {synthetic.genes}, noise {synthetic.noise}, seed {synthetic.seed}",
            )
        )
    if data.files is not None:
        for part in ("expression", "connectivity", "coords"):
            path = getattr(data.files, part)
            if path is not None:
                files.append({"path": f"{part}: {path}", "sha256": "", "source": "user file"})
    rows += [
        ("genes", gene_text),
        (
            "split",
            f"{split.method}, {split.folds} region folds, test fold {split.fold}, "
            f"validation {split.val_fraction:g} of the training regions"
            + (f", {split.inner_folds} inner folds per trial" if split.inner_folds else ""),
        ),
        ("gene vectors", data.genevec + (f" ({data.gene2vec_file})" if data.gene2vec_file else "")),
        ("seed", str(spec.seed)),
    ]
    return {"rows": rows, "files": files}
