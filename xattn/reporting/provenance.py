"""What software wrote a report: xattn's git commit and the versions of the packages a study uses.

Study runs record neither, so these describe the environment the report is written in; for a
report written beside the study that ran, they are the study's.
"""

from __future__ import annotations

import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = ("xattn", "torch", "ray", "optuna", "mlflow", "numpy", "pandas", "plotly")


def package_versions() -> dict[str, str]:
    # Metadata only: importing torch or ray just to read a version would cost seconds.
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def xattn_commit() -> str | None:
    """HEAD of the checkout xattn is imported from, with "+dirty" for uncommitted changes;
    None for an installed copy outside git."""
    source = Path(__file__).resolve().parents[1]
    try:
        head = _git(source, "rev-parse", "HEAD")
        dirty = _git(source, "status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def _git(folder: Path, *args: str) -> str:
    process = subprocess.run(["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=10, check=True)
    return process.stdout.strip()
