"""The spec's search space as Optuna distributions, the form Ray's OptunaSearch samples from.

Changing what is searched means editing a spec's `search.space`, never the trainer.
"""

from __future__ import annotations

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from xattn.tuning.spec import ParamSpec


def to_distribution(param: ParamSpec) -> BaseDistribution:
    if param.type == "choice":
        return CategoricalDistribution(param.values)
    if param.type in ("int", "logint"):
        step = int(param.step or 1) if param.type == "int" else 1
        return IntDistribution(int(param.low), int(param.high), log=param.type == "logint", step=step)
    return FloatDistribution(param.low, param.high, log=param.type == "loguniform", step=param.step)


def optuna_space(space: dict[str, ParamSpec]) -> dict[str, BaseDistribution]:
    return {name: to_distribution(param) for name, param in space.items()}
