"""One line per finished trial, so a user watching a long study sees it move."""

from __future__ import annotations

from typing import Any

from ray.tune import Callback
from rich.console import Console


class TrialProgress(Callback):
    def __init__(self, console: Console, total: int, metric: str, mode: str) -> None:
        self.console = console
        self.total = total
        self.metric = metric
        self.mode = mode
        self.done = 0
        self.best: float | None = None

    def start_phase(self, title: str, total: int, metric: str, mode: str) -> None:
        """A study with `compare_with` runs several phases; count each one's trials afresh."""
        self.console.print(f"[bold]{title}[/]: {total} trials", highlight=False)
        self.total, self.done, self.best = total, 0, None
        self.metric, self.mode = metric, mode

    def __getstate__(self) -> dict:
        # Ray Tune pickles its callbacks with the experiment state; a console holds locks.
        return {k: v for k, v in self.__dict__.items() if k != "console"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, console=Console())

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        params = ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(trial.config.items()))
        self.console.print(f"[dim]started  {trial.trial_id}: {params}[/]", highlight=False)

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._line(trial, "finished", "green")

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        self._line(trial, "FAILED", "red")

    def _line(self, trial, state: str, colour: str) -> None:
        self.done += 1
        result = trial.last_result or {}
        value = result.get(self.metric)
        if value is not None and (
            self.best is None or (value < self.best if self.mode == "min" else value > self.best)
        ):
            self.best = value
        shown = f"{self.metric}={value:.4f}" if value is not None else "no result"
        best = f"best {self.best:.4f}" if self.best is not None else ""
        epochs = result.get("epoch", 0)
        self.console.print(
            f"[{colour}]{state}[/] {trial.trial_id} [{self.done}/{self.total}] after {epochs} epochs: "
            f"{shown}  test_pearson={result.get('test_pearson', float('nan')):.3f}  {best}",
            highlight=False,
        )


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
