"""The main job: every run `kd-pipeline materialize` starts, several at a time.

A run is one Dagster job over one partition (`execute_in_process`, the persistent instance),
so each run is its own entry in the UI and a failed partition fails only its own run.
Runs go to a pool of worker processes, as many as the instance's `max_concurrent_runs`
(dagster.yaml, `concurrency.runs`) and the slots of the `duckdb` pool (`concurrency.pools`)
allow; the instance still enforces the pool across processes (runs from the UI share it).
The workers load the code location once each, so a run costs its steps, not an interpreter
start.

Order: a job's runs start once every run of the jobs it waits on has finished (succeeded or
failed, as the sequential loop did): the earlier jobs of the main job whose assets it reads
(its assets' parents) or also materialises (two jobs never write one asset at once).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

import dagster as dg

from kd_pipeline.instance import (
    COMMAND_PID_TAG,
    STOPPING,
    command_instance,
    release_orphaned_runs,
)


@dataclass(frozen=True)
class Step:
    """One run of the main job: a job name and its partition (None: unpartitioned)."""

    job: str
    partition: str | None

    @property
    def label(self) -> str:
        return self.job + (f" [{self.partition}]" if self.partition else "")


@dataclass(frozen=True)
class Outcome:
    """How one run ended: its step, whether it succeeded, its Dagster run id."""

    step: Step
    success: bool
    run_id: str | None  # None when the run could not start (its worker died)
    error: str | None = None


def job_waits(defs: dg.Definitions, jobs: Sequence[str]) -> dict[str, frozenset[str]]:
    """For each job (in main-job order), the earlier jobs whose runs must all have finished
    before its own start: those materialising one of its assets' parents or one of its
    assets.

    Raises ValueError naming the job and the asset when a job reads an asset that only a
    later job materialises (the order of `jobs` would run it on stale or missing input)."""
    graph = defs.resolve_asset_graph()
    owned = {
        name: set(defs.resolve_job_def(name).asset_layer.executable_asset_keys) for name in jobs
    }
    waits: dict[str, frozenset[str]] = {}
    for index, name in enumerate(jobs):
        reads = set(owned[name])
        for key in owned[name]:
            reads |= graph.get(key).parent_keys
        earlier_owned = set().union(owned[name], *(owned[e] for e in jobs[:index]))
        for later in jobs[index + 1 :]:
            too_late = (reads & owned[later]) - earlier_owned
            if too_late:
                asset = min(too_late).to_user_string()
                raise ValueError(
                    f"main job order: {name} reads {asset}, which the later job {later} "
                    "materialises; put that job first"
                )
        waits[name] = frozenset(earlier for earlier in jobs[:index] if owned[earlier] & reads)
    return waits


def main_job_steps(defs: dg.Definitions, jobs: Sequence[str]) -> list[Step]:
    """Every run of the main job: each job once per partition, in main-job order."""
    steps = []
    for name in jobs:
        partitions_def = defs.resolve_job_def(name).partitions_def
        keys = partitions_def.get_partition_keys() if partitions_def else [None]
        steps += [Step(name, key) for key in keys]
    return steps


def default_runs_at_once(
    instance: dg.DagsterInstance, defs: dg.Definitions, jobs: Sequence[str]
) -> int:
    """How many runs to execute at once: the instance's `concurrency.runs.max_concurrent_runs`
    (dagster.yaml), capped by the smallest slot limit of the pools the jobs' steps claim
    (`concurrency.pools`); the number of cores when neither sets a limit.

    A run executed in process holds at most one slot at a time, so that many runs never wait
    on a pool. Waiting costs more than it gains on small partitions: Dagster re-checks a step
    blocked on a pool after 1 s, backing off to 15 s."""
    config = instance.get_concurrency_config()
    queue = config.run_queue_config
    limits = [queue.max_concurrent_runs] if queue is not None else []
    for pool in sorted(pools_used(defs, jobs)):
        slots = instance.event_log_storage.get_concurrency_info(pool).slot_count
        limits.append(slots or config.pool_config.default_pool_limit or -1)
    limits = [limit for limit in limits if limit > 0]
    return min(limits) if limits else (os.cpu_count() or 1)


def pools_used(defs: dg.Definitions, jobs: Sequence[str]) -> set[str]:
    """The concurrency pools the steps of these jobs claim (e.g. `duckdb`)."""
    return {
        node.pool
        for name in jobs
        for node in defs.resolve_job_def(name).graph.node_defs
        if getattr(node, "pool", None)
    }


_worker_instance: dg.DagsterInstance | None = None


_command_pid: int | None = None

# A run's tag naming the submission that started it: after the pool broke, a step whose
# submission has no run never started (it was queued behind the dead worker) and is retried.
SUBMISSION_TAG = "kd-pipeline/submission"


# How often a worker checks that the command that started it is still alive (seconds).
PARENT_CHECK_SECONDS = 1.0


def _start_worker(command_pid: int) -> None:
    """In each worker: Ctrl-C and a hang-up sent to the terminal's whole process group are
    the parent's to handle (it kills the workers and cancels their runs itself): they stay
    blocked here, whatever handler Dagster installs while it executes. SIGTERM is not
    blocked: Python's pool stops its workers with it when one of them died. A worker whose
    command is gone (SIGKILLed, OOM-killed) exits within PARENT_CHECK_SECONDS: the pool's
    pipes never report it (every worker holds their other end), so it would wait forever,
    or finish a run nobody reports; its run is then marked failed by the next
    `kd-pipeline materialize` or the daemon's `release_dead_runs`."""
    global _command_pid
    _command_pid = command_pid
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGHUP})
    threading.Thread(target=_exit_with_parent, args=(command_pid,), daemon=True).start()


def _exit_with_parent(command_pid: int) -> None:
    while os.getppid() == command_pid:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(1)


def _execute(
    step: Step, run_config: dict, tags: Callable[[], dict[str, str]], submission: str
) -> Outcome:
    """Run one step in this worker, against the instance of DAGSTER_HOME."""
    from kd_pipeline.definitions import defs

    global _worker_instance
    if _worker_instance is None:
        _worker_instance = command_instance()
    result = defs.resolve_job_def(step.job).execute_in_process(
        partition_key=step.partition,
        instance=_worker_instance,
        raise_on_error=False,
        run_config=run_config,
        tags={**tags(), COMMAND_PID_TAG: str(_command_pid), SUBMISSION_TAG: submission},
    )
    return Outcome(step, result.success, result.run_id)


MAX_POOL_RESTARTS = 3


def run_steps(
    steps: Sequence[Step],
    waits: dict[str, frozenset[str]],
    runs_at_once: int,
    run_config: dict,
    tags: Callable[[], dict[str, str]],
) -> Iterator[Outcome]:
    """Run the steps on `runs_at_once` worker processes, yielding each outcome as its run
    finishes. A step starts once no step of a job it waits on is pending or running.

    `tags()` is called in the worker, so a run carries the pid of the process executing it
    (what `instance.release_orphaned_runs` judges). A worker killed mid-run (OOM killer,
    segfault) breaks the pool, and Python then terminates the other workers too: the runs
    they were executing are marked failed with their pool slots freed, yielded as failed,
    and the steps not started yet (those waiting for a worker included) go to a new pool (at
    most MAX_POOL_RESTARTS times).
    Nothing more is started or yielded once a stop signal is being handled
    (`instance.STOPPING`). Raises ValueError when runs_at_once < 1.
    """
    if runs_at_once < 1:
        raise ValueError(f"runs at once: {runs_at_once}, expected at least 1")
    unfinished = Counter(step.job for step in steps)
    pending = list(steps)
    restarts = 0
    while pending and not STOPPING.is_set():
        running: dict[Future[Outcome], Step] = {}
        submissions: dict[Future[Outcome], str] = {}
        broken = False
        context = multiprocessing.get_context("spawn")
        workers = min(runs_at_once, len(pending))
        with ProcessPoolExecutor(
            workers, mp_context=context, initializer=_start_worker, initargs=(os.getpid(),)
        ) as pool:
            while (pending or running) and not broken and not STOPPING.is_set():
                ready = [s for s in pending if not any(unfinished[j] for j in waits.get(s.job, ()))]
                for step in ready[: max(0, runs_at_once - len(running))]:
                    submission = uuid.uuid4().hex
                    try:
                        future = pool.submit(_execute, step, run_config, tags, submission)
                    except BrokenProcessPool:
                        broken = True
                        break
                    running[future] = step
                    submissions[future] = submission
                    pending.remove(step)
                if broken:
                    continue
                if not running:
                    stuck = sorted({step.job for step in pending})
                    raise RuntimeError(f"main job: nothing can start; stuck jobs: {stuck}")
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    if isinstance(future.exception(), BrokenProcessPool):
                        broken = True
                        continue
                    step = running.pop(future)
                    unfinished[step.job] -= 1
                    if not STOPPING.is_set():
                        yield _outcome(step, future)
        # Leaving the block joined every worker: the runs of the dead ones can be judged.
        if STOPPING.is_set():
            return
        if running:
            with dg.DagsterInstance.get() as instance:
                release_orphaned_runs(instance)
                for future, step in list(running.items()):
                    if not _started(instance, submissions[future]):
                        del running[future]
                        pending.insert(0, step)
        for future, step in running.items():
            unfinished[step.job] -= 1
            yield _outcome(step, future)
        if broken and pending:
            restarts += 1
            if restarts > MAX_POOL_RESTARTS:
                for step in pending:
                    yield Outcome(step, False, None, "not started: the worker pool broke again")
                return


def _started(instance: dg.DagsterInstance, submission: str) -> bool:
    """Whether the submission got as far as creating its run."""
    runs = instance.get_run_records(
        filters=dg.RunsFilter(tags={SUBMISSION_TAG: submission}), limit=1
    )
    return bool(runs)


def _outcome(step: Step, future: Future[Outcome]) -> Outcome:
    """The outcome of a finished future: its result, or a failure naming why it has none."""
    try:
        return future.result()
    except BrokenProcessPool:
        return Outcome(step, False, None, "its worker process died; its run is marked failed")
    except Exception as exc:  # Dagster refused the run
        return Outcome(step, False, None, f"{type(exc).__name__}: {exc}")
