"""Study listings (xattn.tracking.study_index): the rows `xattn study list` and `xattn study show` print,
from a tracking store written by hand, and the split of a search's params into changed and fixed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from xattn.tracking import tags
from xattn.tracking.store import Workspace
from xattn.tracking.study_index import (
    SUMMARY_FIELDS,
    compact_tables,
    list_studies,
    params_text,
    short_number,
    show_table,
    split_params,
    study_summary,
    summary_trial,
)


def trial(family: str, **params: str) -> dict:
    return {"family": family, "params": params}


def test_params_split_into_those_the_search_changed_and_those_fixed_per_family():
    trials = [
        trial("cross_attention", learning_rate="0.001", d_model="16", genevec="coexpression"),
        trial("cross_attention", learning_rate="0.003", d_model="16", genevec="coexpression"),
        trial("cge", learning_rate="0.02", batch_size="64"),
        trial("cge", learning_rate="0.02", batch_size="64"),
    ]
    varying, fixed = split_params(trials)
    assert varying == {"cross_attention": {"learning_rate"}, "cge": set()}
    assert fixed == {
        "cross_attention": {"d_model": "16", "genevec": "coexpression"},
        "cge": {"learning_rate": "0.02", "batch_size": "64"},
    }


def test_a_param_only_some_runs_have_differs_and_is_not_fixed():
    varying, fixed = split_params(
        [trial("mlp", dropout_rate="0.1"), trial("mlp", dropout_rate="0.1", pca_components="20")]
    )
    assert varying == {"mlp": {"pca_components"}}
    assert fixed == {"mlp": {"dropout_rate": "0.1"}}


def test_one_run_changes_nothing():
    assert split_params([trial("cge", learning_rate="0.02")]) == ({"cge": set()}, {"cge": {"learning_rate": "0.02"}})
    assert split_params([]) == ({}, {})


@pytest.mark.parametrize(
    "text, shown",
    [
        ("0.0024934567", "0.00249"),
        ("1e-05", "1e-05"),
        ("128", "128"),
        ("coexpression", "coexpression"),  # an "e" but no number
        ("[64, 32]", "[64, 32]"),
        ("0.3", "0.3"),
        ("True", "True"),
    ],
)
def test_short_numbers(text, shown):
    assert short_number(text) == shown


def test_params_text_is_sorted_and_only_the_keys_asked_for():
    params = {"nhead": "4", "learning_rate": "0.0013987", "d_model": "32"}
    assert params_text(params) == "d_model=32, learning_rate=0.0014, nhead=4"
    assert params_text(params, {"nhead", "learning_rate"}) == "learning_rate=0.0014, nhead=4"
    assert params_text(params, set()) == ""


def fake_run(run_id: str, *, status: str = "FINISHED", params=None, metrics=None, **run_tags) -> SimpleNamespace:
    return SimpleNamespace(
        info=SimpleNamespace(run_id=run_id, status=status),
        data=SimpleNamespace(tags=dict(run_tags), params=dict(params or {}), metrics=dict(metrics or {})),
    )


def test_a_summary_trial_is_its_trial_row_with_the_arm_as_family():
    run = fake_run(
        "r1",
        params={"learning_rate": "0.001"},
        metrics={"best_val_loss": 0.5},
        **{tags.FAMILY: "cross_attention", tags.ARM: "cross_attention:no_alibi", tags.EPOCHS_RUN: "3",
           tags.SCHEDULER_STOPPED_AT: "3", tags.PARENT_RUN: "p", tags.ROLE: "final", tags.FOLD: "0"},
    )  # fmt: skip
    row = summary_trial(run, max_epochs=10, best_run_id="r1")
    assert tuple(row) == SUMMARY_FIELDS
    assert row["family"] == "cross_attention:no_alibi" and row["role"] == "final" and row["best"]
    assert row["epochs"] == 3 and row["stopped_early_at"] == 3 and row["parent_run_id"] == "p"
    plain = summary_trial(fake_run("r2"), max_epochs=None, best_run_id="r1")
    assert plain["family"] is None and plain["role"] == "search" and not plain["best"]
    assert plain["epochs"] is None and plain["stopped_early_at"] is None


def summary(trials: list[dict], max_epochs=4, metric="best_val_loss") -> dict:
    return {"metric": metric, "max_epochs": max_epochs, "trials": trials}


def shown_trial(
    run_id, family, params, metrics, *, epochs=4, stopped=None, best=False, status="FINISHED", run_name=None
):
    return {"run_id": run_id, "run_name": run_name, "family": family, "params": params, "metrics": metrics,
            "epochs": epochs, "stopped_early_at": stopped, "best": best, "status": status}  # fmt: skip


def test_the_show_table_marks_the_best_shows_early_stops_and_only_the_params_that_differ():
    trials = [
        shown_trial("a", "cross_attention", {"learning_rate": "0.001", "d_model": "16"},
                    {"best_val_loss": 0.51234, "test_pearson": 0.4321}, best=True, run_name="trial-0"),
        shown_trial("b", "cross_attention", {"learning_rate": "0.0031234", "d_model": "16"},
                    {"best_val_loss": 0.6}, epochs=2, stopped=2),
        shown_trial("c", "cge", {"learning_rate": "0.02"}, {}, epochs=None, status="FAILED"),
    ]  # fmt: skip
    table = show_table(summary(trials))
    assert table.columns == ("", "run", "status", "epochs", "best_val_loss", "test_pearson", "params that differ")
    assert table.rows == [
        ("*", "trial-0", "FINISHED", "4/4", "0.5123", "0.432", "learning_rate=0.001"),
        ("", "b", "stopped early (epoch 2)", "2/4", "0.6000", "-", "learning_rate=0.00312"),
        ("", "c", "FAILED", "-", "-", "-", ""),
    ]
    assert table.fixed == {"cross_attention": "d_model=16", "cge": "learning_rate=0.02"}


def test_the_show_table_without_a_budget_shows_bare_epochs_and_leaves_out_families_with_nothing_fixed():
    trials = [
        shown_trial("a", "mlp", {"dropout_rate": "0.1"}, {}, epochs=7),
        shown_trial("b", "mlp", {"dropout_rate": "0.2"}, {}, epochs=3),
    ]
    table = show_table(summary(trials, max_epochs=None, metric="best_val_pearson"))
    assert [row[3] for row in table.rows] == ["7", "3"]
    assert table.columns[4] == "best_val_pearson" and table.fixed == {}


def test_the_compact_tables_group_by_family_and_name_runs_by_what_differs():
    """For an 80-column terminal: the family, and the fold or seed every run of it shares, leave
    the run cells; one changed param a line, floats short."""
    trials = [
        shown_trial("a", "cross_attention", {"learning_rate": "0.0012345", "nhead": "2"}, {"best_val_loss": 0.5},
                    best=True, run_name="cross_attention-trial-0-fold0-seed0"),
        shown_trial("b", "cross_attention", {"learning_rate": "0.003", "nhead": "4"}, {}, epochs=2, stopped=2,
                    run_name="cross_attention-trial-1-fold1-seed0"),
        shown_trial("c", "cge", {}, {"test_pearson": 0.25}, run_name="cge-final-fold1-seed0"),
        shown_trial("d", "cge", {}, {}, status="FAILED", epochs=None, run_name="cge-final-fold1-seed1"),
        shown_trial("e", "mlp", {}, {}, status="RUNNING", epochs=None),
    ]  # fmt: skip
    tables = compact_tables(summary(trials))
    assert [(table.family, table.shared) for table in tables] == [
        ("cross_attention", "seed 0"), ("cge", "fold 1"), ("mlp", "")
    ]  # fmt: skip
    assert tables[0].columns == ("", "run", "status", "epochs", "best val loss", "test r", "params that differ")
    assert tables[0].rows == [
        ("*", "trial-0, fold 0", "finished", "4/4", "0.5000", "-", "learning_rate=0.00123\nnhead=2"),
        ("", "trial-1, fold 1", "stopped early", "2/4", "-", "-", "learning_rate=0.003\nnhead=4"),
    ]
    assert [row[1:3] for row in tables[1].rows] == [("final, seed 0", "finished"), ("final, seed 1", "failed")]
    assert tables[1].rows[0][5] == "0.250"
    assert tables[2].rows[0][1:3] == ("e", "running")  # no run name: its id


def test_a_store_not_created_yet_lists_no_studies_and_stays_uncreated(tmp_path):
    workspace = Workspace.open(tmp_path / "ws", create=False)
    assert list_studies(workspace) == []
    assert not (tmp_path / "ws").exists()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A tracking store as a study leaves it, written by hand: a study with two study runs (the
    newer with two trials, one best), an experiment of no study, a study with no study run yet."""
    from mlflow.tracking import MlflowClient

    workspace = Workspace.open(tmp_path_factory.mktemp("ws"))
    client = MlflowClient(workspace.tracking_uri)
    client.create_experiment("not-a-study")
    client.create_experiment("empty", tags={tags.STUDY: "empty"})
    study = client.create_experiment("demo", tags={tags.STUDY: "demo"})
    older = client.create_run(study, tags={tags.ROLE: "study"}, start_time=1_000)
    client.set_terminated(older.info.run_id, "KILLED")
    parent = client.create_run(study, tags={tags.ROLE: "study", tags.METRIC: "best_val_pearson"}, start_time=2_000)
    client.log_param(parent.info.run_id, "max_epochs", "5")
    children = []
    for i, (rate, epochs) in enumerate((("0.001", "5"), ("0.01", "2"))):
        child = client.create_run(study, start_time=3_000 + i, tags={
            tags.PARENT_RUN: parent.info.run_id, tags.FAMILY: "cross_attention", tags.RUN_NAME: f"trial-{i}",
            tags.EPOCHS_RUN: epochs, **({tags.SCHEDULER_STOPPED_AT: epochs} if epochs != "5" else {}),
        })  # fmt: skip
        client.log_param(child.info.run_id, "learning_rate", rate)
        client.log_param(child.info.run_id, "d_model", "16")
        client.log_metric(child.info.run_id, "best_val_pearson", 0.5 - i / 10)
        client.set_terminated(child.info.run_id)
        children.append(child.info.run_id)
    client.set_tag(parent.info.run_id, tags.BEST_RUN_ID, children[0])
    client.set_terminated(parent.info.run_id)
    return SimpleNamespace(
        workspace=workspace, client=client, parent=parent.info.run_id, older=older.info.run_id, children=children
    )


def test_list_studies_names_each_study_with_its_newest_run(store):
    rows = {row["name"]: row for row in list_studies(store.workspace)}
    assert set(rows) == {"demo", "empty"}
    assert rows["demo"]["study_runs"] == 2 and rows["demo"]["latest_run_id"] == store.parent
    assert rows["demo"]["latest_status"] == "FINISHED"
    assert (rows["empty"]["study_runs"], rows["empty"]["latest_run_id"], rows["empty"]["latest_status"]) == (
        0,
        None,
        None,
    )


def test_the_summary_of_a_study_run_lists_its_trials_oldest_first(store):
    shown = study_summary(store.client, "demo")
    assert shown["parent_run_id"] == store.parent and shown["metric"] == "best_val_pearson" and shown["max_epochs"] == 5
    assert shown["best_run_id"] == store.children[0]
    assert [t["run_id"] for t in shown["trials"]] == store.children
    assert [t["best"] for t in shown["trials"]] == [True, False]
    assert [t["stopped_early_at"] for t in shown["trials"]] == [None, 2]
    table = show_table(shown)
    assert [row[-1] for row in table.rows] == ["learning_rate=0.001", "learning_rate=0.01"]
    assert table.fixed == {"cross_attention": "d_model=16"}
    older = study_summary(store.client, "demo", store.older)
    assert older["status"] == "KILLED" and older["trials"] == [] and older["max_epochs"] is None


def test_a_study_that_is_not_there_is_one_line(store):
    from xattn.errors import StudyNotFound

    with pytest.raises(StudyNotFound, match="no study named 'nope'.*studies here: demo, empty"):
        study_summary(store.client, "nope")
