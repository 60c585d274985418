"""The Dagster instance the command line runs against, and recovery from killed runs.

Every run claims slots of the `duckdb` pool (dagster.yaml) in the process that executes it:
`kd-pipeline`'s own process, a `dagster asset materialize` process, or the run worker the
UI's launcher starts. A process killed mid-run (SIGKILL, OOM killer) never releases its
slots and leaves its run STARTED forever, so every later run would wait on the pool.
`release_orphaned_runs` finds such runs and marks them failed, freeing their slots. The
process of a run is the pid its executor records in the run's first engine event
("Executing steps in process (pid: N)"), or the pid tag `kd-pipeline` sets; a run is
judged only on the host that ran it (the host tag, or any run when the instance's storage
is this machine's SQLite). It runs before every `kd-pipeline` command that materialises,
and every minute in the daemon (the `release_dead_runs` sensor).

Runs the daemon launches (UI, schedules, sensors) get their host and pid tags from the run
worker itself: `tagging_executor`, the code location's default executor, is Dagster's
`multi_or_in_process_executor` that first tags the run with the host and pid of the
process executing it. Dagster's own cover is narrower: `run_monitoring` cannot check a
DefaultRunLauncher's worker (the launcher does not support `check_run_worker_health`;
the daemon only enforces start and runtime timeouts), and the code server fails a run
whose worker died only while that code server lives (its cleanup thread polls its own
children); a machine, container or daemon group killed with its runs leaves them STARTED.

`command_instance`: the instance a `kd-pipeline` worker runs on. Its compute logs are Dagster's
local files (the UI shows a step's stdout/stderr), written without the `tail -F` and watcher
processes Dagster starts for every run to copy them live to the terminal.

`stop_cleanly_on_signals`: SIGINT, SIGTERM or SIGHUP to a `kd-pipeline` command kills its worker
processes (main_job.py), cancels its and their unfinished runs, frees their slots and exits
(130 / 143 / 129); the staged data of the run is
removed by the next write of that partition, nothing published is touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.definitions.executor_definition import multi_or_in_process_executor
from dagster._core.execution.compute_logs import redirect_to_file
from dagster._core.execution.context.system import PlanOrchestrationContext
from dagster._core.execution.plan.plan import ExecutionPlan
from dagster._core.execution.retries import RetryMode
from dagster._core.execution.step_dependency_config import StepDependencyConfig
from dagster._core.executor.base import Executor
from dagster._core.executor.init import InitExecutorContext
from dagster._core.instance.ref import InstanceRef
from dagster._core.storage.compute_log_manager import CapturedLogContext, ComputeIOType
from dagster._core.storage.local_compute_log_manager import (
    IO_TYPE_EXTENSION,
    LocalComputeLogManager,
)
from dagster._serdes import ConfigurableClassData
from dagster._utils import ensure_file, touch_file

from kd_pipeline import settings

PROJECT_ROOT = Path(__file__).resolve().parent.parent
HOST_TAG = "kd-pipeline/host"
PID_TAG = "kd-pipeline/pid"
COMMAND_PID_TAG = "kd-pipeline/command-pid"  # a worker's run: the pid of its kd-pipeline


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


class EchoAfterComputeLogManager(LocalComputeLogManager):
    """Dagster's LocalComputeLogManager (same files under the same `base_dir`), except how a
    capture reaches the terminal: Dagster mirrors each of stdout and stderr live with a
    `tail -F` process and a Python process watching it, four processes per run (about a
    quarter of a small run's CPU time on the sample). Here the captured text is written to
    the process's own stdout/stderr when the capture ends (after the run's steps)."""

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Mapping[str, Any]
    ) -> EchoAfterComputeLogManager:
        return cls(inst_data=inst_data, **config_value)

    @contextlib.contextmanager
    def capture_logs(self, log_key: Sequence[str]) -> Iterator[CapturedLogContext]:
        streams = {ComputeIOType.STDOUT: sys.stdout, ComputeIOType.STDERR: sys.stderr}
        paths = {
            io_type: self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[io_type])
            for io_type in streams
        }
        starts = {}
        for io_type, path in paths.items():
            ensure_file(path)
            starts[io_type] = os.path.getsize(path)
        try:
            with (
                redirect_to_file(sys.stdout, paths[ComputeIOType.STDOUT]),
                redirect_to_file(sys.stderr, paths[ComputeIOType.STDERR]),
            ):
                yield CapturedLogContext(log_key)
        finally:
            for io_type, stream in streams.items():
                with open(paths[io_type], encoding="utf-8", errors="replace") as captured:
                    captured.seek(starts[io_type])
                    text = captured.read()
                if text:
                    stream.write(text)
                    stream.flush()
        touch_file(self.complete_artifact_path(log_key))


def command_instance() -> dg.DagsterInstance:
    """The instance of DAGSTER_HOME for the main job's workers: its compute logs captured by
    EchoAfterComputeLogManager when dagster.yaml keeps Dagster's local compute log manager,
    and its default SQLite storage a `worker_storage.WorkerSqliteStorage` (same files; the
    event log's index kept open). Any other configured manager or storage is used as it is."""
    instance = dg.DagsterInstance.get()
    overrides: dict[str, dict] = {}
    manager = instance.compute_log_manager
    if type(manager) is LocalComputeLogManager and manager.inst_data is not None:
        config = {"base_dir": manager.inst_data.config_dict["base_dir"]}
        overrides["compute_logs"] = {
            "module": __name__,
            "class": EchoAfterComputeLogManager.__name__,
            "config": config,
        }
    storage = instance.get_ref().storage_data
    if storage is not None and storage.class_name == "DagsterSqliteStorage":
        overrides["storage"] = {
            "custom": {
                "module": "kd_pipeline.worker_storage",
                "class": "WorkerSqliteStorage",
                "config": storage.config_dict,
            }
        }
    if not overrides:
        return instance
    instance.dispose()
    home = os.environ["DAGSTER_HOME"]
    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(home, overrides=overrides))


def cli_run_tags() -> dict[str, str]:
    """Tags that let a later CLI process tell whether this run's process is still alive."""
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(os.getpid())}


class _HostTaggingExecutor(Executor):
    """An executor that tags its run with this host and pid (`cli_run_tags`), then runs the
    plan with the executor it wraps."""

    def __init__(self, inner: Executor) -> None:
        self._inner = inner

    @property
    def retries(self) -> RetryMode:
        return self._inner.retries

    @property
    def step_dependency_config(self) -> StepDependencyConfig:
        return self._inner.step_dependency_config

    def execute(
        self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan
    ) -> Iterator[dg.DagsterEvent]:
        # Always: a re-execution inherits the tags of the run it repeats, process included.
        plan_context.instance.add_run_tags(plan_context.run_id, cli_run_tags())
        yield from self._inner.execute(plan_context, execution_plan)


def _tagging_executor(init_context: InitExecutorContext) -> Executor:
    create = multi_or_in_process_executor.executor_creation_fn
    assert create is not None
    return _HostTaggingExecutor(create(init_context))


# Dagster's default executor (multiprocess, or in process; the same run config), run by the
# run worker after tagging the run with the worker's host and pid, so that
# `release_orphaned_runs` can judge a run the daemon launched on any storage.
tagging_executor = dg.ExecutorDefinition(
    name=multi_or_in_process_executor.name,
    config_schema=multi_or_in_process_executor.config_schema,
    requirements=multi_or_in_process_executor.get_requirements,
    executor_creation_fn=_tagging_executor,
    description="Dagster's multi_or_in_process_executor; tags the run with its host and pid.",
)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_local_storage(instance: dg.DagsterInstance) -> bool:
    """Whether the instance's runs can only have run on this machine (SQLite storage)."""
    from dagster._core.storage.runs.sqlite.sqlite_run_storage import SqliteRunStorage

    return isinstance(instance.run_storage, SqliteRunStorage)


def run_process_id(instance: dg.DagsterInstance, run: dg.DagsterRun) -> int | None:
    """The pid of the process executing a run: its pid tag, else the pid the executor put in
    the run's first engine event; None before the executor has started."""
    tagged = run.tags.get(PID_TAG, "")
    if tagged.isdigit():
        return int(tagged)
    records = instance.get_records_for_run(
        run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=5
    ).records
    for record in records:
        event = record.event_log_entry.dagster_event
        data = event.engine_event_data if event is not None else None
        pid = data.metadata.get("pid") if data is not None else None
        if pid is not None and str(pid.value).isdigit():
            return int(pid.value)
    return None


def release_orphaned_runs(instance: dg.DagsterInstance) -> list[str]:
    """Fail the unfinished runs of this host whose process is gone and free their pool
    slots (pending claims included); returns their run ids."""
    host = socket.gethostname()
    local = _is_local_storage(instance)
    unfinished = instance.get_runs(
        filters=dg.RunsFilter(
            statuses=[
                dg.DagsterRunStatus.STARTED,
                dg.DagsterRunStatus.STARTING,
                dg.DagsterRunStatus.CANCELING,
            ]
        )
    )
    released = []
    for run in unfinished:
        if run.tags.get(HOST_TAG, host if local else None) != host:
            continue
        pid = run_process_id(instance, run)
        if pid is None or pid == os.getpid() or _alive(pid):
            continue
        # slots first: whoever sees the run ended must see its slots free
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        instance.report_run_failed(
            run, message=f"kd-pipeline: the process running this run (pid {pid}) is gone"
        )
        released.append(run.run_id)
    return released


def cancel_own_runs(
    instance: dg.DagsterInstance, reason: str, pids: Sequence[int] = ()
) -> list[str]:
    """Mark the unfinished runs of this process, of its worker processes (main_job.py: by
    their command pid tag, or their pids `pids`) canceled and free their slots."""
    statuses = [dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING]
    host = socket.gethostname()
    by_pid = {PID_TAG: [str(pid) for pid in (os.getpid(), *pids)]}
    by_command = {COMMAND_PID_TAG: str(os.getpid())}
    own = {
        run.run_id: run
        for tags in (by_pid, by_command)
        for run in instance.get_runs(
            filters=dg.RunsFilter(statuses=statuses, tags={HOST_TAG: host, **tags})
        )
    }.values()
    for run in own:
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
        instance.report_run_canceled(run, message=f"kd-pipeline: {reason}")
        # again: a step of this process's own thread waiting on the pool may have queued
        # its claim anew in between (it keeps asking until the process exits)
        instance.event_log_storage.free_concurrency_slots_for_run(run.run_id)
    return [run.run_id for run in own]


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# Set first thing when a stop signal is handled: the main thread then starts, restarts and
# reports nothing more (main_job.run_steps, the CLI) while the watcher cancels and exits.
STOPPING = threading.Event()


def _stop(signum: int, log: Callable[[str], None]) -> None:
    """Kill this process's worker processes, cancel its and their unfinished runs, say so in
    one line, exit 128 + signum."""
    STOPPING.set()
    name = signal.Signals(signum).name
    workers = multiprocessing.active_children()
    for worker in workers:
        worker.kill()
    for worker in workers:
        worker.join(timeout=5)
    runs: list[str] = []
    if os.environ.get("DAGSTER_HOME"):
        with contextlib.suppress(Exception), dg.DagsterInstance.get() as instance:
            pids = [w.pid for w in workers if w.pid is not None]
            runs = cancel_own_runs(instance, f"stopped by {name}", pids)
    log(
        f"kd-pipeline: stopped by {name}"
        + (f"; run(s) {', '.join(r[:8] for r in runs)} canceled, pool slots freed" if runs else "")
    )
    sys.stderr.flush()
    os._exit(128 + signum)


@contextlib.contextmanager
def stop_cleanly_on_signals(log: Callable[[str], None]) -> Iterator[None]:
    """Within the block, SIGINT, SIGTERM and SIGHUP stop the command: its unfinished runs are marked
    canceled with their pool slots freed, one line says so, and the process exits with
    128 + the signal number.

    Dagster replaces Python's signal handlers while it executes and only looks at the
    interrupt between steps, so a run waiting on the pool never stopped. Python writes the
    number of every signal it catches to the wakeup fd, whatever handler is installed: a
    watcher thread reads it there and stops the process."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    previous_fd = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    # A Python-level handler for each (a no-op: the watcher acts), so SIGTERM is caught and
    # written to the wakeup fd instead of killing the process on the spot.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in _STOP_SIGNALS}

    def watch() -> None:
        while data := os.read(read_end, 1):
            if data[0] in _STOP_SIGNALS:
                _stop(data[0], log)
        os.close(read_end)

    watcher = threading.Thread(target=watch, name="kd-pipeline-signals", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(previous_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(write_end)
        watcher.join(timeout=5)
