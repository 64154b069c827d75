"""The `xattn` command line: each command a few lines over the library."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import shlex
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import typer
import yaml
from rich.console import Console
from rich.table import Table

from xattn.errors import XattnError
from xattn.tracking.store import connect, masked
from xattn.tracking import tags

try:  # typer 0.29 and later carry their own copy of click
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:
    from click.exceptions import NoArgsIsHelpError, UsageError

app = typer.Typer(help="Hyperparameter studies of cross-attention models of brain connectivity.", no_args_is_help=True)
study_app = typer.Typer(help="Run and inspect studies.", no_args_is_help=True)
data_app = typer.Typer(help="Named datasets: list, fetch, info.", no_args_is_help=True)
app.add_typer(study_app, name="study")
app.add_typer(data_app, name="data")

LONG_LINE = 100_000  # columns rich may use off a terminal: a printed command or a table row stays one line


def _console(stderr: bool = False) -> Console:
    """Soft wrap everywhere: a terminal wraps long lines for display, and a copied command keeps no
    line break. Off a terminal (a pipe, a log file) rich would assume 80 columns and break lines."""
    terminal = Console(stderr=stderr).is_terminal
    return Console(stderr=stderr, soft_wrap=True, width=None if terminal else LONG_LINE)


console = _console()
err_console = _console(stderr=True)


def _flags_take_no_value() -> None:
    """typer 0.29's rich help labels a flag `<bool>`, as if it took a value; show no type for flags."""
    option = typer.core.TyperOption
    display = getattr(option, "display_type_rich", None)
    if display is not None:  # older typers show no type at all
        option.display_type_rich = lambda self, ctx: None if self.is_flag else display(self, ctx)


_flags_take_no_value()


@app.callback()
def _global_options(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show library logs (MLflow, Ray, Optuna) on stderr; they always go to WORKSPACE/xattn.log."),
) -> None:
    from xattn import logs

    logs.configure(verbose)

WorkspaceOpt = typer.Option(None, "--workspace", "-w", help="Workspace folder for stores and artifacts (default: ./.xattn or $XATTN_WORKSPACE).")
TrackingOpt = typer.Option(None, "--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or the workspace's SQLite file).")
OptunaOpt = typer.Option(None, "--optuna-storage", help="Optuna storage URL (default: $XATTN_OPTUNA_STORAGE or the workspace's SQLite file).")
MirrorOpt = typer.Option(None, "--mirror", help="Read data files from this local folder laid out like the upstream repositories (default: $XATTN_DATA_MIRROR).")
AddressOpt = typer.Option(None, "--address", envvar="RAY_ADDRESS", show_envvar=False, help="Ray cluster address (default: $RAY_ADDRESS or a local Ray instance).")
JsonOpt = typer.Option(False, "--json", help="Print one JSON object as the last line, for scripts.")


def friendly(command: Callable) -> Callable:
    """Turn user-facing errors into one line on stderr and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except XattnError as error:
            err_console.print(f"[red]error:[/] {error}", highlight=False, soft_wrap=True)
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt:
            # A study handles its own (marked KILLED, resume command printed). Every other
            # command writes each output file whole (staged, then moved in).
            err_console.print("interrupted: stopped; what it finished is kept, nothing is half-written", highlight=False)
            raise typer.Exit(130) from None
        except OSError as error:
            # The last net for a path or device the checks above missed (a disk that fills,
            # permissions that change): one line, the traceback in the log (and with -v).
            logging.getLogger("xattn").error("%s failed", command.__name__, exc_info=True)
            where = f"{error.filename}: " if error.filename else ""
            err_console.print(f"[red]error:[/] {where}{error.strerror or error} (-v shows the traceback)", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def _workspace(workspace, tracking_uri, optuna_storage=None, create=True):
    from xattn import logs
    from xattn.tracking.store import Workspace

    ws = Workspace.open(workspace, tracking_uri, optuna_storage, create=create)
    logs.log_to_workspace(ws.root)
    return ws


def _stored_workspace(workspace, tracking_uri, optuna_storage=None):
    """A workspace to read: its tracking store must exist (reading a new SQLite file creates it)."""
    from xattn.errors import StudyNotFound

    ws = _workspace(workspace, tracking_uri, optuna_storage, create=False)
    missing = ws.missing_store()
    if missing is not None:
        raise StudyNotFound(f"no tracking store at {missing}: run `xattn study run SPEC` first, or pass --workspace DIR")
    return ws


def _parse_sets(values: list[str]) -> dict[str, Any]:
    overrides = {}
    for item in values:
        if "=" not in item:
            raise XattnError(f"--set {item!r}: expected KEY=VALUE, for example --set data.dataset=hcp-s100")
        key, value = item.split("=", 1)
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


@study_app.command("run")
@friendly
def study_run(
    spec_path: Path = typer.Argument(..., metavar="SPEC", help="Study spec (YAML), e.g. studies/quickstart.yaml."),
    # Read as the spec reads them, so 1e3 works here as it does in YAML.
    trials: Optional[str] = typer.Option(None, "--trials", metavar="N", help="Override budget.trials."),
    max_epochs: Optional[str] = typer.Option(None, "--max-epochs", metavar="N", help="Override budget.max_epochs."),
    name: Optional[str] = typer.Option(None, "--name", help="Override the study name (the MLflow experiment)."),
    sets: list[str] = typer.Option([], "--set", help="Override any spec field: --set data.dataset=hcp-s100 (repeatable)."),
    workspace: Optional[Path] = WorkspaceOpt,
    tracking_uri: Optional[str] = TrackingOpt,
    optuna_storage: Optional[str] = OptunaOpt,
    address: Optional[str] = AddressOpt,
    mirror: Optional[Path] = MirrorOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Run a hyperparameter study with Ray Tune and Optuna, recorded in MLflow."""
    from xattn.tuning.spec import load_spec

    overrides = _parse_sets(sets)
    for key, value in (("budget.trials", trials), ("budget.max_epochs", max_epochs), ("name", name)):
        if value is not None:
            overrides[key] = value
    spec = load_spec(spec_path, overrides)
    ws = _workspace(workspace, tracking_uri, optuna_storage, create=False)  # run_study creates it after preflight
    # Bad data fails here, before Ray and MLflow are imported (seconds on a small machine).
    from xattn.data.datasets import data_mirror
    from xattn.tuning.trial import preflight

    mirror_path = data_mirror(mirror)
    preflight(spec, str(mirror_path) if mirror_path else None)

    from xattn.tuning.progress import TrialProgress
    from xattn.studies import run_study

    console.print(
        f"study [bold]{spec.name}[/]: {spec.model.family} on {spec.data.dataset or 'user files'}, "
        f"{spec.budget.trials} trials x {spec.budget.max_epochs} epochs; tracking {masked(ws.tracking_uri)}",
        highlight=False,
        soft_wrap=True,  # one line in a log too, like the progress lines below it
    )
    for note in spec.notes():
        console.print(f"[yellow]note:[/] {note}", highlight=False, soft_wrap=True)
    progress = TrialProgress(
        console, spec.search_trials, spec.search.metric, spec.search.mode,
        title=f"search {spec.model.family}", max_epochs=spec.budget.max_epochs,
    )  # fmt: skip
    _finish_study(lambda: run_study(spec, ws, address=address, mirror=mirror, progress=progress), ws, spec.name, as_json, progress)


@study_app.command("resume")
@friendly
def study_resume(
    name: str = typer.Argument(..., help="Study name: its newest run, if unfinished (killed, interrupted, crashed), continues."),
    workspace: Optional[Path] = WorkspaceOpt,
    tracking_uri: Optional[str] = TrackingOpt,
    optuna_storage: Optional[str] = OptunaOpt,
    address: Optional[str] = AddressOpt,
    mirror: Optional[Path] = MirrorOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Continue an interrupted study: finished trials are kept, running ones restart from their checkpoint."""
    ws = _stored_workspace(workspace, tracking_uri, optuna_storage)

    from xattn.tuning.progress import TrialProgress
    from xattn.studies import resume_study

    progress = TrialProgress(console, 0, "val_loss", "min")
    _finish_study(lambda: resume_study(name, ws, address=address, mirror=mirror, progress=progress), ws, name, as_json, progress)


def _finish_study(start: Callable[[], Any], ws, name: str, as_json: bool, progress=None) -> None:
    """Run a study to its end; Ctrl-C or SIGTERM leave it KILLED and resumable."""
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        # The live display ends before anything below prints, however the study ended.
        with progress if progress is not None else contextlib.nullcontext():
            result = start()
    except KeyboardInterrupt:
        err_console.print(f"interrupted: the study run is marked KILLED; continue it with `xattn study resume {name}{_store_flags(ws, optuna=True)}`", highlight=False)
        raise typer.Exit(130) from None
    _print_result(result, ws)
    if as_json:
        print(json.dumps(result.to_dict(), default=str))
    if result.best is None:
        reasons = "; ".join(f"{n} x {reason}" for reason, n in result.failures.items()) or "no trial reported a result"
        err_console.print(f"[red]error:[/] every trial failed ({reasons}): see the FAILED runs' error artifacts in `xattn ui`", soft_wrap=True)
        raise typer.Exit(1)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def _store_flags(ws, *, tracking: bool = True, optuna: bool = False) -> str:
    """The flags a printed command needs to reach these stores from here: none where the
    defaults (flags left out, the same environment) would find them."""
    from xattn.tracking.store import DEFAULT_WORKSPACE, Workspace

    default_root = Path(os.environ.get("XATTN_WORKSPACE") or DEFAULT_WORKSPACE).expanduser().resolve()
    defaults = Workspace.open(ws.root, create=False)
    flags = [("--workspace", str(ws.root))] if ws.root != default_root else []
    if tracking and ws.tracking_uri != defaults.tracking_uri:
        flags.append(("--tracking-uri", ws.tracking_uri))
    if optuna and ws.optuna_storage != defaults.optuna_storage:
        flags.append(("--optuna-storage", masked(ws.optuna_storage)))
    return "".join(f" {flag} {shlex.quote(value)}" for flag, value in flags)


def _print_result(result, ws) -> None:
    counts = ", ".join(f"{n} {state}" for state, n in sorted(result.trial_counts.items()))
    if result.stopped_early:
        counts += f" ({result.stopped_early} of them stopped early by the scheduler)"
    console.print(f"\nstudy {result.name}: {counts} (parent run {result.parent_run_id})", highlight=False)
    if result.best:
        table = Table(title="best trial", show_header=False)
        table.add_row("run id", result.best["run_id"])
        table.add_row("ray trial", str(result.best["trial_id"]))
        for key, value in sorted(result.best["params"].items()):
            table.add_row(key, value)
        for key in ("best_val_loss", "best_val_pearson", "test_pearson", "test_spearman", "test_mse", "test_r2"):
            if key in result.best["metrics"]:
                table.add_row(key, f"{result.best['metrics'][key]:.4f}")
        console.print(table)
    for family, agreement in result.agreement.items():
        if agreement["spearman"] == agreement["spearman"]:  # not NaN: three trials or more
            whose = "every family's" if family == "all" else f"{family}'s"
            console.print(
                f"search: validation {agreement['metric']} ranks {whose} {agreement['n_trials']} trials by test r "
                f"with Spearman {agreement['spearman']:+.2f} (p = {agreement['p_value']:.2g})",
                highlight=False,
            )
    stores = _store_flags(ws)
    console.print("\nlook at it:", highlight=False)
    console.print(f"  xattn ui{stores}", highlight=False)
    # MLflow 3.17's UI opens every experiment as a GenAI app unless the link asks for runs.
    ui_base = masked(ws.tracking_uri).rstrip("/") if ws.tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    console.print(f"    then {ui_base}/#/experiments/{result.experiment_id}/runs?workflowType=machine_learning", highlight=False)
    console.print(f"  xattn study show {result.name}{stores}", highlight=False)
    console.print(f"  xattn export {result.name} --out exports/{result.name}{stores}", highlight=False)
    console.print(f"  xattn evaluate exports/{result.name}   (after export: rebuilds the best model, checks its test metrics)", highlight=False)
    console.print(f"  xattn report {result.name}{_store_flags(ws, optuna=True)}   (one HTML page: figures, trials, comparison)", highlight=False)
    console.print(f"  xattn dashboard{_store_flags(ws, tracking=False, optuna=True)}", highlight=False)
    if result.best and result.best.get("model_uri"):
        console.print(f"  the best trial is model {result.best['model_uri']} (version {result.best['model_version']})", highlight=False)


@study_app.command("list")
@friendly
def study_list(workspace: Optional[Path] = WorkspaceOpt, tracking_uri: Optional[str] = TrackingOpt, as_json: bool = JsonOpt) -> None:
    """List the studies in the tracking store."""

    ws = _workspace(workspace, tracking_uri, create=False)
    client = None if ws.missing_store() else connect(ws)  # no store yet: no studies, and none is created
    rows = []
    for experiment in client.search_experiments() if client else []:
        if tags.STUDY not in experiment.tags:
            continue
        runs = client.search_runs([experiment.experiment_id], f"tags.`{tags.ROLE}` = 'study'", order_by=["attributes.start_time DESC"])
        latest = runs[0] if runs else None
        rows.append(
            {
                "name": experiment.name,
                "experiment_id": experiment.experiment_id,
                "study_runs": len(runs),
                "latest_run_id": latest.info.run_id if latest else None,
                "latest_status": latest.info.status if latest else None,
            }
        )
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("study", "experiment", "runs", "latest run", "status")
    for row in rows:
        table.add_row(row["name"], row["experiment_id"], str(row["study_runs"]), str(row["latest_run_id"]), str(row["latest_status"]))
    console.print(table)


@study_app.command("show")
@friendly
def study_show(
    name: str = typer.Argument(..., help="Study name."),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="A specific study run (default: the newest)."),
    workspace: Optional[Path] = WorkspaceOpt,
    tracking_uri: Optional[str] = TrackingOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Show a study run and its trials: the best one marked, the epochs each ran, and those the scheduler stopped early."""
    from xattn.tracking.runs import child_runs, find_parent_run, stopped_early_at

    client = connect(_stored_workspace(workspace, tracking_uri))
    parent = find_parent_run(client, name, run_id)
    children = child_runs(client, parent)
    best_run_id = parent.data.tags.get(tags.BEST_RUN_ID)
    metric = parent.data.tags.get(tags.METRIC, "best_val_loss")
    max_epochs = int(parent.data.params.get("max_epochs", 0)) or None

    summary = {
        "name": name,
        "experiment_id": parent.info.experiment_id,
        "parent_run_id": parent.info.run_id,
        "status": parent.info.status,
        "best_run_id": best_run_id,
        "metric": metric,
        "max_epochs": max_epochs,
        "trials": [
            {
                "run_id": run.info.run_id,
                "parent_run_id": run.data.tags.get(tags.PARENT_RUN),
                "ray_trial_id": run.data.tags.get(tags.RAY_TRIAL_ID),
                "optuna_trial_number": run.data.tags.get(tags.OPTUNA_TRIAL_NUMBER),
                "role": run.data.tags.get(tags.ROLE, "search"),
                "family": run.data.tags.get(tags.ARM) or run.data.tags.get(tags.FAMILY),
                "run_name": run.data.tags.get(tags.RUN_NAME),
                "status": run.info.status,
                "best": run.info.run_id == best_run_id,
                "epochs": int(run.data.tags[tags.EPOCHS_RUN]) if tags.EPOCHS_RUN in run.data.tags else None,
                "stopped_early_at": stopped_early_at(run, max_epochs),
                "params": dict(run.data.params),
                "metrics": dict(run.data.metrics),
            }
            for run in children
        ],
    }
    if as_json:
        print(json.dumps(summary))
        return
    console.print(f"study {name}: run {parent.info.run_id} ({parent.info.status}), {len(children)} runs; * marks the best trial (by {metric})", highlight=False)
    varying, fixed = _split_params(summary["trials"])
    table = Table("", "run", "status", "epochs", metric, "test_pearson", "params that differ")
    for trial in summary["trials"]:
        m = trial["metrics"]
        status = trial["status"] if trial["stopped_early_at"] is None else f"stopped early (epoch {trial['stopped_early_at']})"
        epochs = "-" if trial["epochs"] is None else f"{trial['epochs']}/{max_epochs}" if max_epochs else str(trial["epochs"])
        table.add_row(
            "*" if trial["best"] else "",
            trial["run_name"] or trial["run_id"],
            status,
            epochs,
            f"{m[metric]:.4f}" if metric in m else "-",
            f"{m['test_pearson']:.3f}" if "test_pearson" in m else "-",
            ", ".join(f"{k}={_short_number(v)}" for k, v in sorted(trial["params"].items()) if k in varying[trial["family"]]),
        )
    console.print(table)
    for family, params in fixed.items():
        if params:
            console.print(f"fixed for {family}: " + ", ".join(f"{k}={_short_number(v)}" for k, v in sorted(params.items())), highlight=False)


def _split_params(trials: list[dict]) -> tuple[dict[str, set[str]], dict[str, dict[str, str]]]:
    """Per family (or arm): the params whose values differ between its runs, and the rest with
    their one value, so the table shows what the search changed and not the same settings 50 times."""
    by_family: dict[str, list[dict[str, str]]] = {}
    for trial in trials:
        by_family.setdefault(trial["family"], []).append(trial["params"])
    varying, fixed = {}, {}
    for family, params in by_family.items():
        keys = set().union(*params)
        varying[family] = {k for k in keys if len({p.get(k) for p in params}) > 1}
        fixed[family] = {k: params[0][k] for k in keys - varying[family] if k in params[0]}
    return varying, fixed


def _short_number(text: str) -> str:
    """MLflow params are strings: show long floats with 3 significant digits."""
    try:
        return text if "." not in text and "e" not in text else f"{float(text):.3g}"
    except ValueError:
        return text


@app.command("compare")
@friendly
def compare(
    study: str = typer.Argument(..., help="Study name (run with compare_with)."),
    output: str = typer.Option("table", "--format", help="table | csv | json | markdown"),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="A specific study run (default: the newest)."),
    workspace: Optional[Path] = WorkspaceOpt,
    tracking_uri: Optional[str] = TrackingOpt,
) -> None:
    """Print the comparison of model families: mean and sd over folds x seeds, paired differences."""
    if output not in ("table", "csv", "json", "markdown"):
        raise XattnError(f"--format {output!r}: choose table, csv, json or markdown")
    ws = _stored_workspace(workspace, tracking_uri)

    from xattn.tuning.comparison import comparison_frame, comparison_markdown, format_cell, load_comparison

    comparison = load_comparison(connect(ws), study, run_id)
    if output == "json":
        print(json.dumps(comparison))
        return
    frame = comparison_frame(comparison)
    if output == "csv":
        print(frame.to_csv(index=False), end="")
        return
    if output == "markdown":
        print(comparison_markdown(comparison))
        return
    table = Table(title=f"{study}: diff = {comparison['reference']} - baseline, paired on fold and seed")
    nulls = next((entry["nulls"] for entry in comparison["families"] if "nulls" in entry), None)
    null_columns = (f"{nulls['method']} nulls: r", "p null") if nulls else ()
    for column in ("family", "n", "test r", "test MSE", "test R2", "diff r [95% CI]", "p", "search: rank r(val, test)", *null_columns):
        table.add_column(column, no_wrap=True)
    for entry in comparison["families"]:
        diff = entry.get("vs_reference")
        null = entry.get("nulls")
        null_cells = (f"{format_cell(null['mean'])} ± {format_cell(null['sd'])} (N={null['n']})", format_cell(null["p"])) if null else ("-", "-")
        table.add_row(
            entry["family"],
            str(entry["n_runs"]),
            f"{format_cell(entry['test_pearson_mean'])} ± {format_cell(entry['test_pearson_sd'])}",
            format_cell(entry["test_mse_mean"]),
            format_cell(entry["test_r2_mean"]),
            f"{format_cell(diff['mean_difference'])} [{format_cell(diff['ci95_low'])}, {format_cell(diff['ci95_high'])}]" if diff else "-",
            format_cell(diff["p_wilcoxon"]) if diff else "-",
            format_cell(entry.get("search_val_test_spearman", math.nan)),
            *(null_cells if nulls else ()),
        )
    console.print(table)
    agreement = comparison.get("search_agreement")
    if agreement and agreement["spearman"] == agreement["spearman"]:
        console.print(
            f"search, every family: validation {agreement['metric']} ranks the {agreement['n_trials']} trials by test r "
            f"with Spearman {agreement['spearman']:+.2f} (p = {agreement['p_value']:.2g})",
            highlight=False,
        )


@app.command("compare-local")
@friendly
def compare_local(
    spec_path: Path = typer.Argument(..., metavar="SPEC", help="Study spec with compare_with, e.g. studies/s100-compare.yaml."),
    max_epochs: Optional[str] = typer.Option(None, "--max-epochs", metavar="N", help="Override budget.max_epochs."),
    sets: list[str] = typer.Option([], "--set", help="Override any spec field: --set comparison.seeds=2 (repeatable)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: cuda when the spec asks for GPUs and one is there)."),
    mirror: Optional[Path] = MirrorOpt,
    json_out: Optional[Path] = typer.Option(None, "--json-out", help="Also write the comparison and every run to this JSON file."),
) -> None:
    """Train every compared family at its fixed settings on K folds x S seeds here, without Ray or MLflow.

    The same grid `xattn study run` retrains with `comparison.tune: false`, one run after
    another in this process; nothing is logged. For a GPU node without the platform, or a
    second check of a logged comparison.
    """
    from xattn.data.datasets import data_mirror
    from xattn.paths import ensure_can_create
    from xattn.tuning.comparison import comparison_markdown
    from xattn.tuning.local_comparison import run_local_comparison
    from xattn.tuning.spec import load_spec
    from xattn.tuning.trial import preflight

    overrides = _parse_sets(sets)
    if max_epochs is not None:
        overrides["budget.max_epochs"] = max_epochs
    spec = load_spec(spec_path, overrides)
    if not spec.compare_with:
        raise XattnError(f"{spec_path}: the spec has no compare_with: name the baselines, e.g. --set compare_with=all_baselines")
    mirror_path = data_mirror(mirror)
    mirror = str(mirror_path) if mirror_path else None
    preflight(spec, mirror)
    if json_out is not None:
        if json_out.is_dir():
            raise XattnError(f"--json-out {json_out} is a folder: name a file, e.g. {json_out / 'comparison.json'}")
        if not json_out.parent.is_dir():
            raise XattnError(f"--json-out {json_out}: folder {json_out.parent} does not exist")
        ensure_can_create(json_out.parent, "--json-out", "choose another --json-out")

    finished: list = []

    def save(comparison: dict | None) -> None:
        """Rewritten after every run, so a run cut short keeps what it finished."""
        if json_out is None:
            return
        runs_json = [{**run.result.__dict__, "epochs": run.epochs, "seconds": run.seconds} for run in finished]
        partial = json_out.with_name(json_out.name + ".partial")
        partial.write_text(json.dumps({"comparison": comparison, "runs": runs_json}, indent=2))
        partial.replace(json_out)

    def report(run, done: int, total: int) -> None:
        finished.append(run)
        save(None)
        result = run.result
        console.print(
            f"[{done}/{total}] {result.family} fold {result.fold} seed {result.seed}: "
            f"test r {result.metrics.get('test_pearson', float('nan')):.3f} ({run.epochs} epochs, {run.seconds:.0f} s)",
            highlight=False,
            soft_wrap=True,
        )

    comparison, _ = run_local_comparison(spec, mirror=mirror, device=device, on_run=report)
    save(comparison)
    print(comparison_markdown(comparison))


@app.command("report")
@friendly
def report(
    study: str = typer.Argument(..., help="Study name."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for NAME.html, or a file ending in .html (default: WORKSPACE/reports/NAME.html)."),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="A specific study run (default: the newest)."),
    workspace: Optional[Path] = WorkspaceOpt,
    tracking_uri: Optional[str] = TrackingOpt,
    optuna_storage: Optional[str] = OptunaOpt,
    mirror: Optional[Path] = MirrorOpt,
) -> None:
    """Write one self-contained HTML page of a study (finished, running or interrupted) that opens offline."""
    ws = _stored_workspace(workspace, tracking_uri, optuna_storage)

    from xattn.reporting.report import write_report

    path = write_report(study, ws, out, run_id=run_id, mirror=str(mirror) if mirror else None)
    print(path)


@app.command("doctor")
@friendly
def doctor(
    workspace: Optional[Path] = WorkspaceOpt,
    tracking_uri: Optional[str] = TrackingOpt,
    optuna_storage: Optional[str] = OptunaOpt,
    address: Optional[str] = AddressOpt,
    mirror: Optional[Path] = MirrorOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Check every store and service a study would use: reachable, writable, compatible."""
    from xattn.doctor import report_json, run_checks

    ws = _workspace(workspace, tracking_uri, optuna_storage, create=False)
    checks = run_checks(ws, address=address, mirror=str(mirror) if mirror else None)
    table = Table(title="xattn doctor")
    for column in ("check", "where", "", "detail"):
        table.add_column(column, overflow="fold")
    for check in checks:
        table.add_row(check.name, check.target, "[green]ok[/]" if check.ok else "[red]FAIL[/]", check.detail)
    console.print(table)
    if as_json:
        print(report_json(checks))
    failed = [check for check in checks if not check.ok]
    if failed:
        err_console.print(f"[red]error:[/] {failed[0].name}: {failed[0].detail}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)


@app.command("ui")
@friendly
def ui(
    workspace: Optional[Path] = WorkspaceOpt,
    tracking_uri: Optional[str] = TrackingOpt,
    port: int = typer.Option(5000, "--port", min=1, max=65535, help="Port of the MLflow UI."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; keep 127.0.0.1 unless you mean to share it."),
    workers: int = typer.Option(1, "--workers", min=1, help="Server worker processes (one serves a person; each costs seconds to start)."),
) -> None:
    """Open the MLflow UI on the workspace's tracking store; it ends, with every process it started, when this command does."""
    from xattn.processes import check_port, run_server

    ws = _workspace(workspace, tracking_uri, create=False)
    if ws.tracking_uri.startswith(("http://", "https://")):
        console.print(f"the tracking store is a server: open {masked(ws.tracking_uri)} in a browser", highlight=False)
        return
    ws = _stored_workspace(workspace, tracking_uri)
    check_port(host, port, "another MLflow UI?")
    console.print(f"MLflow UI on http://{host}:{port} (Ctrl-C to stop); store {ws.tracking_uri}", highlight=False)
    console.print("  studies are model training: pick [bold]Model training[/] in its sidebar once (MLflow starts a browser on GenAI)", highlight=False)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", ws.tracking_uri, "--host", host, "--port", str(port), "--workers", str(workers)]
    raise typer.Exit(run_server(command))


@app.command("dashboard")
@friendly
def dashboard(
    workspace: Optional[Path] = WorkspaceOpt,
    optuna_storage: Optional[str] = OptunaOpt,
    port: int = typer.Option(8080, "--port", min=1, max=65535, help="Port of the Optuna dashboard."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to bind; keep 127.0.0.1 unless you mean to share it (the dashboard can delete studies)."),
) -> None:
    """Open optuna-dashboard on the workspace's Optuna storage: history, importances, slices of each search."""
    from xattn.dashboard import serve

    ws = _workspace(workspace, None, optuna_storage, create=False)

    def announce(url: str, studies: list[str]) -> None:
        console.print(f"Optuna dashboard on {url} (Ctrl-C to stop); {len(studies)} Optuna studies in {masked(ws.optuna_storage)}", highlight=False)

    serve(ws.optuna_storage, host, port, announce=announce)


@app.command("export")
@friendly
def export(
    study: str = typer.Argument(..., help="Study name, or a registered model: models:/NAME@best or models:/NAME/VERSION."),
    out: Path = typer.Option(..., "--out", help="Folder to write the export to."),
    run_id: Optional[str] = typer.Option(None, "--run-id", help="A specific study run (default: the newest)."),
    force: bool = typer.Option(False, "--force", help="Replace a non-empty --out folder."),
    workspace: Optional[Path] = WorkspaceOpt,
    tracking_uri: Optional[str] = TrackingOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Export the best trial's weights, config and metrics, with a sha256 manifest."""
    ws = _stored_workspace(workspace, tracking_uri)

    from xattn.export import export_best

    info = export_best(study, out, ws, run_id=run_id, force=force)
    console.print(f"exported trial {info['run_id']} of {study} to {info['out']}", highlight=False)
    console.print(f"  check it: xattn evaluate {shlex.quote(str(out))}", highlight=False)
    if as_json:
        print(json.dumps(info))


@app.command("evaluate")
@friendly
def evaluate(
    directory: Path = typer.Argument(..., metavar="DIR", help="An export folder (xattn export)."),
    mirror: Optional[Path] = MirrorOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Rebuild the model from an export and print its test metrics on the held-out regions."""
    from xattn.export import evaluate_export

    result = evaluate_export(directory, mirror=str(mirror) if mirror else None)
    if as_json:
        print(json.dumps(result))
        return
    table = Table("metric", "now", "logged")
    for key, value in result["metrics"].items():
        logged = result["logged"].get(key)
        table.add_row(key, f"{value:.6f}", f"{logged:.6f}" if logged is not None else "-")
    console.print(table)


@app.command("attention")
@friendly
def attention(
    directory: Path = typer.Argument(..., metavar="EXPORT_DIR", help="An export folder (xattn export) of a cross_attention model."),
    pairs: str = typer.Option("test", "--pairs", help="Which of the split's pairs to average over: test, val or train."),
    out: Optional[Path] = typer.Option(None, "--out", help="Folder for the three files (default: EXPORT_DIR/attention)."),
    top_k: int = typer.Option(20, "--top-k", help="How many gene pairs top_gene_pairs.csv lists."),
    mirror: Optional[Path] = MirrorOpt,
    as_json: bool = JsonOpt,
) -> None:
    """Which genes attend to which: the model's cross-attention averaged over its held-out pairs.

    Writes gene_attention.csv (query gene x key gene, rows sum to 1), top_gene_pairs.csv (the
    strongest pairs by gene symbol) and gene_attention.png (a heatmap).
    """
    from xattn.export import verify_export
    from xattn.reporting.attention import write_attention

    verify_export(directory)
    result = write_attention(directory, out or directory / "attention", pair_set=pairs, top_k=top_k,
                             mirror=str(mirror) if mirror else None)  # fmt: skip
    console.print(f"attention of {result['n_pairs']} {pairs} pairs written to {result['out']}", highlight=False)
    for row in result["top"]:
        console.print(f"  {row['query_gene']} -> {row['key_gene']}: {row['mean_weight']:.4f}", highlight=False)
    if as_json:
        print(json.dumps(result))


@data_app.command("list")
@friendly
def data_list(as_json: bool = JsonOpt) -> None:
    """List the named datasets."""
    from xattn.data import DATASETS

    rows = [
        {"name": info.name, "regions": info.regions, "genes": info.genes, "target": info.target, "description": info.description}
        for info in DATASETS.values()
    ]
    if as_json:
        print(json.dumps(rows))
        return
    table = Table("name", "regions", "genes", "target", "description")
    for row in rows:
        table.add_row(row["name"], str(row["regions"]), str(row["genes"]), row["target"], row["description"])
    console.print(table)


@data_app.command("fetch")
@friendly
def data_fetch(
    name: str = typer.Argument(..., help="Dataset name (xattn data list)."),
    mirror: Optional[Path] = MirrorOpt,
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="Download cache (default: $XATTN_DATA_CACHE or the user cache)."),
) -> None:
    """Download a dataset's files from their pinned upstream addresses, checking sha256."""
    from xattn.data import fetch

    paths = fetch(name, mirror=mirror, cache_dir=cache_dir, progress=True)
    for key, path in paths.items():
        console.print(f"{key}: {path}", highlight=False)


@data_app.command("info")
@friendly
def data_info(name: str = typer.Argument(..., help="Dataset name (xattn data list)."), mirror: Optional[Path] = MirrorOpt, as_json: bool = JsonOpt) -> None:
    """Load a dataset and describe it."""
    from xattn.data import load_dataset

    summary = load_dataset(name, mirror=mirror).summary()
    if as_json:
        print(json.dumps(summary))
        return
    table = Table(show_header=False)
    for key, value in summary.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    console.print(table)


def main() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        code = app(standalone_mode=False)
    except NoArgsIsHelpError as error:
        error.show()
        code = 2
    except UsageError as error:
        # One line, like every other error; click's framed panel spans five.
        where = f" (see `{error.ctx.command_path} --help`)" if error.ctx is not None else ""
        err_console.print(f"[red]error:[/] {error.format_message()}{where}", highlight=False)
        code = error.exit_code
    except typer.Abort:  # Ctrl-C at a prompt or before a command took over
        code = 130
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
