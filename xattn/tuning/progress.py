"""What a user watching a study sees: a live progress bar in a terminal, one line per event elsewhere.

Both views read a trial's result the way the study summary and Optuna do (`result_key`), and
group and rank trials by configuration as the summary does (xattn.tuning.selection), so the
"best so far" shown while the study runs is the best configuration it reports at the end.
"""

from __future__ import annotations

import logging
import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ray.tune import Callback
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from xattn.tracking.runs import best_group
from xattn.tuning import selection
from xattn.tuning import trial as trial_keys
from xattn.tuning.comparison import GROUP

# Ray Tune trial statuses (ray.tune.experiment.Trial) of a trial that will not run again.
FINISHED_STATUSES = ("TERMINATED", "ERROR")


def result_key(metric: str) -> str:
    """The reported key that ranks trials by `metric`.

    Validation metrics are reported every epoch, with the best epoch's value as `best_<metric>`:
    that is what Optuna is told and what the study summary ranks by. Test metrics are already
    those of a trial's best weights, so they are read as they are.
    """
    return metric if metric.startswith("test_") else f"best_{metric}"


@dataclass
class _Running:
    started: float
    epoch: int = 0


class TrialProgress(Callback):
    """A Ray Tune callback counting one phase's trials at a time (see `start_phase`).

    Use it as a context manager around the study: in an interactive terminal it then shows a
    live bar (trials done, running, best so far, time elapsed and left) under the printed lines, and it
    takes the bar down however the study ends. Elsewhere every line is plain and never wrapped.
    """

    def __init__(
        self,
        console: Console,
        total: int,
        metric: str,
        mode: str,
        *,
        title: str = "search",
        max_epochs: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console
        self.total = total
        self.metric = metric
        self.mode = mode
        # Ray's ASHA also stops a trial that reached its last epoch; only one stopped before
        # that was cut short. Without it, every trial the scheduler stopped counts as cut short.
        self.max_epochs = max_epochs
        self.clock = clock
        self._live: Live | None = None
        self._streams: list[tuple[Any, Any]] = []  # (real stream, the live display's proxy of it)
        self._lock = threading.RLock()
        self._reset(title)

    def _reset(self, title: str) -> None:
        self.title = title
        self.done = 0
        self.best: float | None = None
        self.unmeasured = 0  # completed trials whose metric is NaN: refits, with no validation regions
        self.best_configuration: str | None = None  # its key (selection.configuration_key)
        self.stopped_early = 0
        self.failed = 0
        self.phase_started: float | None = None
        self.phase_ended: float | None = None  # the clock stops with the phase's Tune experiment
        self.peak_running = 0
        self._finished: set[str] = set()
        self._running: dict[str, _Running] = {}
        self._durations: list[float] = []
        self._stopped_at: dict[str, int] = {}  # trial id -> epoch the scheduler stopped it at
        # configuration -> results of its completed trials: with inner folds a configuration is
        # several trials, and the summary ranks it by their mean
        self._results: dict[str, list[float]] = {}

    def start_phase(self, title: str, total: int, metric: str, mode: str) -> None:
        """A study with `compare_with` runs several phases; count each one's trials afresh."""
        with self._lock:
            self._reset(title)
            self.total, self.metric, self.mode = total, metric, mode
        self._print(f"[bold]{escape(title)}[/]: {total} trial{'' if total == 1 else 's'}")

    def note(self, line: str) -> None:
        """A line between phases: what a phase did without running trials."""
        self._print(escape(line))

    # --- the live display ------------------------------------------------------------------

    def __enter__(self) -> TrialProgress:
        if self.console.is_interactive:
            real = {"stdout": sys.stdout, "stderr": sys.stderr}
            self._live = Live(
                console=self.console, get_renderable=self._view, transient=True, refresh_per_second=2,
                # Writes to stderr go above the bar only where stderr is this terminal too;
                # `2> file` must still get them.
                redirect_stderr=sys.stderr.isatty(),
            )  # fmt: skip
            self._live.start()
            self._streams = [(real[name], getattr(sys, name)) for name in real if getattr(sys, name) is not real[name]]
            _point_log_handlers(self._streams)
        return self

    def __exit__(self, *exc_info: Any) -> None:
        # Runs on Ctrl-C and on any exception too: a live display left running would keep
        # redrawing over the error message and leave the cursor hidden.
        live, self._live = self._live, None
        if live is not None:
            # Handlers set up while it ran (ray.init's) hold the redirected streams too.
            _point_log_handlers([(proxy, real) for real, proxy in self._streams])
            self._streams = []
            live.stop()

    def __getstate__(self) -> dict:
        # Ray Tune pickles its callbacks with the experiment state; a console, a live display
        # (a refresh thread) and a lock cannot be pickled.
        return {k: v for k, v in self.__dict__.items() if k not in ("console", "_live", "_lock", "_streams")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, console=Console(), _live=None, _lock=threading.RLock(), _streams=[])

    def _view(self) -> RenderableType:
        with self._lock:
            total = max(self.total, self.done)
            bar = ProgressBar(total=total or None, completed=self.done, width=30)
            grid = Table.grid(padding=(0, 2))
            grid.add_row(Text(self.title, style="bold"), bar, Text(self._status(), style="none"))
            running = sorted(self._running.items())
            if not running:
                return grid
            of = f"/{self.max_epochs}" if self.max_epochs else ""
            shown = ", ".join(
                f"{trial_id} epoch {state.epoch}{of}" if state.epoch else f"{trial_id} starting"
                for trial_id, state in running[:6]
            )  # fmt: skip
            more = f" and {len(running) - 6} more" if len(running) > 6 else ""
            return Group(grid, Text(f"running: {shown}{more}", style="dim"))

    def _status(self) -> str:
        """Done/total, running, best so far, elapsed and time left, as one line."""
        parts = [f"{self.done}/{self.total} done"]
        outcomes = [f"{n} {text}" for n, text in ((self.stopped_early, "stopped early"), (self.failed, "failed")) if n]
        if outcomes:
            parts[0] += f" ({', '.join(outcomes)})"
        parts.append(f"{len(self._running)} running")
        parts.append(f"best {self.metric} so far {self.best:.4f}" if self.best is not None else "no result yet")
        parts.append(f"{_duration(self._elapsed())} elapsed")
        parts.append(_time_left(self._eta()))
        return ", ".join(parts)

    def _elapsed(self) -> float:
        if self.phase_started is None:
            return 0.0
        return (self.phase_ended if self.phase_ended is not None else self.clock()) - self.phase_started

    def _eta(self) -> float | None:
        """Seconds left: the trials not done yet at the mean duration of those finished, run
        as many at a time as this phase has run at once, less what running ones have done."""
        if not self._durations:
            return None
        mean = sum(self._durations) / len(self._durations)
        now = self.clock()
        remaining = max(self.total - self.done, 0) * mean
        remaining -= sum(min(now - state.started, mean) for state in self._running.values())
        return max(remaining, 0.0) / max(self.peak_running, 1)

    # --- Ray Tune hooks ----------------------------------------------------------------------

    def on_trial_start(self, iteration: int, trials: list, trial, **info: Any) -> None:
        with self._lock:
            self._absorb(trials)
            now = self.clock()
            if self.phase_started is None:
                self.phase_started = now
            # A retried trial keeps its first start: its duration is what it cost.
            self._running.setdefault(trial.trial_id, _Running(started=now))
            self.peak_running = max(self.peak_running, len(self._running))
        self._print(f"[dim]started  {escape(trial.trial_id)}: {escape(started_text(trial.config))}[/]")

    def on_trial_result(self, iteration: int, trials: list, trial, result: dict, **info: Any) -> None:
        with self._lock:
            epoch = int(result.get("epoch", result.get("training_iteration", 0)))
            if trial.trial_id in self._running:
                self._running[trial.trial_id].epoch = epoch
            # Tune marks a result `done` when the scheduler (ASHA) decides to stop the trial on
            # it; a trial whose function returned gets no such result, only on_trial_complete.
            # Read it now: Tune later sets `done` on the same dict when a trial ends by itself.
            if result.get("done") and (self.max_epochs is None or epoch < self.max_epochs):
                self._stopped_at[trial.trial_id] = epoch
        self._refresh()

    def on_trial_recover(self, iteration: int, trials: list, trial, **info: Any) -> None:
        with self._lock:
            # It waits for a worker again; on_trial_start tells when it runs.
            self._running.pop(trial.trial_id, None)
        self._print(f"[yellow]retrying[/] {escape(trial.trial_id)} after an error")

    def on_trial_complete(self, iteration: int, trials: list, trial, **info: Any) -> None:
        with self._lock:
            self._absorb(trials)
            stopped_at = self._stopped_at.get(trial.trial_id)
            counter, outcome = self._finish(trial, completed=True)
        epochs = (trial.last_result or {}).get("epoch", 0)
        if stopped_at is not None:
            of = f" of {self.max_epochs}" if self.max_epochs else ""
            self._print(
                f"[yellow]stopped early[/] {escape(trial.trial_id)} {counter} at epoch {stopped_at}{of} "
                f"by the scheduler: {outcome}"
            )
        else:
            self._print(f"[green]finished[/] {escape(trial.trial_id)} {counter} after {epochs} epochs: {outcome}")

    def on_trial_error(self, iteration: int, trials: list, trial, **info: Any) -> None:
        with self._lock:
            self._absorb(trials)
            counter, outcome = self._finish(trial, completed=False)
        epochs = (trial.last_result or {}).get("epoch", 0)
        self._print(f"[red]FAILED[/] {escape(trial.trial_id)} {counter} after {epochs} epochs: {outcome}")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        with self._lock:
            self._absorb(trials)
            self.phase_ended = self.clock()
            done = f"{self.done} of {self.total} trials done in {_duration(self._elapsed())}"
            outcomes = [
                f"{n} {text}"
                for n, text in ((self.stopped_early, "stopped early by the scheduler"), (self.failed, "failed"))
                if n
            ]
            done += f" ({', '.join(outcomes)})" if outcomes else ""
            if self.best is not None:
                best = f"the best reached {self.metric} {self.best:.4f}"
            elif self.unmeasured:
                best = f"no {self.metric}: {UNMEASURED}"
            else:
                best = "no trial has a result"
            line = f"{escape(self.title)}: {done}; {best}"
        self._print(line)

    def _absorb(self, trials: list) -> None:
        """Count trials that ended before this driver saw them: a resumed phase's finished ones."""
        for trial in trials:
            if trial.trial_id not in self._finished and getattr(trial, "status", None) in FINISHED_STATUSES:
                self._finished.add(trial.trial_id)
                self.done += 1
                if trial.status == "TERMINATED":
                    self._record(trial)
                else:
                    self.failed += 1

    def _finish(self, trial, *, completed: bool) -> tuple[str, str]:
        """Count a trial that ended now; return its place in the phase and what it reached."""
        if trial.trial_id not in self._finished:
            self._finished.add(trial.trial_id)
            self.done += 1
            if completed:
                self._record(trial)
                if trial.trial_id in self._stopped_at:
                    self.stopped_early += 1
            else:
                self.failed += 1
        running = self._running.pop(trial.trial_id, None)
        if running is not None:
            self._durations.append(self.clock() - running.started)
        result = trial.last_result or {}
        value = result.get(result_key(self.metric))
        # A search trial's test r stays out of sight while the search runs: selection is on validation only.
        # A validation metric is read at the trial's best epoch, a test metric as it is.
        at = "" if self.metric.startswith("test_") else " at its best epoch"
        if value is None:
            shown = "no result"
        elif not math.isfinite(value):  # a refit on every region has no validation pairs to score
            shown = f"no {self.metric}: {UNMEASURED}"
        else:
            shown = f"{self.metric} {value:.4f}{at}"
        best = f"best so far {self.best:.4f}" if self.best is not None else "no best yet"
        timing = f"{_duration(self._elapsed())} elapsed"
        timing += f", {_time_left(self._eta())}" if self.done < self.total else ""
        return f"[{self.done}/{self.total}]", f"{shown}; {best}; {len(self._running)} running; {timing}"

    def _record(self, trial) -> None:
        """A completed trial's result joins its configuration's; failed trials never count,
        as the summary only ranks finished runs."""
        value = (trial.last_result or {}).get(result_key(self.metric))
        if value is None:
            return
        if not math.isfinite(value):
            self.unmeasured += 1
            return
        key = selection.configuration_key(trial.config or {}, trial.trial_id)
        self._results.setdefault(key, []).append(float(value))
        self.best_configuration = best_group(self._results, self.mode)
        self.best = selection.mean(self._results[self.best_configuration])

    def _print(self, line: str) -> None:
        # The live display redraws its last frame under every printed line: bring it up to date first.
        self._refresh()
        # Off a terminal (a pipe, a log file) a line must stay one line: rich would otherwise
        # wrap it at 80 columns. In a terminal the live display keeps it above the bar.
        self.console.print(line, highlight=False, soft_wrap=not self.console.is_interactive)

    def _refresh(self) -> None:
        live = self._live
        if live is not None:
            live.refresh()


def _point_log_handlers(moves: list[tuple[Any, Any]]) -> None:
    """Move logging handlers that write to the first stream of a pair to the second.

    Ray and MLflow log through handlers that took sys.stderr when they were made; while the
    live display runs, their lines must go through its redirect, or they land in the middle
    of the bar and the next redraw erases the wrong line.
    """
    if not moves:
        return
    loggers = [
        logging.getLogger(),
        *(o for o in logging.Logger.manager.loggerDict.values() if isinstance(o, logging.Logger)),
    ]
    for logger in loggers:
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                for old, new in moves:
                    if handler.stream is old:
                        handler.setStream(new)
                        break


def _duration(seconds: float) -> str:
    """As a person says it: 16 s, 2 min 05 s, 1 h 02 min."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds // 60 % 60:02d} min"


def _time_left(eta: float | None) -> str:
    if eta is None:
        return "time left known after the first trial"
    return f"about {_duration(eta)} left" if eta >= 0.5 else "almost done"


# Keys the platform adds to a trial's config, as a person reads them; None hides one the phase's
# own header already says (the null method) or that only the platform reads (a fold's selection).
_PLATFORM_KEYS = {
    trial_keys.CELL: None,
    trial_keys.SELECTED: None,
    trial_keys.NULL_METHOD: None,
    selection.INNER_FOLD: None,
    GROUP: None,
    "_fold": lambda value: f"fold {value}",
    "_seed": lambda value: f"seed {value}",
    trial_keys.NULL_INDEX: lambda value: f"null {value}",
    trial_keys.EPOCHS: lambda value: f"{value} epochs",
    trial_keys.WHOLE: lambda value: f"all regions ({value})",
}


UNMEASURED = "it trained on every region, so none was held out to score it"


def started_text(config: dict[str, Any]) -> str:
    """A trial's settings as its "started" line shows them: the fold, seed and null it trains on
    (named as in its run name), then its hyperparameters; never the platform's own `_keys`."""
    where, params = [], []
    cell = config.get(trial_keys.CELL)
    if isinstance(cell, list | tuple) and len(cell) == 3:  # a bundle of nulls: [fold, seed, its first null]
        where.append(f"nulls from {cell[2]}")
    for key, value in sorted(config.items()):
        if key in _PLATFORM_KEYS:
            if _PLATFORM_KEYS[key] is not None:
                where.append(_PLATFORM_KEYS[key](value))
        elif not key.startswith("_"):
            params.append(f"{key}={_fmt(value)}")
    return ", ".join(where + params) or "default settings"


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)
