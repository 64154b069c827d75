"""Where a command writes: a folder or file it cannot write is refused in one line before any work
starts, so a long computation never ends in a traceback about its output path."""

from __future__ import annotations

import tempfile
from pathlib import Path

from xattn.errors import PathError


def ensure_not_a_file(folder: Path, what: str, fix: str) -> None:
    """A one-line PathError when `folder`, or a folder it would be made in, is a file."""
    blocking = next((path for path in (folder, *folder.parents) if path.is_file()), None)
    if blocking == folder:
        raise PathError(f"{what} {folder} is a file, not a folder: {fix}")
    if blocking is not None:
        raise PathError(f"{what} {folder} cannot be made: {blocking} is a file, not a folder: {fix}")


def ensure_can_create(folder: Path, what: str, fix: str) -> None:
    """A one-line PathError unless `folder` is, or can be made as, a folder this process writes to.

    Nothing is left behind: the probe is a temporary folder in the nearest folder that exists.
    (A permission check would not do: root passes it even where the kernel refuses, as in /proc.)
    """
    folder = Path(folder).expanduser().absolute()
    ensure_not_a_file(folder, what, fix)
    existing = next(path for path in (folder, *folder.parents) if path.exists())
    try:
        Path(tempfile.mkdtemp(prefix=".xattn-write-test-", dir=existing)).rmdir()
    except OSError as error:
        where = "" if existing == folder else f" in {existing}"
        raise PathError(f"{what} {folder} cannot be written{where} ({error.strerror or error}): {fix}") from None
