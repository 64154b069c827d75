"""What software a study ran with: xattn's git commit and the versions of the packages it uses.

It lives at the bottom of the layers: the study driver records it on every run it writes
(tracking, tuning), and a report shows it.
"""

from __future__ import annotations

import platform
import subprocess
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = ("xattn", "torch", "ray", "optuna", "mlflow", "numpy", "pandas", "plotly")
RECORDED_PACKAGES = ("xattn", "torch", "ray", "optuna", "mlflow")  # whose versions every run records, with Python's
UNKNOWN = "unknown"


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Python's version and each package's, "not installed" for a missing one."""
    # Metadata only: importing torch or ray just to read a version would cost seconds.
    versions = {"python": platform.python_version()}
    for package in packages:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


@dataclass(frozen=True)
class Commit:
    """The commit of the checkout xattn is imported from; `sha` UNKNOWN for an installed copy."""

    sha: str
    dirty: bool | None  # uncommitted changes to tracked files; None where unknown

    def __str__(self) -> str:
        return self.sha + ("+dirty" if self.dirty else "")


def xattn_commit() -> Commit:
    """HEAD of the checkout xattn is imported from, and whether its tracked files changed, in one
    `git` call; UNKNOWN for a copy installed from a wheel, or where git is missing or fails.

    Only a checkout whose root holds the package counts: a wheel installed in a virtual
    environment inside some other repository must not report that repository's commit."""
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():  # a folder in a clone, a file in a worktree
        return Commit(UNKNOWN, None)
    try:
        process = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain=v2", "--branch", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return Commit(UNKNOWN, None)
    lines = process.stdout.splitlines()
    sha = next((line.split()[2] for line in lines if line.startswith("# branch.oid ")), UNKNOWN)
    if sha == "(initial)":  # a repository without commits
        sha = UNKNOWN
    return Commit(sha, any(not line.startswith("#") for line in lines))
