"""Whether a study run is finished, running or interrupted, read from what MLflow recorded.

MLflow's run status alone cannot tell: a driver killed with SIGKILL leaves its run RUNNING
forever. The `xattn.completed` tag (written only after the summary) and whether the process
named in `xattn.driver` is still alive settle it.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING

from xattn.tracking import tags
from xattn.tracking.runs import driver_alive

if TYPE_CHECKING:
    from mlflow.entities import Run

FINISHED = "finished"
RUNNING = "running"
INTERRUPTED = "interrupted"


@dataclass(frozen=True)
class StudyState:
    state: str  # FINISHED, RUNNING or INTERRUPTED
    detail: str  # one sentence for a person: why, and what to do


def study_state(parent: Run, resume_command: str | None = None) -> StudyState:
    """Where study run `parent` stands; `resume_command` is what continues it from where the
    reader is (by default `xattn study resume NAME`, for the default workspace)."""
    run_tags = parent.data.tags
    status = parent.info.status
    resume_command = resume_command or f"xattn study resume {run_tags.get(tags.STUDY, 'NAME')}"
    resume = f"`{resume_command}` continues it"
    if tags.COMPLETED in run_tags:
        if status == "FINISHED":
            return StudyState(FINISHED, "every trial has ended and the best trial is recorded")
        return StudyState(FINISHED, f"it ended without a successful trial (run status {status})")
    driver = run_tags.get(tags.DRIVER)
    if status == "RUNNING":
        if driver_alive(driver):
            return StudyState(RUNNING, f"its driver, process {driver}, is alive; this page shows the trials so far")
        host = (driver or "").rpartition(":")[0]
        if host and host != socket.gethostname():
            # The process lives on another machine: nothing here can prove it dead.
            return StudyState(
                RUNNING,
                f"the study run is marked RUNNING, driven by process {driver} on another host (not checked from here)",
            )
        return StudyState(
            INTERRUPTED,
            f"the study run is still marked RUNNING but its driver, process {driver or '(unrecorded)'}, "
            f"is gone; {resume}",
        )
    return StudyState(INTERRUPTED, f"the study run stopped ({status}) before it completed; {resume}")
