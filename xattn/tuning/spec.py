"""The study spec: one YAML file that says what to study, validated before anything starts.

Everything a trial needs is in the spec or in the trial's sampled parameters, so a study is
reproducible from (spec, trial config, seed). Validation turns every mistake into one line
that names the field and what to do (`SpecError`), before Ray or any store is touched.
"""

from __future__ import annotations

import difflib
import itertools
import re
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from xattn.data.spec import GENEVEC_KINDS, DataSpec, Strict, Whole
from xattn.errors import SpecError

TRAINER_PARAMS = {
    "learning_rate", "batch_size", "lr_schedule", "cosine_lr", "warmup_steps", "grad_clip", "weight_decay",
    "precision", "max_pairs_per_pass",
}  # fmt: skip
DATA_PARAMS = {"genevec"}


MAX_TRIALS = 100_000
MAX_EPOCHS = 100_000


class ModelSpec(Strict):
    family: str = "cross_attention"
    fixed: dict[str, Any] = Field(default_factory=dict, description="hyperparameters held constant")


class ParamSpec(Strict):
    """One searched hyperparameter. A bare list in YAML means `{type: choice, values: [...]}`."""

    type: Literal["choice", "uniform", "loguniform", "int", "logint"]
    values: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        if self.type == "choice":
            if not self.values:
                raise ValueError("a choice needs a non-empty `values` list")
            if any(isinstance(v, (list, dict)) for v in self.values):
                # Optuna categoricals hold scalars only; lists are encoded as strings.
                self.__dict__["values"] = [_encode_choice(v) for v in self.values]
        else:
            if self.low is None or self.high is None:
                raise ValueError(f"a {self.type} range needs `low` and `high`")
            if not self.low < self.high:
                raise ValueError(f"low={self.low} must be below high={self.high}")
            if self.type.startswith("log") and self.low <= 0:
                raise ValueError(f"a {self.type} range needs low > 0, got {self.low}")
        return self

    def candidate_values(self) -> list[Any] | None:
        """The finite set of values this parameter can take, when it is a choice."""
        if self.type != "choice":
            return None
        return [decode_choice(v) for v in self.values]


class SearchSpec(Strict):
    space: dict[str, ParamSpec] = Field(default_factory=dict)
    metric: Literal["val_loss", "val_pearson"] = "val_loss"
    mode: Literal["min", "max"] | None = None
    scheduler: Literal["asha", "none"] = "asha"
    grace_period: Whole = Field(1, ge=1, description="epochs before ASHA may stop a trial")
    reduction_factor: Whole = Field(2, ge=2)

    @field_validator("space", mode="before")
    @classmethod
    def _expand_lists(cls, space: Any) -> Any:
        if isinstance(space, dict):
            return {k: ({"type": "choice", "values": v} if isinstance(v, list) else v) for k, v in space.items()}
        return space

    @model_validator(mode="after")
    def _default_mode(self) -> SearchSpec:
        if self.mode is None:
            self.__dict__["mode"] = "min" if self.metric == "val_loss" else "max"
        return self


class BudgetSpec(Strict):
    trials: Whole = Field(8, ge=1, le=MAX_TRIALS)
    max_epochs: Whole = Field(10, ge=1, le=MAX_EPOCHS)
    patience_steps: Whole = Field(
        1500, ge=1, description="optimizer steps without a better validation metric before early stopping"
    )
    min_steps: Whole = Field(0, ge=0, description="optimizer steps before early stopping may stop a run")
    max_concurrent: Whole | None = Field(None, ge=1)
    max_failures: Whole = Field(
        1, ge=0, description="retries of a trial that raised; a diverged trial is never retried"
    )


class ResourcesSpec(Strict):
    cpus: float = Field(1, gt=0, description="CPUs per trial")
    gpus: float = Field(0, ge=0, description="GPUs per trial; fractions pack trials on one GPU")


class BaselineSpec(Strict):
    """How one compared family is tuned: its own fixed settings and space (default: search_space.py)."""

    fixed: dict[str, Any] | None = None
    space: dict[str, ParamSpec] | None = None

    _expand_lists = field_validator("space", mode="before")(SearchSpec._expand_lists.__func__)


class NullSpec(Strict):
    """Spatial null models: every compared family retrained on `n` null datasets per fold."""

    method: Literal["spin", "variogram", "shuffle"] = Field(
        "spin", description="spin (sphere rotations) | variogram (brainsmash surrogates) | shuffle (permuted regions)"
    )
    n: Whole = Field(10, ge=1, description="null datasets N; the p-value's resolution is 1 / (N + 1)")


class ComparisonSpec(Strict):
    folds: Whole = Field(4, ge=2, description="outer region folds K of the final runs")
    seeds: Whole = Field(3, ge=1, description="seeds S per fold of the final runs")
    tune: bool = Field(True, description="tune every family with the study's budget; false: fixed settings")
    baselines: dict[str, BaselineSpec] = Field(default_factory=dict)
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="named variants of the study's family: its best configuration with these hyperparameters "
        "overridden, each retrained on the same folds and seeds (arm 'family:name')",
    )
    reference: str | None = Field(
        None, description="the arm the paired differences are taken from (default: the study's family)"
    )

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, variants: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, overrides in variants.items():
            if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
                raise ValueError(f"variant name {name!r} must be letters, digits, '.', '_' or '-'")
            if not isinstance(overrides, dict) or not overrides:
                raise ValueError(
                    f"variant {name!r} needs a mapping of hyperparameters to override, like {{bidirectional: true}}"
                )
        return variants

    nulls: NullSpec | None = Field(None, description="retrain every family on spatial nulls of the expression")


class StudySpec(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    seed: Whole = 0
    data: DataSpec = DataSpec()
    model: ModelSpec = ModelSpec()
    search: SearchSpec = SearchSpec()
    budget: BudgetSpec = BudgetSpec()
    resources: ResourcesSpec = ResourcesSpec()
    compare_with: list[str] = Field(default_factory=list, description="families to compare; 'all_baselines' for all")
    comparison: ComparisonSpec = ComparisonSpec()

    @field_validator("compare_with", mode="before")
    @classmethod
    def _preset(cls, value: Any) -> Any:
        from xattn.tuning.search_space import BASELINES

        if value == "all_baselines" or value == ["all_baselines"]:
            return list(BASELINES)
        return value

    def for_family(self, family: str) -> StudySpec:
        """The same study (data, split, budget, seed) for another model family."""
        from xattn.tuning.search_space import DEFAULT_FIXED, DEFAULT_SPACES

        if family == self.model.family:
            return self
        override = self.comparison.baselines.get(family, BaselineSpec())
        space = override.space if override.space is not None else DEFAULT_SPACES.get(family, {})
        fixed = override.fixed if override.fixed is not None else DEFAULT_FIXED.get(family, {})
        if override.fixed is None:  # what the spec's own space searches is no longer fixed by default
            fixed = {k: v for k, v in fixed.items() if k not in space}
        elif override.space is None:  # and what it fixes is no longer searched by default
            space = {k: v for k, v in space.items() if k not in fixed}
        raw = self.model_dump(mode="json", exclude={"compare_with", "comparison"})
        raw["model"] = {"family": family, "fixed": dict(fixed)}
        raw["search"]["space"] = {
            k: (v.model_dump(exclude_none=True) if isinstance(v, ParamSpec) else v) for k, v in space.items()
        }
        return StudySpec.model_validate(raw)

    def for_variant(self, variant: str) -> StudySpec:
        """The study's own family with variant `variant`'s hyperparameters fixed (and no longer searched)."""
        overrides = self.comparison.variants[variant]
        raw = self.model_dump(mode="json", exclude={"compare_with", "comparison"})
        raw["model"]["fixed"] = {**raw["model"]["fixed"], **overrides}
        raw["search"]["space"] = {k: v for k, v in raw["search"]["space"].items() if k not in overrides}
        return StudySpec.model_validate(raw)

    @property
    def comparison_arms(self) -> list[str]:
        """What the comparison retrains and compares: the study's family, the compared families
        and the variants of the study's family ("family:variant")."""
        from xattn.tuning.comparison import variant_arm

        variants = [variant_arm(self.model.family, name) for name in self.comparison.variants]
        return [self.model.family, *self.compare_with, *variants]

    @property
    def compares(self) -> bool:
        """Whether the study ends with a comparison (compared families or variants)."""
        return bool(self.compare_with or self.comparison.variants)

    @property
    def comparison_reference(self) -> str:
        return self.comparison.reference or self.model.family

    @property
    def searched(self) -> dict[str, ParamSpec]:
        return self.search.space

    @property
    def search_trials(self) -> int:
        """Trials the search runs: one per configuration, or one per inner fold of each."""
        return self.budget.trials * (self.data.split.inner_folds or 1)

    def notes(self) -> list[str]:
        """What a user should know about this study before spending compute on it."""
        notes = []
        inner = self.data.split.inner_folds
        if inner:
            notes.append(
                f"each of the {self.budget.trials} configurations trains on {inner} inner folds "
                f"({self.budget.trials * inner} trials) and is ranked by their mean"
                + (
                    "; ASHA is off, since stopping some folds early would skew the mean"
                    if self.search.scheduler == "asha"
                    else ""
                )
            )
        nulls = self.comparison.nulls
        if nulls is not None and self.compare_with:
            families = 1 + len(self.compare_with)
            per_family = nulls.n * self.comparison.folds * self.comparison.seeds
            notes.append(
                f"the null comparison retrains {families} families on {nulls.n} {nulls.method} nulls x "
                f"{self.comparison.folds} folds x {self.comparison.seeds} seeds: {families * per_family} runs, "
                f"{nulls.n} times the {families * self.comparison.folds * self.comparison.seeds} final runs"
            )
        return notes

    def trial_params(self, sampled: dict[str, Any]) -> dict[str, Any]:
        """The full hyperparameters of one trial: the spec's fixed values, then the sampled ones."""
        params = {"genevec": self.data.genevec, **self.model.fixed}
        params.update({k: decode_choice(v) for k, v in sampled.items()})
        return params


def _encode_choice(value: Any) -> Any:
    return yaml.safe_dump(value, default_flow_style=True).strip() if isinstance(value, (list, dict)) else value


def decode_choice(value: Any) -> Any:
    """Undo `_encode_choice`: `"[512, 256]"` (a list stored as an Optuna categorical) back to a list."""
    if isinstance(value, str) and value[:1] in "[{":
        return yaml.safe_load(value)
    return value


def spec_from_yaml(text: str) -> StudySpec:
    """A spec as a study run stored it (already validated and with absolute paths)."""
    return StudySpec.model_validate(yaml.safe_load(text))


def load_spec(path: str | Path, overrides: dict[str, Any] | None = None) -> StudySpec:
    """Read and validate a spec file; every problem becomes a one-line `SpecError`."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SpecError(f"{path}: no such spec file; see studies/ for examples") from None
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
