"""The Dagster instance the command line runs against, and recovery from killed runs.

Runs started by `kd-pipeline` execute in the CLI's own process and claim slots of the
`duckdb` pool (dagster.yaml). A process killed mid-run (SIGKILL, OOM killer, a lost
machine) never releases its slots and leaves its run STARTED forever, so every later run
would wait on the pool. Each CLI run is therefore tagged with its host and pid, and before
running anything the CLI marks the runs of dead processes on this host as failed and frees
their slots. (Runs launched by the daemon are watched by Dagster's own run monitoring.)
"""

from __future__ import annotations

import fcntl
import os
import shutil
import socket
from pathlib import Path

import dagster as dg

from kd_pipeline import settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
HOST_TAG = "kd-pipeline/host"
PID_TAG = "kd-pipeline/pid"


def ensure_dagster_home() -> Path:
    """Use $DAGSTER_HOME, else `<data home>/dagster`, seeded with the project's dagster.yaml."""
    if os.environ.get("DAGSTER_HOME"):
        home = Path(os.environ["DAGSTER_HOME"]).expanduser().resolve()
    else:
        home = settings.data_home() / "dagster"
        os.environ["DAGSTER_HOME"] = str(home)
    home.mkdir(parents=True, exist_ok=True)
    project_config = PROJECT_ROOT / "dagster.yaml"
    if not (home / "dagster.yaml").exists() and project_config.exists():
        shutil.copyfile(project_config, home / "dagster.yaml")
    if not (home / "storage").exists():
        # Several CLI processes starting at once on a new home would race to create the
        # SQLite schemas (Dagster then sees two migration heads): create them once, locked.
        with open(home / ".kd-pipeline-init.lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            with dg.DagsterInstance.from_config(str(home)):
                pass
    return home


def cli_run_tags() -> dict[str, str]:
    """Tags that let a later CLI process tell whether this run's process is still alive."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def release_orphaned_runs(instance: dg.DagsterInstance) -> list[str]:
    """Fail the unfinished CLI runs whose process is gone and free their pool slots."""
    unfinished = instance.get_runs(
        filters=dg.RunsFilter(
            statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING],
            tags={HOST_TAG: socket.gethostname()},
        )
    )
    released = []
    for run in unfinished:
        pid = run.tags.get(PID_TAG, "")
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            instance.report_run_failed(
                run, message=f"kd-pipeline: the process running this run (pid {pid}) is gone"
            )
            instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
            released.append(run.run_id)
    return released
