"""The progress a user watches: a live bar in a terminal, plain unwrapped lines in a pipe,
and the same "best so far" as the study's summary."""

import io
import json
import pickle
import re

import pytest
from ray.tune.experiment import Trial
from ray.tune.search.repeater import TRIAL_INDEX
from rich.console import Console

from xattn.tuning.progress import TrialProgress

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_trial(index: int, **config) -> Trial:
    return Trial(
        "trainable", config=config or {"learning_rate": 0.001 * (index + 1)}, trial_id=f"ab12_{index:05d}", stub=True
    )


def start(progress, trials, trial):
    trial.set_status(Trial.RUNNING)
    progress.on_trial_start(0, trials, trial)


def report(progress, trials, trial, **result):
    """What Tune does with a result: callbacks first, then it becomes `last_result`."""
    progress.on_trial_result(0, trials, trial, result)
    trial.update_last_result(result)


def complete(progress, trials, trial):
    progress.on_trial_complete(0, trials, trial)
    trial.set_status(Trial.TERMINATED)


def epoch(value, best, n, done=False):
    return {"epoch": n, "val_pearson": value, "best_val_pearson": best, "test_pearson": best - 0.02, "done": done}


@pytest.fixture
def terminal(monkeypatch):
    monkeypatch.setenv("TERM", "xterm-256color")  # a dumb terminal gets no live display
    out = io.StringIO()
    return Console(force_terminal=True, file=out, width=200), out


def test_the_live_view_shows_done_best_elapsed_and_eta(terminal):
    console, out = terminal
    clock = Clock()
    progress = TrialProgress(
        console, 4, "val_pearson", "max", title="search cross_attention", max_epochs=20, clock=clock
    )
    trials = [make_trial(i) for i in range(4)]
    with progress:
        start(progress, trials, trials[0])
        start(progress, trials, trials[1])
        clock.now += 30
        # The last epoch's val_pearson is not the trial's result: its best epoch's is.
        report(progress, trials, trials[0], **epoch(0.50, 0.81, 20))
        complete(progress, trials, trials[0])
        report(progress, trials, trials[1], **epoch(0.30, 0.41, 5, done=True))  # ASHA's stop
        complete(progress, trials, trials[1])
        start(progress, trials, trials[2])
        clock.now += 10
        report(progress, trials, trials[2], **epoch(0.6, 0.6, 3))
        assert progress._live is not None and progress._live.is_started
    written = out.getvalue()
    assert "\x1b[" in written  # drawn in place, as a terminal is
    text = ANSI.sub("", written)
    last_frame = text[text.rindex("search cross_attention") :]
    assert "2/4 done (1 stopped early)" in last_frame and "1 running" in last_frame
    assert "best val_pearson so far 0.8100" in last_frame  # the best epoch's, not the last one's 0.5000
    assert "40 s elapsed" in last_frame
    # Two trials took 30 s each, two ran at once: 2 left x 30 s, less 10 s run, over 2.
    assert "about 25 s left" in last_frame
    assert "running: ab12_00002 epoch 3/20" in last_frame
    # Printed lines go above the bar, which is drawn again under them.
    finished = text.index("finished ab12_00000 [1/4] after 20 epochs")
    assert text.index("search cross_attention", finished) > finished
    assert "stopped early ab12_00001 [2/4] at epoch 5 of 20 by the scheduler" in text


def test_the_live_view_stops_on_ctrl_c_and_leaves_the_cursor_shown(terminal):
    console, out = terminal
    progress = TrialProgress(console, 2, "val_loss", "min")
    with pytest.raises(KeyboardInterrupt):
        with progress:
            live = progress._live
            start(progress, [], make_trial(0))
            raise KeyboardInterrupt
    assert progress._live is None and not live.is_started
    assert not console._live_stack  # another display could start on this console
    assert "\x1b[?25h" in out.getvalue()  # the cursor it hid is shown again
    console.print("after")
    assert out.getvalue().rstrip().endswith("after")


def test_log_lines_go_above_the_bar_and_handlers_get_their_stream_back(terminal):
    """Ray's and MLflow's handlers took the real stream before the display started."""
    import logging
    import sys

    console, out = terminal
    real = sys.stdout
    handler = logging.StreamHandler(real)
    logger = logging.getLogger("xattn.test.progress")
    logger.addHandler(handler)
    try:
        with TrialProgress(console, 2, "val_loss", "min"):
            assert handler.stream is sys.stdout and sys.stdout is not real  # the display's redirect
            logger.warning("a warning from Ray")
        assert handler.stream is real
    finally:
        logger.removeHandler(handler)
    assert "a warning from Ray" in ANSI.sub("", out.getvalue())


def test_tune_can_pickle_the_callback_while_the_display_is_live(terminal):
    console, _ = terminal
    progress = TrialProgress(console, 2, "val_pearson", "max")
    trials = [make_trial(0)]
    with progress:
        start(progress, trials, trials[0])
        copy = pickle.loads(pickle.dumps(progress))
    assert copy._live is None and copy.done == 0 and "ab12_00000" in copy._running
    report(copy, trials, trials[0], **epoch(0.5, 0.6, 2))
    complete(copy, trials, trials[0])  # a restored copy still works, printing to stdout
    assert copy.best == pytest.approx(0.6)


def test_off_a_terminal_every_event_is_one_plain_line():
    out = io.StringIO()
    progress = TrialProgress(Console(file=out), 2, "val_pearson", "max", max_epochs=20)  # 80 columns
    trials = [make_trial(0, learning_rate=0.00123, deep_hidden_dims=[64, 32, 16], expression_encoding="quantile_bins")]
    trials.append(make_trial(1))
    with progress:
        assert progress._live is None
        start(progress, trials, trials[0])
        report(progress, trials, trials[0], **epoch(0.50, 0.81, 20))
        complete(progress, trials, trials[0])
        start(progress, trials, trials[1])
        report(progress, trials, trials[1], **epoch(0.30, 0.41, 4, done=True))
        complete(progress, trials, trials[1])
        progress.on_experiment_end(trials)
    written = out.getvalue()
    assert "\x1b" not in written
    lines = written.splitlines()
    assert len(lines) == 5, written
    assert lines[0].startswith("started  ab12_00000: deep_hidden_dims=[64, 32, 16], expression_encoding=quantile_bins")
    # Selection is on validation only: a search trial's test r is not shown while the search runs.
    assert lines[1].startswith("finished ab12_00000 [1/2] after 20 epochs: val_pearson 0.8100 at its best epoch;")
    assert "test_pearson" not in written
    assert "best so far 0.8100" in lines[1] and "elapsed" in lines[1] and len(lines[1]) > 80
    assert lines[3].startswith(
        "stopped early ab12_00001 [2/2] at epoch 4 of 20 by the scheduler: val_pearson 0.4100 at its best epoch;"
    )
    assert "best so far 0.8100" in lines[3]
    assert lines[4] == (
        "search: 2 of 2 trials done in 0 s (1 stopped early by the scheduler); the best reached val_pearson 0.8100"
    )
    # sentences, not identifiers and clock faces
    assert "best_val_pearson" not in written and "0:00" not in written


def test_a_started_line_names_fold_seed_and_null_not_the_platform_s_keys():
    from xattn.tuning.progress import started_text

    null_run = {"_cell": [3, 0], "_fold": 3, "_seed": 0, "_null_index": 7, "_null_method": "msr"}
    null_run["_selected"] = {"3": {"learning_rate": 0.0027}}
    assert started_text({**null_run, "learning_rate": 0.00214}) == "fold 3, null 7, seed 0, learning_rate=0.00214"
    bundle = {"_cell": [1, 0, 66], "_fold": 1, "_seed": 0, "_null_method": "msr", "_selected": {}}
    assert started_text(bundle) == "nulls from 66, fold 1, seed 0"
    refit = {"_epochs": 8, "_seed": 0, "_whole": "refit", "learning_rate": 0.002}
    assert started_text(refit) == "8 epochs, seed 0, all regions (refit), learning_rate=0.002"
    assert "_" not in started_text({"_cell": [0, 0], "_some_new_key": 1}).replace("default_", "")


def test_a_refit_with_no_validation_regions_says_so_instead_of_nan():
    out = io.StringIO()
    progress = TrialProgress(Console(file=out), 1, "val_pearson", "max", max_epochs=8)
    trials = [make_trial(0, _epochs=8, _seed=0, _whole="refit", learning_rate=0.002)]
    with progress:
        progress.start_phase("refit cross_attention on all regions (8 epochs)", 1, "val_pearson", "max")
        start(progress, trials, trials[0])
        report(progress, trials, trials[0], **epoch(float("nan"), float("nan"), 8, done=True))
        complete(progress, trials, trials[0])
        progress.on_experiment_end(trials)
    lines = out.getvalue().splitlines()
    assert lines[0] == "refit cross_attention on all regions (8 epochs): 1 trial"
    assert "no val_pearson: it trained on every region" in lines[2] and "nan" not in lines[2], lines[2]
    assert lines[-1].endswith("no val_pearson: it trained on every region, so none was held out to score it")


def test_each_phase_counts_afresh():
    out = io.StringIO()
    progress = TrialProgress(Console(file=out, width=200), total=2, metric="val_loss", mode="min")
    trials = [make_trial(i) for i in range(4)]
    for trial, value in zip(trials[:2], (0.5, 0.4)):
        report(progress, trials, trial, epoch=3, val_loss=value + 1, best_val_loss=value, test_pearson=0.1)
        complete(progress, trials, trial)
    progress.start_phase("final cge", 2, "test_pearson", "max")
    finals = [make_trial(i + 10, _fold=i, _seed=0) for i in range(2)]
    for trial, value in zip(finals, (0.2, 0.3)):
        report(progress, finals, trial, epoch=3, best_val_loss=1.0, test_pearson=value)
        complete(progress, finals, trial)
    lines = out.getvalue().splitlines()
    assert "[2/2]" in lines[1] and "val_loss 0.4000 at its best epoch" in lines[1] and "best so far 0.4000" in lines[1]
    assert lines[2] == "final cge: 2 trials"
    assert "[2/2]" in lines[4] and "test_pearson 0.3000;" in lines[4] and "best so far 0.3000" in lines[4]


def test_a_trial_is_stopped_early_only_when_the_scheduler_cut_it_short():
    out = io.StringIO()
    progress = TrialProgress(Console(file=out, width=200), 3, "val_pearson", "max", max_epochs=4)
    trials = [make_trial(i) for i in range(3)]
    for trial in trials:
        start(progress, trials, trial)
    # Ended by itself (the trainer's own early stopping): Tune marks the result done only
    # after the callbacks saw it, on the same dict.
    report(progress, trials, trials[0], **epoch(0.5, 0.5, 2))
    trials[0].last_result["done"] = True
    complete(progress, trials, trials[0])
    # ASHA also stops a trial at its last epoch (max_t): that trial ran to the end.
    report(progress, trials, trials[1], **epoch(0.6, 0.6, 4, done=True))
    complete(progress, trials, trials[1])
    report(progress, trials, trials[2], **epoch(0.1, 0.1, 1, done=True))
    complete(progress, trials, trials[2])
    lines = [line for line in out.getvalue().splitlines() if not line.startswith("started")]
    assert lines[0].startswith("finished ab12_00000 [1/3] after 2 epochs")
    assert lines[1].startswith("finished ab12_00001 [2/3] after 4 epochs")
    assert lines[2].startswith("stopped early ab12_00002 [3/3] at epoch 1 of 4")
    assert progress.stopped_early == 1


def test_best_so_far_is_the_summary_s_best_inner_fold_means_failures_excluded():
    out = io.StringIO()
    progress = TrialProgress(Console(file=out, width=200), 5, "val_loss", "min")
    same = {"learning_rate": 0.01}
    folds = [make_trial(i, **same, **{TRIAL_INDEX: i}) for i in range(2)]
    other = [make_trial(i + 2, learning_rate=0.02, **{TRIAL_INDEX: i}) for i in range(2)]
    failed = make_trial(9)
    trials = [*folds, *other, failed]
    for trial, value in zip(trials[:4], (0.2, 0.6, 0.35, 0.35)):
        report(progress, trials, trial, epoch=3, val_loss=0.01, best_val_loss=value)
        complete(progress, trials, trial)
    # A diverged trial reported a low loss before it failed; failed runs are never the best.
    report(progress, trials, failed, epoch=1, val_loss=0.01, best_val_loss=0.01)
    progress.on_trial_error(0, trials, failed)
    assert progress.best == pytest.approx(0.35)  # mean of 0.35 and 0.35 beats mean of 0.2 and 0.6
    assert progress.failed == 1 and progress.done == 5
    assert "FAILED ab12_00009 [5/5]" in out.getvalue()


def test_a_resumed_phase_counts_the_trials_finished_before_it():
    out = io.StringIO()
    progress = TrialProgress(Console(file=out, width=200), 3, "val_pearson", "max")
    trials = [make_trial(i) for i in range(3)]
    trials[0].update_last_result(epoch(0.7, 0.9, 5))
    trials[0].set_status(Trial.TERMINATED)
    trials[1].set_status(Trial.ERROR)
    start(progress, trials, trials[2])
    report(progress, trials, trials[2], **epoch(0.5, 0.5, 5))
    complete(progress, trials, trials[2])
    assert progress.done == 3 and progress.failed == 1 and progress.best == pytest.approx(0.9)
    assert "[3/3]" in out.getvalue().splitlines()[-1]


def test_ray_tune_tells_asha_stops_from_trials_that_ended(ray_local, tmp_path):
    """The hooks as Ray Tune really calls them, with ASHA (rungs at epochs 1 and 2, max_t 4)."""
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    # One at a time, in order: the first sets the rungs, the second falls below them, the
    # third ends by itself after 2 epochs, above them.
    cases = [{"slope": 1.0, "epochs": 4}, {"slope": 0.2, "epochs": 4}, {"slope": 3.0, "epochs": 2}]

    def training(config):
        """Reports like xattn's trainable: the epoch and the best validation Pearson so far."""
        case = cases[config["case"]]
        for n in range(1, case["epochs"] + 1):
            value = case["slope"] * n / 4
            tune.report({"epoch": n, "val_pearson": value, "best_val_pearson": value, "test_pearson": value})

    out = io.StringIO()
    progress = TrialProgress(Console(file=out), 3, "val_pearson", "max", max_epochs=4)
    tuner = tune.Tuner(
        training,
        param_space={"case": tune.grid_search([0, 1, 2])},
        tune_config=tune.TuneConfig(
            scheduler=ASHAScheduler(metric="val_pearson", mode="max", max_t=4, grace_period=1, reduction_factor=2),
            max_concurrent_trials=1,
        ),
        run_config=tune.RunConfig(storage_path=str(tmp_path), callbacks=[progress], verbose=0),
    )
    results = tuner.fit()
    assert results.num_errors == 0
    lines = [line for line in out.getvalue().splitlines() if not line.startswith("started")]
    assert lines[0].split(" [")[0].startswith("finished") and "after 4 epochs" in lines[0], out.getvalue()
    assert lines[1].startswith("stopped early") and "at epoch 1 of 4" in lines[1], out.getvalue()
    assert lines[2].startswith("finished") and "after 2 epochs" in lines[2], out.getvalue()
    assert "best so far 1.5000" in lines[2]
    assert lines[3].startswith("search: 3 of 3 trials done in ") and "(1 stopped early by the scheduler)" in lines[3]


@pytest.mark.e2e
def test_a_study_piped_to_a_file_prints_plain_lines_with_the_summary_s_best(tmp_path):
    from test_cli import write_spec, xattn

    # Grace period 1 with 3 epochs lets ASHA stop a trial early; whether it does depends on
    # the trials' values, so each outcome line is checked for what it says, not its kind.
    spec = write_spec(tmp_path, **{"budget.trials": 3, "budget.max_epochs": 3, "search.grace_period": 1})
    # A long path, so the printed commands run past rich's 80 columns off a terminal.
    workspace = tmp_path / "a-workspace-whose-name-is-long-enough-to-pass-eighty-columns"
    # An in-process ray.init earlier in the session sets RAY_AUTH_MODE for this process, and
    # a child that inherits it starts Ray without the warning this test looks for.
    env = {"RAY_AUTH_MODE": None}
    process = xattn(
        "study", "run", spec, "--workspace", workspace, "--json", cwd=tmp_path, check=True, env=env
    )  # stdout is a pipe
    result = json.loads(process.stdout.strip().splitlines()[-1])
    assert "\x1b" not in process.stdout
    # A quiet console: MLflow's migrations and Ray's token warning are in the log file only.
    assert process.stderr == "", process.stderr
    log = (workspace / "xattn.log").read_text()
    assert "mlflow.store.db.utils" in log, log
    assert "Token authentication" in log, log
    printed = [line.strip() for line in process.stdout.splitlines()]
    for command in (
        f"xattn export quickstart --workspace {workspace}",
        "xattn evaluate exports/quickstart",
    ):
        assert any(line.startswith(command) for line in printed), process.stdout
    lines = process.stdout.splitlines()
    assert sum(line.startswith("started ") for line in lines) >= 3
    outcomes = [line for line in lines if re.match(r"(finished|stopped early) \S+ \[\d/3\]", line)]
    assert len(outcomes) == 3, process.stdout
    for line in outcomes:
        assert "val_pearson" in line and " at its best epoch; " in line and " elapsed" in line  # one line each
        stopped = re.search(r"at epoch (\d) of 3", line)
        assert line.startswith("finished") or (stopped and int(stopped.group(1)) < 3)
    assert "[3/3]" in outcomes[-1]
    best = result["best"]["metrics"]["best_val_pearson"]
    shown = float(re.search(r"best so far (-?[\d.]+)", outcomes[-1]).group(1))
    assert shown == pytest.approx(best, abs=1e-4)
    (summary,) = [line for line in lines if line.startswith("search cross_attention: 3 of 3 trials done in ")]
    assert summary.endswith(f"; the best reached val_pearson {best:.4f}")
    # what a person would write: no internal names, clock faces or query strings
    # (the best trial's table names metrics as MLflow does; the JSON line is for scripts)
    sentences = "\n".join(line for line in lines[:-1] if not line.startswith(("│", "┌", "└")))
    assert not re.search(r"best_val_pearson|best best|\d:\d\d:\d\d|\?timeout", sentences), sentences
    assert outcomes[-1].endswith(" elapsed")  # the last trial: nothing left to estimate
    assert result["trial_counts"] == {"finished": 3}

    # `study show` tells the same story: the best trial, the epochs, the early stops.
    shown = json.loads(
        xattn("study", "show", "quickstart", "--workspace", workspace, "--json", cwd=tmp_path, check=True).stdout
    )
    trials = {trial["ray_trial_id"]: trial for trial in shown["trials"]}
    assert [t["run_id"] for t in shown["trials"] if t["best"]] == [result["best"]["run_id"]]
    for line in outcomes:
        trial = trials[line.split()[2] if line.startswith("stopped early") else line.split()[1]]
        stopped = re.search(r"at epoch (\d) of 3", line)
        assert trial["stopped_early_at"] == (int(stopped.group(1)) if stopped else None), (line, trial)
        assert trial["epochs"] == (
            int(stopped.group(1)) if stopped else int(re.search(r"after (\d) epochs", line).group(1))
        )
    early = sum(line.startswith("stopped early") for line in outcomes)
    assert result["stopped_early"] == early
    (counts,) = [line for line in lines if line.startswith(f"study quickstart (study run {result['parent_run_id']}): ")]
    assert counts.endswith(
        f": 3 trials finished ({early} of them stopped early by the scheduler)" if early else ": 3 trials finished"
    )
    table = xattn("study", "show", "quickstart", "--workspace", workspace, cwd=tmp_path, check=True).stdout
    assert "cross_attention, every run on fold 0, seed 0" in table
    assert table.count(" stopped early ") == sum(t["stopped_early_at"] is not None for t in trials.values())
    # each run by what its name does not share, and the settings every run shares once, below the table
    rows, fixed = table.split("\nthe same in every cross_attention run: ")
    assert all(f" trial-{t['optuna_trial_number']} " in rows for t in trials.values())
    assert "deep_hidden_dims=" not in rows and "deep_hidden_dims=" in fixed
