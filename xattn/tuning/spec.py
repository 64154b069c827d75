"""The study spec: one YAML file that says what to study, validated before anything starts.

Everything a trial needs is in the spec or in the trial's sampled parameters, so a study is
reproducible from (spec, trial config, seed). Validation turns every mistake into one line
that names the field and what to do (`SpecError`), before Ray or any store is touched.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from xattn.data.spec import DataSpec, Strict, Whole

MAX_TRIALS = 100_000
MAX_EPOCHS = 100_000


class ModelSpec(Strict):
    """Which model family a study searches, and the hyperparameters it holds constant."""

    family: str = Field(
        "cross_attention",
        description="the model family (xattn/models/registry.py): cross_attention, shared_self_attention, "
        "shared_self_attention_pooling, shared_self_attention_gene2vec, mlp, distance_decay, cge, bilinear_lowrank",
    )
    fixed: dict[str, Any] = Field(default_factory=dict, description="hyperparameters held constant")


class ParamSpec(Strict):
    """One searched hyperparameter. A bare list in YAML means `{type: choice, values: [...]}`."""

    type: Literal["choice", "uniform", "loguniform", "int", "logint"] = Field(
        description="choice: one of `values`; uniform, loguniform: numbers from low to high; int, logint: whole numbers"
    )
    values: list[Any] | None = Field(None, description="the values a choice picks from (lists allowed)")
    low: float | None = Field(None, description="lowest value of a range (above 0 for the log ranges)")
    high: float | None = Field(None, description="highest value of a range")
    step: float | None = Field(None, description="spacing of a range's values (int and uniform only)")

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
    """What Optuna searches and how Ray Tune stops trials early."""

    space: dict[str, ParamSpec] = Field(
        default_factory=dict,
        description="hyperparameter name to its range; a list is a choice (docs/specs.md lists the names)",
    )
    metric: Literal["val_loss", "val_pearson"] = Field(
        "val_loss",
        description="what the search ranks trials by; also what early stopping, the plateau schedule and the best "
        "checkpoint watch",
    )
    mode: Literal["min", "max"] | None = Field(None, description="default: min for val_loss, max for val_pearson")
    scheduler: Literal["asha", "none"] = Field("asha", description="asha stops unpromising trials early; none runs all")
    grace_period: Whole = Field(1, ge=1, description="epochs before ASHA may stop a trial")
    reduction_factor: Whole = Field(2, ge=2, description="ASHA keeps 1 in this many trials at each rung")

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
    """How much a study trains: trials, epochs, early stopping, retries."""

    trials: Whole = Field(8, ge=1, le=MAX_TRIALS, description="trials the search runs (per family and outer fold)")
    max_epochs: Whole = Field(10, ge=1, le=MAX_EPOCHS, description="epochs a trial trains at most")
    patience_steps: Whole = Field(
        1500, ge=1, description="optimizer steps without a better validation metric before early stopping"
    )
    min_steps: Whole = Field(0, ge=0, description="optimizer steps before early stopping may stop a run")
    max_concurrent: Whole | None = Field(
        None, ge=1, description="trials at once (default: as many as the cluster's CPUs and GPUs hold)"
    )
    max_failures: Whole = Field(
        1, ge=0, description="retries of a trial that raised; a diverged trial is never retried"
    )


class ResourcesSpec(Strict):
    """What one trial asks Ray for."""

    cpus: float = Field(1, gt=0, description="CPUs per trial")
    gpus: float = Field(0, ge=0, description="GPUs per trial; fractions pack trials on one GPU")
    require_gpu: bool = Field(
        False, description="refuse to start when a trial asking for GPUs would find no CUDA device (else: train on CPU)"
    )


class BaselineSpec(Strict):
    """How one compared family is tuned: its own fixed settings and space (default: search_space.py)."""

    fixed: dict[str, Any] | None = Field(None, description="added to, and overriding, the family's default settings")
    space: dict[str, ParamSpec] | None = Field(
        None, description="replaces the family's default space; what `fixed` sets is no longer searched"
    )

    _expand_lists = field_validator("space", mode="before")(SearchSpec._expand_lists.__func__)


class NullSpec(Strict):
    """Spatial null models: every compared family retrained on `n` null datasets, each one map
    of the expression scored over every outer fold (xattn.data.nulls)."""

    method: Literal["msr", "spin", "variogram", "shuffle"] = Field(
        "msr",
        description="msr (sign flips in the eigenbasis of a fitted spatial covariance; calibrated) | spin (sphere "
        "rotations) | variogram (brainsmash surrogates) | shuffle (permuted regions)",
    )
    n: Whole = Field(
        99, ge=1, description="null datasets N; the smallest p is 1 / (N + 1): 0.01 at N = 99, 0.05 at N = 19"
    )
    n_by_family: dict[str, Whole] = Field(
        default_factory=dict,
        description="N for these families instead of `n` (19 still reaches p = 0.05: for the slow attention baselines)",
    )

    def n_for(self, family: str) -> int:
        return int(self.n_by_family.get(family, self.n))


class ComparisonSpec(Strict):
    """With `compare_with`: nested selection on K outer region folds, S seeds each, paired differences."""

    folds: Whole = Field(
        4, ge=2, description="outer region folds K: each searches on its own non-test regions (nested), then its finals"
    )
    seeds: Whole = Field(3, ge=1, description="seeds S per fold of the final runs")
    tune: bool = Field(True, description="tune every family with the study's budget; false: fixed settings")
    baselines: dict[str, BaselineSpec] = Field(
        default_factory=dict,
        description="per compared family: its fixed settings and space (xattn/tuning/search_space.py)",
    )
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
    """A study: one YAML file."""

    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="the study, its MLflow experiment and registered model; letters, digits, '.', '_', '-'",
    )
    description: str = Field("", description="shown on the MLflow experiment and the study run")
    seed: Whole = Field(0, description="seeds the split, initialisation, shuffling and Optuna's sampler")
    data: DataSpec = Field(DataSpec(), description="which data, which genes, how regions are split")
    model: ModelSpec = Field(ModelSpec(), description="the model family and its fixed hyperparameters")
    search: SearchSpec = Field(SearchSpec(), description="the search space, its metric and early stopping")
    budget: BudgetSpec = Field(BudgetSpec(), description="trials, epochs, early stopping, retries")
    resources: ResourcesSpec = Field(ResourcesSpec(), description="CPUs and GPUs per trial")
    compare_with: list[str] = Field(default_factory=list, description="families to compare; 'all_baselines' for all")
    comparison: ComparisonSpec = Field(
        ComparisonSpec(), description="how the families of `compare_with` are compared (docs/comparisons.md)"
    )

    @field_validator("compare_with", mode="before")
    @classmethod
    def _preset(cls, value: Any) -> Any:
        from xattn.tuning.search_space import BASELINES

        if value == "all_baselines" or value == ["all_baselines"]:
            return list(BASELINES)
        return value

    @model_validator(mode="after")
    def _nulls_of_compared_families(self) -> StudySpec:
        nulls = self.comparison.nulls
        unknown = sorted(set(nulls.n_by_family) - {self.model.family, *self.compare_with}) if nulls else []
        if unknown:
            raise ValueError(
                f"comparison.nulls.n_by_family names {', '.join(unknown)}, which the study does not compare"
            )
        return self

    def for_family(self, family: str) -> StudySpec:
        """The same study (data, split, budget, seed) for another model family.

        Its settings are the family's defaults (xattn/tuning/search_space.py) with the spec's
        `comparison.baselines.<family>` on top: `fixed` adds to and overrides the default fixed
        settings, `space` replaces the default space; what one fixes the other no longer
        searches, and what the space searches is no longer fixed."""
        from xattn.tuning.search_space import DEFAULT_FIXED, DEFAULT_SPACES

        if family == self.model.family:
            return self
        override = self.comparison.baselines.get(family, BaselineSpec())
        space = override.space if override.space is not None else DEFAULT_SPACES.get(family, {})
        space = {k: v for k, v in space.items() if k not in (override.fixed or {})}
        fixed = {**DEFAULT_FIXED.get(family, {}), **(override.fixed or {})}
        fixed = {k: v for k, v in fixed.items() if k not in space}
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
        if self.compares:
            searched = 1 + (len(self.compare_with) if self.comparison.tune else 0)
            k = self.comparison.folds
            notes.append(
                f"nested selection: {searched} {'families search' if searched > 1 else 'family searches'} each of "
                f"the {k} outer folds on its non-test regions ({self.search_trials} trials a fold, "
                f"{searched * k * self.search_trials} in all), then {self.model.family} searches all regions "
                f"({self.search_trials} trials) and its selection is refit on all regions as the deployed model"
            )
        nulls = self.comparison.nulls
        if nulls is not None and self.compare_with:
            families = [self.model.family, *self.compare_with]
            cells = self.comparison.folds * self.comparison.seeds
            runs = sum(nulls.n_for(family) for family in families) * cells
            counts = sorted({nulls.n_for(family) for family in families}, reverse=True)
            notes.append(
                f"the null comparison retrains {len(families)} families on {' or '.join(map(str, counts))} "
                f"{nulls.method} nulls x {self.comparison.folds} folds x {self.comparison.seeds} seeds: {runs} runs"
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
