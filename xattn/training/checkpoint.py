"""Checkpoints as plain files: safetensors weights + a JSON config (+ optimizer state).

A checkpoint directory holds

    weights.safetensors   model.state_dict() (no pickle, loadable from any language;
                          tied weights stored once, aliases listed in its metadata)
    config.json           {"family", "config", **extra, "checkpoint": {"format", "files"}}
    optimizer.pt          optional optimizer.state_dict(), read with weights_only=True

`config.json` is written last and records the SHA-256 of the other files, so it is the
commit record: a loader never mixes weights from one save with a config from another,
and a truncated or foreign file is reported instead of half-loaded. Every file is
written to a temporary name and moved into place with os.replace, so a crash leaves
either the previous checkpoint or the new one, never a half-written file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import safetensors.torch
import torch
from torch import Tensor, nn

from xattn.errors import DataError, one_line

WEIGHTS = "weights.safetensors"
CONFIG = "config.json"
OPTIMIZER = "optimizer.pt"
FORMAT = 1
RESERVED_KEYS = ("family", "config", "checkpoint")
CHECKPOINT_FILES = (CONFIG, WEIGHTS)  # what rebuilds the model; optimizer.pt only resumes
ALIASES_KEY = "xattn.aliases"  # safetensors metadata: {alias: stored name} of tied weights


def save_checkpoint(
    directory: str | os.PathLike,
    model: nn.Module,
    *,
    extra: dict[str, Any] | None = None,
    optimizer_state: dict | None = None,
    describe: Callable[[nn.Module], dict] | None = None,
) -> Path:
    """Write `model` (and optionally its optimizer state) into `directory`; return it.

    `extra` goes into config.json next to the model's family and config: whatever is
    needed to reproduce the logged metrics (data spec, split, normalisation stats, trial
    params, epoch). numpy values in it are converted to JSON numbers and lists.
    `describe` gives the model's {"family", "config"} and defaults to
    xattn.models.registry.model_to_dict. Other files in `directory` are left alone; a
    stale optimizer.pt is removed when none is given.
    """
    directory = Path(directory)
    extra = dict(extra or {})
    clashes = sorted(set(RESERVED_KEYS) & extra.keys())
    if clashes:
        raise ValueError(f"extra may not use the reserved key(s) {', '.join(clashes)}")
    described = (describe or _registry_model_to_dict)(model)
    document = {"family": described["family"], "config": described["config"], **extra}
    directory.mkdir(parents=True, exist_ok=True)

    staged: dict[str, Path] = {}
    try:
        tensors, aliases = _weights_to_save(model)
        metadata = {ALIASES_KEY: json.dumps(aliases)}
        staged[WEIGHTS] = _stage(directory, WEIGHTS, lambda path: safetensors.torch.save_file(tensors, path, metadata))
        if optimizer_state is not None:
            staged[OPTIMIZER] = _stage(directory, OPTIMIZER, lambda path: torch.save(optimizer_state, path))
        hashes = {name: file_sha256(path) for name, path in staged.items()}
        document["checkpoint"] = {"format": FORMAT, "files": hashes}
        text = json.dumps(document, indent=2, default=_json_default)
        staged[CONFIG] = _stage(directory, CONFIG, lambda path: path.write_text(text + "\n"))
        for name in (WEIGHTS, OPTIMIZER, CONFIG):  # config last: it commits the save
            if name in staged:
                os.replace(staged.pop(name), directory / name)
    finally:
        for path in staged.values():
            path.unlink(missing_ok=True)
    if optimizer_state is None:
        (directory / OPTIMIZER).unlink(missing_ok=True)
    return directory


def load_checkpoint(
    directory: str | os.PathLike,
    *,
    device: str | torch.device = "cpu",
    build: Callable[[dict], nn.Module] | None = None,
) -> tuple[nn.Module, dict]:
    """Rebuild the model saved in `directory`; return it (in eval mode) and config.json.

    `build` turns {"family", "config"} into a freshly initialised model and defaults to
    xattn.models.registry.model_from_dict. Weights load strictly (every key, every
    shape). Missing, corrupt or mismatched files raise DataError naming the file.
    """
    directory = Path(directory)
    document = read_checkpoint_config(directory)
    model = (build or _registry_model_from_dict)({"family": document["family"], "config": document["config"]})
    _load_weights(directory, model, document)
    return model.to(device).eval(), document


def load_checkpoint_weights(directory: str | os.PathLike, model: nn.Module) -> int:
    """Load the saved weights into an existing `model` (strict); return the saved epoch.

    For resuming a trial whose model the caller has already built (e.g. with data-given
    gene vectors). The epoch is `extra["epoch"]` as passed to save_checkpoint, 0 if absent.
    """
    directory = Path(directory)
    document = read_checkpoint_config(directory)
    _load_weights(directory, model, document)
    return int(document.get("epoch", 0))


def load_optimizer_state(directory: str | os.PathLike, *, device: str | torch.device = "cpu") -> dict | None:
    """The optimizer state saved with the checkpoint, or None if it was saved without one.

    Loaded with `weights_only=True`: tensors and plain containers only, never arbitrary
    pickled objects, so a checkpoint from elsewhere cannot run code.
    """
    directory = Path(directory)
    document = read_checkpoint_config(directory)
    recorded = document.get("checkpoint", {}).get("files")
    if recorded is not None and OPTIMIZER not in recorded:
        return None
    if recorded is None and not (directory / OPTIMIZER).exists():
        return None
    path = _verified_file(directory, OPTIMIZER, document)
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as error:  # UnpicklingError, EOFError, RuntimeError ...
        raise DataError(f"{path}: not a readable optimizer state ({one_line(error)})") from None


def read_checkpoint_config(directory: str | os.PathLike) -> dict:
    """config.json of a checkpoint, checked for the keys every loader needs."""
    path = Path(directory) / CONFIG
    if not path.is_file():
        raise DataError(f"{path}: checkpoint config is missing")
    try:
        document = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: not readable JSON ({one_line(error)})") from None
    if not isinstance(document, dict) or not {"family", "config"} <= document.keys():
        raise DataError(f"{path}: expected keys 'family' and 'config'")
    return document


def _load_weights(directory: Path, model: nn.Module, document: dict) -> None:
    weights = _verified_file(directory, WEIGHTS, document)
    try:
        model.load_state_dict(_read_weights(weights), strict=True)
    except Exception as error:  # safetensors' header errors, torch's key/shape errors
        raise DataError(f"{weights}: cannot load into a {document['family']} model ({one_line(error)})") from None


def _weights_to_save(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, str]]:
    """The state dict as safetensors accepts it, plus {alias: stored name} for tied weights.

    safetensors refuses tensors that share memory and views that do not cover their
    storage (its own save_model helper too), so every tensor is stored as a contiguous
    copy, and a name that is the very same view as an earlier one (tied weights) is
    recorded as an alias instead of being stored twice.
    """
    tensors: dict[str, Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, tensor in model.state_dict().items():
        view = (tensor.device, tensor.dtype, tensor.untyped_storage().data_ptr(), tensor.storage_offset(),
                tuple(tensor.shape), tensor.stride())  # fmt: skip
        if view in seen and tensor.numel() > 0:
            aliases[name] = seen[view]
        else:
            seen[view] = name
            tensors[name] = tensor.detach().clone(memory_format=torch.contiguous_format)
    return tensors, aliases


def _read_weights(path: Path) -> dict[str, Tensor]:
    """A state dict from a safetensors file written by `save_checkpoint` (aliases restored)."""
    with safetensors.safe_open(path, framework="pt") as file:
        state = {name: file.get_tensor(name) for name in file.keys()}
        aliases = json.loads((file.metadata() or {}).get(ALIASES_KEY, "{}"))
    state.update({alias: state[stored] for alias, stored in aliases.items()})
    return state


def _stage(directory: Path, name: str, write: Callable[[Path], Any]) -> Path:
    """Write a file under a hidden temporary name in `directory`, flushed to disk."""
    handle, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory)
    os.close(handle)
    path = Path(temporary)
    try:
        write(path)
        with open(path, "rb") as written:
            os.fsync(written.fileno())
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def _verified_file(directory: Path, name: str, document: dict) -> Path:
    """Path of `name`, checked to exist and to match the hash recorded in config.json."""
    path = directory / name
    if not path.is_file():
        raise DataError(f"{path}: checkpoint file is missing")
    expected = document.get("checkpoint", {}).get("files", {}).get(name)
    if expected is not None and file_sha256(path) != expected:
        raise DataError(f"{path}: does not match {CONFIG} (corrupt, or left by an interrupted save)")
    return path


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _json_default(value: Any) -> Any:
    """JSON for the numpy values and paths that turn up in `extra`."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"cannot store a {type(value).__name__} in {CONFIG}")


def _registry_model_to_dict(model: nn.Module) -> dict:
    from xattn.models.registry import model_to_dict

    return model_to_dict(model)


def _registry_model_from_dict(spec: dict) -> nn.Module:
    from xattn.models.registry import model_from_dict

    return model_from_dict(spec)
