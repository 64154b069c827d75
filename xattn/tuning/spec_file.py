"""Reading and checking a study spec: YAML, `--set` overrides, paths relative to the file, the
model families' parameters, and every mistake as one line that names the field and what to do.
"""

from __future__ import annotations

import difflib
import itertools
from importlib.resources import files
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from xattn.data.spec import GENEVEC_KINDS
from xattn.errors import SpecError
from xattn.tuning.spec import ParamSpec, SearchSpec, StudySpec

TRAINER_PARAMS = {
    "learning_rate", "batch_size", "lr_schedule", "cosine_lr", "warmup_steps", "grad_clip", "weight_decay",
    "precision", "max_pairs_per_pass",
}  # fmt: skip
DATA_PARAMS = {"genevec"}


def bundled_spec_names() -> list[str]:
    """The specs shipped inside the package (studies/ in a checkout), by name: quickstart, s100-fc, ..."""
    return sorted(
        entry.name.removesuffix(".yaml") for entry in _bundled_folder().iterdir() if entry.name.endswith(".yaml")
    )


def _bundled_folder():
    return files("xattn") / "specs"


def find_spec_file(path: str | Path) -> Path:
    """`path` when it is a file, or names one (a suffix or a folder in it); else the bundled spec of
    that name, so `xattn study run quickstart` works in an installed copy without a checkout."""
    path = Path(path)
    if path.exists() or path.suffix or len(path.parts) > 1:
        return path
    bundled = _bundled_folder() / f"{path.name}.yaml"
    if bundled.is_file():
        # A wheel installs unzipped, so the bundled spec is a file on disk.
        return Path(str(bundled))
    raise SpecError(
        f"{path}: no such spec file, nor a bundled spec of that name{_did_you_mean(path.name, bundled_spec_names())}; "
        f"give a YAML file, or one of {', '.join(bundled_spec_names())}"
    )


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> StudySpec:
    """Read and validate a spec file (or a bundled spec, by name); every problem becomes a one-line `SpecError`."""
    path = find_spec_file(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError(
            f"{path}: no such spec file; give a YAML file, or a bundled spec's name: {', '.join(bundled_spec_names())}"
        ) from None
    except (OSError, UnicodeDecodeError) as error:
        raise SpecError(f"{path}: cannot read the spec ({error})") from None
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(error, "problem", None) or "malformed YAML"
        raise SpecError(f"{path}: malformed YAML{where}: {problem}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: a study spec must be a YAML mapping with at least `name:`")
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    spec = parse_spec(raw, source=str(path))
    spec.data.resolve_paths(path.parent)
    return spec


def parse_spec(raw: dict[str, Any], source: str = "spec") -> StudySpec:
    try:
        spec = StudySpec.model_validate(raw)
    except ValidationError as error:
        raise SpecError(f"{source}: {_describe(error, raw)}") from None
    check_params(spec, source)
    return spec


def _describe(error: ValidationError, raw: dict) -> str:
    first = error.errors()[0]
    location = ".".join(str(part) if str(part).isprintable() else repr(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        parent = first["loc"][:-1]
        key = str(first["loc"][-1])
        location = location or repr(key)
        allowed = _allowed_keys(parent)
        return f"{location}: unknown key{_did_you_mean(key, allowed)}; allowed here: {', '.join(sorted(allowed))}"
    if first["type"] == "missing":
        return f"{location}: required field is missing"
    message = first["msg"].removeprefix("Value error, ")
    value = first.get("input")
    shown = f" (got {value!r})" if value is not None and not isinstance(value, dict) else ""
    return f"{location}: {message}{shown}"


def _allowed_keys(location: tuple) -> set[str]:
    """The keys the spec accepts at `location`, for near-miss suggestions."""
    model: type[BaseModel] = StudySpec
    parts = [str(part) for part in location]
    while parts:
        part = parts.pop(0)
        if model is SearchSpec and part == "space":
            parts = parts[1:]  # skip the parameter's own name
            model = ParamSpec
            continue
        field = model.model_fields.get(part)
        if field is None:
            break
        nested = [
            c
            for c in (field.annotation, *get_args(field.annotation))
            if isinstance(c, type) and issubclass(c, BaseModel)
        ]
        if not nested:
            break
        model = nested[0]
    return set(model.model_fields)


def _did_you_mean(word: str, options) -> str:
    close = difflib.get_close_matches(word, list(options), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _set_dotted(raw: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise SpecError(f"--set {dotted}: {part} is not a mapping in the spec")
    node[leaf] = value


def check_params(spec: StudySpec, source: str = "spec") -> None:
    """Reject hyperparameters the trainer would choke on, before any trial starts."""
    _check_family_params(spec, source)
    if spec.comparison.nulls is not None and not spec.compare_with:
        raise SpecError(
            f"{source}: comparison.nulls retrains the compared families: add compare_with (e.g. [cge, distance_decay])"
        )
    for family in spec.compare_with:
        # Untuned families train at their fixed settings: they need no space.
        tuned = spec.comparison.tune
        _check_family_params(
            _family_spec(spec, family, source), f"{source}: comparison of {family}", require_space=tuned
        )
    for variant in spec.comparison.variants:
        variant_spec = spec.for_variant(variant)
        _check_family_params(
            variant_spec, f"{source}: comparison.variants.{variant}", require_space=False, fixed_section="override"
        )
    if spec.comparison.reference is not None and spec.comparison.reference not in spec.comparison_arms:
        raise SpecError(
            f"{source}: comparison.reference: {spec.comparison.reference!r} is not an arm of the comparison; "
            f"choose one of {', '.join(spec.comparison_arms)}"
        )


def _family_spec(spec: StudySpec, family: str, source: str) -> StudySpec:
    from xattn.models.registry import MODEL_FAMILIES

    if family not in MODEL_FAMILIES:
        raise SpecError(
            f"{source}: compare_with: unknown model family {family!r}{_did_you_mean(family, MODEL_FAMILIES)}; "
            f"known families: {', '.join(sorted(MODEL_FAMILIES))}"
        )
    if family == spec.model.family:
        raise SpecError(f"{source}: compare_with lists the study's own family {family!r}: list only the others")
    try:
        return spec.for_family(family)
    except ValidationError as error:
        raise SpecError(f"{source}: comparison.baselines.{family}: {_describe(error, {})}") from None


def _check_family_params(
    spec: StudySpec, source: str, *, require_space: bool = True, fixed_section: str = "model.fixed"
) -> None:
    from xattn.models.registry import MODEL_FAMILIES, blind_spot, make_config, model_param_names

    family = spec.model.family
    if family not in MODEL_FAMILIES:
        raise SpecError(
            f"{source}: model.family: unknown model family {family!r}{_did_you_mean(family, MODEL_FAMILIES)}; "
            f"known families: {', '.join(sorted(MODEL_FAMILIES))}"
        )
    known = model_param_names(family) | TRAINER_PARAMS | DATA_PARAMS
    for section, names in ((fixed_section, spec.model.fixed), ("search.space", spec.searched)):
        for name in names:
            if name not in known:
                raise SpecError(
                    f"{source}: {section}.{name}: unknown hyperparameter{_did_you_mean(name, known)}; "
                    f"known: {', '.join(sorted(known))}"
                )
    if require_space and not spec.searched:
        raise SpecError(f"{source}: search.space is empty: add at least one hyperparameter to search")
    overlap = set(spec.model.fixed) & set(spec.searched)
    if overlap:
        raise SpecError(f"{source}: {sorted(overlap)} both fixed and searched: keep each in one place")

    choices = {name: p.candidate_values() for name, p in spec.searched.items() if p.type == "choice"}
    genevec_values = choices.get("genevec", [spec.model.fixed.get("genevec", spec.data.genevec)])
    for value in genevec_values:
        if value not in GENEVEC_KINDS:
            raise SpecError(f"{source}: genevec={value!r} is not one of {', '.join(GENEVEC_KINDS)}")
    if "gene2vec" in genevec_values and spec.data.gene2vec_file is None:
        raise SpecError(f"{source}: genevec 'gene2vec' needs data.gene2vec_file: point it at a Gene2Vec text file")
    for name in ("learning_rate", "batch_size"):
        _check_positive(spec, name, choices, source)

    # Every combination of the searched choices must make a valid model (e.g. d_model % nhead)
    # whose prediction can depend on both regions (e.g. not CLS pooling without query mixing).
    combos = [dict(zip(choices, values)) for values in itertools.islice(itertools.product(*choices.values()), 4096)]
    for combo in combos or [{}]:
        params = spec.trial_params(combo)
        for name, p in spec.searched.items():
            if p.type != "choice":
                params[name] = int(p.low) if p.type in ("int", "logint") else p.low
        try:
            config = make_config(family, params, n_genes=8)
        except SpecError as error:
            where = ", ".join(f"{k}={v}" for k, v in combo.items() if k in ("d_model", "nhead"))
            raise SpecError(
                f"{source}: {error}" + (f" (in the searched combination {where})" if where else "")
            ) from None
        blind = blind_spot(family, config)
        if blind is not None:
            field, why = blind
            where = f"search.space.{field}" if field in spec.searched else f"model.fixed.{field}"
            raise SpecError(
                f"{source}: {where}: {family} with {field}={getattr(config, field)}: {why}; choose another value"
            )


def _check_positive(spec: StudySpec, name: str, choices: dict, source: str) -> None:
    values = choices.get(name) or ([spec.model.fixed[name]] if name in spec.model.fixed else [])
    if name in spec.searched and spec.searched[name].type != "choice":
        values = [spec.searched[name].low]
    for value in values:
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise SpecError(f"{source}: {name}={value!r} must be a positive number")
