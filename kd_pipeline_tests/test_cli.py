"""The command lines users and CI run: kd-pipeline and dagster's own, in subprocesses."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from kd_pipeline.lake import Lake
from kd_pipeline.sample import lighton_sample_dir

ROOT = Path(__file__).resolve().parent.parent


def run(args: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def cli_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["DAGSTER_HOME"] = str(tmp_path / "dagster_home")
    Path(env["DAGSTER_HOME"]).mkdir()
    return env


def test_sample_command_writes_a_mirror(tmp_path) -> None:
    out = tmp_path / "mirror"
    proc = run(
        [
            sys.executable,
            "-m",
            "kd_pipeline.cli",
            "sample",
            "--out",
            str(out),
            "--rows-per-config",
            "7",
        ],
        dict(os.environ),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == str(out)
    shards = sorted(lighton_sample_dir(out).glob("*/*.parquet"))
    assert len({s.parent.name for s in shards}) == 73
    (rows,) = duckdb.execute(
        "SELECT count(*) FROM read_parquet($g)",
        {"g": str(lighton_sample_dir(out) / "agnews/*.parquet")},
    ).fetchone()
    assert rows == 7


def test_materialize_command_runs_through_the_instance(tmp_path, lake_dir) -> None:
    env = cli_env(tmp_path)
    proc = run(
        [
            sys.executable,
            "-m",
            "kd_pipeline.cli",
            "materialize",
            "--partition",
            "agnews",
            "--partition",
            "fw_edu",
        ],
        env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == str(lake_dir)
    assert "2/2 runs succeeded" in proc.stderr
    with Lake(lake_dir).connect(read_only=True) as con:
        (keys,) = con.execute(
            "SELECT list(DISTINCT partition ORDER BY partition) FROM lighton.recommended"
        ).fetchone()
    assert keys == ["agnews", "fw-edu"]  # the alias fw_edu resolved to its config
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        runs = instance.get_runs()
        assert len(runs) == 2 and all(r.is_success for r in runs)


def test_unknown_partition_is_a_clear_error(tmp_path) -> None:
    proc = run(
        [sys.executable, "-m", "kd_pipeline.cli", "materialize", "--partition", "nope"],
        cli_env(tmp_path),
    )
    assert proc.returncode == 2
    assert "unknown LightOn config 'nope'" in proc.stderr


def test_dagster_asset_materialize_and_definitions_validate(tmp_path, lake_dir) -> None:
    env = cli_env(tmp_path)
    proc = run(
        [
            sys.executable,
            "-m",
            "dagster",
            "definitions",
            "validate",
            "-m",
            "kd_pipeline.definitions",
        ],
        env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run(
        [
            sys.executable,
            "-m",
            "dagster",
            "asset",
            "materialize",
            "-m",
            "kd_pipeline.definitions",
            "--select",
            "lighton/raw",
            "--partition",
            "fw-edu",
        ],
        env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert Lake(lake_dir).is_published(("lighton", "raw"), "fw-edu")
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        event = instance.get_latest_materialization_event(dg.AssetKey(["lighton", "raw"]))
        assert event is not None and event.dagster_event.partition == "fw-edu"


# ---- settings are validated before anything runs (issue 12 item 9) ------------------------
BAD_SETTINGS = [
    ("KD_PIPELINE_ZSTD_LEVEL", "30", "expected a zstd level from 1 to 22"),
    ("KD_PIPELINE_SOURCE", "hubb", "expected one of sample, mirror, hub"),
    ("KD_PIPELINE_DUCKDB_THREADS", "0", "expected a positive integer"),
    ("KD_PIPELINE_DUCKDB_MEMORY", "lots", "expected a size such as 4GB"),
    ("KD_PIPELINE_DUCKDB_MEMORY", "1B", "expected a size of at least 64MiB"),
    ("KD_PIPELINE_DUCKDB_MEMORY", "0GB", "expected a size of at least 64MiB"),
    ("KD_PIPELINE_DUCKDB_MEMORY", "0%", "expected a percentage of memory above 0"),
    ("KD_PIPELINE_LAKE", __file__, "expected a folder, found a file"),
    ("KD_PIPELINE_HOME", __file__ + "/home", "expected a folder, or a path where one can"),
    ("KD_PIPELINE_MAX_SHRINK", "1.5", "expected a fraction from 0 to 1"),
    ("KD_PIPELINE_HUB_TIMEOUT", "-1", "expected a positive number of seconds"),
    ("KD_PIPELINE_ZENODO_API", "zenodo.org/api", "expected an http:// or https:// URL"),
    ("KD_PIPELINE_REFRESH_CRON", "0 3 * *", "expected a cron string"),
    ("KD_PIPELINE_SAMPLE_ROWS", "-3", "expected a non-negative integer"),
    ("KD_PIPELINE_MIRROR", "/nonexistent/mirror", "expected an existing folder"),
    ("KD_PIPELINE_LAKE", "s3://", "expected s3://bucket or s3://bucket/prefix"),
    ("KD_PIPELINE_LAKE", "gs://bucket/lake", "the gs:// scheme is not supported"),
    ("KD_PIPELINE_CATALOG", "mysql:host=db", "expected sqlite:PATH or postgres:"),
    ("KD_PIPELINE_CATALOG", "postgres:", "expected sqlite:PATH or postgres:"),
    ("KD_PIPELINE_RETENTION_DAYS", "0", "expected a positive number of days"),
]


def test_prepare_of_published_data_still_refuses_a_bad_setting(tmp_path, lake_dir) -> None:
    """Published first; then each bad setting: exit 2, one line naming the variable, the
    value and what is allowed, no traceback, and no run started."""
    env = cli_env(tmp_path)
    selector = "ai.lighton.embeddings_pre_training[name=agnews]"
    prepare = [sys.executable, "-m", "kd_pipeline.cli", "prepare", selector]
    first = run(prepare, env)
    assert first.returncode == 0, first.stderr[-3000:]
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        runs_before = len(instance.get_runs())
    for variable, value, allowed in BAD_SETTINGS[:2]:
        proc = run(prepare, {**env, variable: value})
        assert proc.returncode == 2
        (line,) = proc.stderr.strip().splitlines()
        assert line == f"kd-pipeline: bad setting: {variable}={value!r}: {allowed}"
        assert proc.stdout == ""
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        assert len(instance.get_runs()) == runs_before


@pytest.mark.parametrize(("variable", "value", "allowed"), BAD_SETTINGS)
def test_every_bad_setting_is_one_line_and_exit_2(
    monkeypatch, capsys, variable, value, allowed
) -> None:
    from kd_pipeline.cli import main

    monkeypatch.setenv(variable, value)
    for command in (["ids"], ["materialize", "--partition", "agnews"]):
        assert main(command) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"kd-pipeline: bad setting: {variable}=")
        assert repr(value) in err[0] and allowed in err[0]


def test_several_bad_settings_are_all_named(monkeypatch, capsys) -> None:
    from kd_pipeline.cli import main

    monkeypatch.setenv("KD_PIPELINE_ZSTD_LEVEL", "0")
    monkeypatch.setenv("KD_PIPELINE_DUCKDB_THREADS", "x")
    assert main(["ids"]) == 2
    err = capsys.readouterr().err
    assert "KD_PIPELINE_ZSTD_LEVEL='0'" in err and "KD_PIPELINE_DUCKDB_THREADS='x'" in err


def test_a_dagster_run_with_a_bad_setting_fails_naming_it(tmp_path, lake_dir) -> None:
    """Runs not started by kd-pipeline (the UI, dagster's CLI) validate in the resources."""
    env = {**cli_env(tmp_path), "KD_PIPELINE_ZSTD_LEVEL": "30"}
    proc = run(
        [
            sys.executable,
            "-m",
            "dagster",
            "asset",
            "materialize",
            "-m",
            "kd_pipeline.definitions",
            "--select",
            "lighton/raw",
            "--partition",
            "agnews",
        ],
        env,
    )
    assert proc.returncode != 0
    assert "KD_PIPELINE_ZSTD_LEVEL='30': expected a zstd level from 1 to 22" in proc.stderr
    assert not (lake_dir / "lighton" / "raw" / "agnews").exists()


# ---- selectors that guide (issue 12 item 10, issue 13 item 9) -----------------------------
@pytest.mark.parametrize(
    ("selector", "message"),
    [
        (
            "ai.lighton.embeddings_pre_training[name=agnew]",
            "name='agnew': not a known value (did you mean 'agnews'?)",
        ),
        (
            "ai.lighton.embeddings_pre_training[name=s2orc_title_abstrct]",
            "(did you mean 's2orc_title_abstract'?)",
        ),
        (
            "ai.lighton.embeddings_pre_training[name=agnews,top_percentil=0.3]",
            "unknown key 'top_percentil' (did you mean 'top_percentile'?)",
        ),
        (
            "ai.lighton.embedding_pre_training[name=agnews]",
            "(did you mean 'ai.lighton.embeddings_pre_training'?)",
        ),
        ("ai.lighton.embeddings_pre_training.denseon_lateon[seed=1.5]", "expected an integer"),
        ("ai.lighton.embeddings_pre_training.denseon_lateon[seed=-5]", "seed='-5': must be from 0"),
        (
            "ai.lighton.embeddings_pre_training[name=agnews,min_similarity=high]",
            "min_similarity='high': expected a number",
        ),
    ],
)
def test_selector_errors_suggest_and_say_what_is_expected(selector, message) -> None:
    from kd_pipeline.prepare import resolve
    from kd_pipeline.selectors import SelectorError

    with pytest.raises(SelectorError) as caught:
        resolve(selector)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_partition_names_suggest_the_nearest_config(capsys) -> None:
    from kd_pipeline.cli import main

    assert main(["materialize", "--partition", "fw-edu2"]) == 2
    assert "unknown LightOn config 'fw-edu2' (did you mean 'fw-edu'?)" in capsys.readouterr().err


def test_ids_names_lists_the_73_configs(capsys) -> None:
    from kd_pipeline.cli import main
    from kd_pipeline.families.lighton_configs import LIGHTON_CONFIGS

    assert main(["ids", "--names"]) == 0
    names = capsys.readouterr().out.split()
    assert names == list(LIGHTON_CONFIGS) and len(names) == 73


def test_a_negative_seed_in_a_union_spec_is_refused() -> None:
    from kd_pipeline.recipes.unions import SpecError, UnionSpec

    with pytest.raises(SpecError, match=r"seed -5 must be from 0"):
        UnionSpec("mix", "a mixture", (), seed=-5)


# ---- browsing the catalog of any data home (issue 12 item 13) -----------------------------
def test_sql_command_reads_the_catalog_of_the_configured_home(tmp_path, lake_dir) -> None:
    """The README's browse command: `kd-pipeline sql` finds the catalog of whatever data
    home or lake is configured, tables need no quoting, `--csv` is for scripts."""
    env = cli_env(tmp_path)
    home = tmp_path / "elsewhere"
    env["KD_PIPELINE_HOME"] = str(home)
    env.pop("KD_PIPELINE_LAKE")
    mat = run([sys.executable, "-m", "kd_pipeline.cli", "materialize", "--partition", "npr"], env)
    assert mat.returncode == 0, mat.stderr[-3000:]
    assert mat.stdout.strip().splitlines()[-1] == str(home / "lake")
    query = "SELECT partition, count(*) AS n FROM lighton.recommended GROUP BY ALL"
    proc = run([sys.executable, "-m", "kd_pipeline.cli", "sql", query], env)
    assert proc.returncode == 0, proc.stderr
    assert "npr" in proc.stdout
    bad = run([sys.executable, "-m", "kd_pipeline.cli", "sql", "SELECT * FROM nowhere"], env)
    assert bad.returncode == 2
    (line,) = bad.stderr.strip().splitlines()
    assert line.startswith("kd-pipeline sql: Catalog Error: Table with name nowhere")
    assert "Did you mean" not in line  # DuckDB's nearest name here is a system view
    # a misspelled table or column: one line, with DuckDB's suggestion kept
    for typo, fix in (
        ("SELECT * FROM recommended", 'Did you mean "lighton.recommended"?'),
        ("SELECT partiton FROM lighton.recommended", 'Candidate bindings: "partition"'),
    ):
        bad = run([sys.executable, "-m", "kd_pipeline.cli", "sql", typo], env)
        (line,) = bad.stderr.strip().splitlines()
        assert bad.returncode == 2 and fix in line, line
    empty = run(
        [sys.executable, "-m", "kd_pipeline.cli", "sql", "SELECT 1"],
        {**env, "KD_PIPELINE_HOME": str(tmp_path / "new")},
    )
    assert empty.returncode == 2 and "no lake at" in empty.stderr
    csv = run([sys.executable, "-m", "kd_pipeline.cli", "sql", "--csv", query], env)
    assert csv.returncode == 0 and csv.stdout.splitlines()[0] == "partition,n"
    assert csv.stdout.splitlines()[1].startswith("npr,")


# ---- the main job on several worker processes (issue 14 item 7) ---------------------------
def test_materialize_runs_partitions_at_once_and_isolates_a_failing_one(tmp_path, lake_dir) -> None:
    """Three partitions on three workers: the runs overlap in time, they execute in worker
    processes (their pid tags: at least two, none the command's), the partition whose
    upstream file is not Parquet fails alone, and the other two are published."""
    from kd_pipeline.lake import Lake
    from kd_pipeline_tests.helpers import lighton_repo, pairs, write_pairs

    mirror = tmp_path / "mirror"
    for config in ("quora", "npr"):
        write_pairs(lighton_repo(mirror) / config / "train-0.parquet", pairs(30))
    broken = lighton_repo(mirror) / "agnews" / "train-0.parquet"
    broken.parent.mkdir(parents=True)
    broken.write_bytes(b"not a parquet file")
    env = {**cli_env(tmp_path), "KD_PIPELINE_MIRROR": str(mirror)}
    args = [sys.executable, "-m", "kd_pipeline.cli", "materialize", "--runs-at-once", "3"]
    for config in ("quora", "agnews", "npr"):
        args += ["--partition", config]
    proc = run(args, env)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "3 runs, 3 at a time" in proc.stderr
    assert "lighton_partitions [agnews]: FAILED" in proc.stderr
    assert "2/3 runs succeeded" in proc.stderr
    assert "failed: lighton_partitions [agnews]" in proc.stderr
    lake = Lake(lake_dir)
    assert lake.is_published(("lighton", "recommended"), "quora")
    assert lake.is_published(("lighton", "recommended"), "npr")
    assert not lake.is_published(("lighton", "raw"), "agnews")
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        records = instance.get_run_records()
    assert sorted(r.dagster_run.tags["dagster/partition"] for r in records) == [
        "agnews",
        "npr",
        "quora",
    ]
    workers = {r.dagster_run.tags["kd-pipeline/pid"] for r in records}
    (command_pid,) = {r.dagster_run.tags["kd-pipeline/command-pid"] for r in records}
    assert len(workers) >= 2 and command_pid not in workers
    spans = sorted((r.start_time, r.end_time) for r in records)
    assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans))


def test_main_job_order_follows_the_asset_graph() -> None:
    """Each job of the main job waits for the earlier jobs that publish what it reads or
    also writes; the runs are every job once per partition, 167 on the sample's defs."""
    from kd_pipeline.definitions import MAIN_JOBS, defs
    from kd_pipeline.main_job import job_waits, main_job_steps

    waits = job_waits(defs, MAIN_JOBS)
    assert waits["lighton_partitions"] == set() and waits["text_collections"] == set()
    assert waits["lighton_unions"] == {"lighton_partitions"}
    assert waits["hofstaetter_teacher_scores"] == {"text_collections"}
    assert waits["fiqa_mined"] == {"text_collections"}  # both write text/fiqa/*
    assert waits["exports_lighton_recommended"] == {"lighton_partitions"}
    assert waits["exports_fiqa_mined_scores"] == {"fiqa_mined", "text_collections"}
    steps = main_job_steps(defs, MAIN_JOBS)
    assert len(steps) == 167
    assert [s.job for s in steps[:73]] == ["lighton_partitions"] * 73
    assert steps[73].label == "lighton_unions"


# ---- the dg project shape (issue 14 item 4) ------------------------------------------------
def test_dg_checks_and_lists_the_code_location() -> None:
    """`dg check defs` and `dg list defs` work from the repo root (the [tool.dg] project),
    and list what kd_pipeline/definitions.py assembles."""
    import json

    from kd_pipeline.definitions import defs

    dg_cli = str(Path(sys.executable).parent / "dg")
    check = run([dg_cli, "check", "defs"], dict(os.environ))
    assert check.returncode == 0, check.stderr[-3000:]
    assert "All definitions loaded successfully" in check.stdout + check.stderr
    listed = run([dg_cli, "list", "defs", "--json"], dict(os.environ))
    assert listed.returncode == 0, listed.stderr[-3000:]
    found = json.loads(listed.stdout)
    assert sorted(a["asset_key"] for a in found["assets"]) == sorted(
        k.to_user_string() for k in defs.resolve_all_asset_keys()
    )
    assert "lighton_partitions" in {j["name"] for j in found["jobs"]}


def live_processes(group: int) -> list[str]:
    """The processes of a process group that are not zombies (exited, not yet reaped)."""
    ps = ["ps", "-o", "stat=,pid=,args=", "-g", str(group)]
    lines = subprocess.run(ps, capture_output=True, text=True, check=False).stdout.splitlines()
    return [line for line in lines if line.strip() and not line.strip().startswith("Z")]


def test_ctrl_c_stops_the_workers_and_cancels_their_runs(tmp_path, lake_dir) -> None:
    """Ctrl-C (SIGINT to the whole process group) while two runs on two workers wait for
    the pool's only slot, which another live holder keeps: exit 130 within seconds, no
    process of the command left, both runs canceled (the workers block the group's SIGINT,
    the command cancels their runs), no claim of theirs left."""
    import signal

    from kd_pipeline_tests.test_reliability import env_for, pool_of_one, small_config, wait_for

    mirror = tmp_path / "mirror"
    small_config(mirror, "quora")
    small_config(mirror, "npr")
    env = env_for(tmp_path, mirror)
    pool_of_one(env)
    args = [sys.executable, "-m", "kd_pipeline.cli", "materialize", "--runs-at-once", "2"]
    args += ["--partition", "quora", "--partition", "npr"]
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        storage = instance.event_log_storage
        storage.set_concurrency_slots("duckdb", 1)  # what the first run would do
        assert storage.claim_concurrency_slot("duckdb", "holder", "step").is_claimed
        try:
            with open(tmp_path / "stderr.log", "w") as err:
                command = subprocess.Popen(
                    args,
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    start_new_session=True,
                )
            wait_for(
                lambda: storage.get_concurrency_info("duckdb").pending_step_count >= 2,
                180,
                "both runs to wait on the pool",
            )
            os.killpg(command.pid, signal.SIGINT)
            assert command.wait(timeout=30) == 130, (tmp_path / "stderr.log").read_text()
            wait_for(lambda: not live_processes(command.pid), 10, "the workers to be gone")
            stderr = (tmp_path / "stderr.log").read_text()
            assert "stopped by SIGINT" in stderr
            assert "FAILED" not in stderr and "runs succeeded" not in stderr  # no step reported
            info = storage.get_concurrency_info("duckdb")
            assert [s.run_id for s in info.claimed_slots] == ["holder"]
            assert [p.run_id for p in info.pending_steps] == ["holder"]
        finally:
            storage.free_concurrency_slot_for_step("holder", "step")
        runs = instance.get_runs()
        assert len(runs) == 2
        assert [r.status for r in runs] == [dg.DagsterRunStatus.CANCELED] * 2
        assert {r.tags["kd-pipeline/command-pid"] for r in runs} == {str(command.pid)}
        assert str(command.pid) not in {r.tags["kd-pipeline/pid"] for r in runs}


def test_a_repeated_or_aliased_partition_runs_once(tmp_path) -> None:
    """`--partition fw-edu --partition fw_edu --partition fw-edu`: one config, so one run
    (two at once would write one partition twice)."""
    from kd_pipeline_tests.test_reliability import env_for, small_config

    mirror = tmp_path / "mirror"
    small_config(mirror, "fw-edu")
    env = env_for(tmp_path, mirror)
    proc = materialize(env, 2, "fw-edu", "fw_edu", "fw-edu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 runs, 2 at a time" in proc.stderr and "1/1 runs succeeded" in proc.stderr
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        assert [r.tags["dagster/partition"] for r in instance.get_runs()] == ["fw-edu"]


@pytest.mark.parametrize("value", ["0", "-1", "two"])
def test_runs_at_once_below_one_is_refused(value, capsys) -> None:
    """`--runs-at-once 0` used to mean the default silently: now argparse's one-line error
    naming the option, exit 2, nothing run."""
    from kd_pipeline.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["materialize", "--runs-at-once", value])
    assert exited.value.code == 2
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "error" in x]
    assert "argument --runs-at-once: expected" in line and value in line


def test_a_job_reading_what_a_later_job_writes_is_refused() -> None:
    """The main job's order must publish an asset before a job reading it: the unions
    before the LightOn partitions is refused naming both jobs and the asset; the exports
    before the families they read too."""
    from kd_pipeline.definitions import defs
    from kd_pipeline.main_job import job_waits

    with pytest.raises(
        ValueError,
        match=r"lighton_unions reads lighton/.*later job "
        r"lighton_partitions",
    ):
        job_waits(defs, ["lighton_unions", "lighton_partitions"])
    with pytest.raises(ValueError, match=r"exports_fiqa_mined_scores reads .*later job fiqa_mined"):
        job_waits(defs, ["text_collections", "exports_fiqa_mined_scores", "fiqa_mined"])


def test_steps_that_can_never_start_raise_naming_their_jobs() -> None:
    """Jobs waiting on each other: nothing is ready and nothing runs, so run_steps raises
    RuntimeError naming them instead of spinning."""
    from kd_pipeline.main_job import Step, run_steps

    steps = [Step("a", None), Step("b", None)]
    waits = {"a": frozenset({"b"}), "b": frozenset({"a"})}
    with pytest.raises(RuntimeError, match=r"stuck jobs: \['a', 'b'\]"):
        list(run_steps(steps, waits, 2, {}, dict))


_TALKING_RUN = """
import json, os, sys
import dagster as dg
from kd_pipeline.instance import command_instance

def child_pids():
    me = str(os.getpid())
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = open(f"/proc/{entry}/stat").read()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[1] == me:
                found.append(int(entry))
    return found

children = []

@dg.op
def speak() -> None:
    print("said on stdout", flush=True)
    print("said on stderr", file=sys.stderr, flush=True)
    children.extend(child_pids())

@dg.job
def talk() -> None:
    speak()

instance = command_instance() if sys.argv[1] == "command" else dg.DagsterInstance.get()
result = talk.execute_in_process(instance=instance)
(captured,) = [
    e.dagster_event.event_specific_data
    for e in instance.all_logs(result.run_id)
    if e.dagster_event and e.dagster_event.event_type_value == "LOGS_CAPTURED"
]
manager = instance.compute_log_manager
data = manager.get_log_data(manager.build_log_key_for_run(result.run_id, captured.file_key))
print(json.dumps({
    "manager": type(manager).__name__,
    "children": len(children),
    "stdout": data.stdout.decode(),
    "stderr": data.stderr.decode(),
}))
"""


@pytest.mark.parametrize("which", ["command", "dagster"])
def test_worker_instance_captures_step_output_without_mirror_processes(tmp_path, which) -> None:
    """What a step prints on a worker's instance (`command_instance`) is in the run's
    compute logs (the UI's stdout/stderr tabs) and on the process's own stdout/stderr once
    the run ends, and no process is started for it; Dagster's own instance (the sibling)
    starts `tail` and a watcher per stream while the step runs."""
    import json

    env = {**dict(os.environ), "DAGSTER_HOME": str(tmp_path)}
    proc = run([sys.executable, "-c", _TALKING_RUN, which], env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    *printed, last = proc.stdout.splitlines()
    report = json.loads(last)
    assert report["stdout"] == "said on stdout\n"
    assert "said on stderr" in report["stderr"].splitlines()  # after Dagster's own log lines
    assert "said on stdout" in printed and "said on stderr" in proc.stderr.splitlines()
    if which == "command":
        assert report["manager"] == "EchoAfterComputeLogManager"
        assert report["children"] == 0
    else:
        assert report["manager"] == "LocalComputeLogManager"
        assert report["children"] == 4


def test_runs_at_once_one_executes_runs_one_after_another(tmp_path) -> None:
    """`--runs-at-once 1` with three partitions: the runs execute one after another on the
    worker (their spans in the instance do not overlap), in the order given, and each one's
    progress line comes as it finishes."""
    from kd_pipeline_tests.test_reliability import env_for, small_config

    mirror = tmp_path / "mirror"
    for config in ("agnews", "npr", "quora"):
        small_config(mirror, config)
    env = env_for(tmp_path, mirror)
    proc = materialize(env, 1, "agnews", "npr", "quora")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "3 runs, 1 at a time" in proc.stderr and "3/3 runs succeeded" in proc.stderr
    progress = [line for line in proc.stderr.splitlines() if line.startswith("[")]
    assert [line.split("] ")[1].split(":")[0] for line in progress] == [
        f"lighton_partitions [{config}]" for config in ("agnews", "npr", "quora")
    ]
    with dg.DagsterInstance.from_config(env["DAGSTER_HOME"]) as instance:
        spans = sorted((r.start_time, r.end_time) for r in instance.get_run_records())
    assert len(spans) == 3
    assert all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(spans))


_CHECKED_RUNS = """
import collections, json, sys
import dagster as dg
import sqlalchemy as sa
from kd_pipeline.instance import command_instance

opened = collections.Counter()  # SQLite connections opened, by database file name

@sa.event.listens_for(sa.engine.Engine, "connect")
def count(dbapi_connection, record) -> None:
    (_, name, path) = dbapi_connection.execute("PRAGMA database_list").fetchone()
    opened[path.rsplit("/", 1)[-1]] += 1

CHECKS = [dg.AssetCheckSpec(f"rule_{i}", asset="scored") for i in range(12)]

@dg.asset(check_specs=CHECKS)
def scored() -> dg.MaterializeResult:
    return dg.MaterializeResult(
        check_results=[
            dg.AssetCheckResult(check_name=s.name, passed=s.name != "rule_3") for s in CHECKS
        ]
    )

job = dg.Definitions(assets=[scored], jobs=[dg.define_asset_job("score", [scored])])
instance = command_instance() if sys.argv[1] == "command" else dg.DagsterInstance.get()
runs, index_connections = [], []
for _ in range(3):
    runs.append(job.resolve_job_def("score").execute_in_process(instance=instance).run_id)
    index_connections.append(opened["index.db"])
print(json.dumps({"storage": type(instance.event_log_storage).__name__, "runs": runs,
                  "index_connections": index_connections}))
"""


@pytest.mark.parametrize("which", ["command", "dagster"])
def test_worker_instance_keeps_the_event_index_open_and_dagster_reads_every_event(
    tmp_path, which
) -> None:
    """A worker's instance (`command_instance`) writes Dagster's event index through one
    connection kept open (the sibling, Dagster's own instance, opens several for each check
    result), and a separate instance on the same DAGSTER_HOME (the UI, the daemon) reads
    every run, materialisation and check verdict it wrote."""
    import json

    env = {**dict(os.environ), "DAGSTER_HOME": str(tmp_path)}
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    proc = run([sys.executable, "-c", _CHECKED_RUNS, which], env, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    first, *later = report["index_connections"]  # connections opened, after each run
    if which == "command":
        assert report["storage"] == "PooledIndexEventLogStorage"
        assert later == [first, first]  # the first run's connections serve the next runs
    else:
        assert report["storage"] == "SqliteEventLogStorage"
        opened_per_run = [b - a for a, b in itertools.pairwise(report["index_connections"])]
        assert min(opened_per_run) >= 12 * 3  # three per check result
    with dg.DagsterInstance.from_config(str(tmp_path)) as reader:
        assert {r.dagster_run.run_id for r in reader.get_run_records()} == set(report["runs"])
        assert all(
            r.dagster_run.status == dg.DagsterRunStatus.SUCCESS for r in reader.get_run_records()
        )
        key = dg.AssetKey("scored")
        materialized = reader.fetch_materializations(key, limit=10).records
        assert sorted(m.run_id for m in materialized) == sorted(report["runs"])
        for name in (f"rule_{i}" for i in range(12)):
            check = dg.AssetCheckKey(key, name)
            latest = reader.event_log_storage.get_latest_asset_check_execution_by_key([check])
            assert latest[check].run_id == report["runs"][-1]
            evaluation = latest[check].event.dagster_event.event_specific_data
            assert evaluation.passed is (name != "rule_3")
        for run_id in report["runs"]:
            verdicts = [
                e
                for e in reader.all_logs(run_id)
                if e.dagster_event and e.dagster_event.event_type_value == "ASSET_CHECK_EVALUATION"
            ]
            assert len(verdicts) == 12


def materialize(env: dict[str, str], runs_at_once: int, *partitions: str):
    """`kd-pipeline materialize --runs-at-once N --partition ...`, run to its end."""
    args = [sys.executable, "-m", "kd_pipeline.cli", "materialize"]
    args += ["--runs-at-once", str(runs_at_once)]
    for partition in partitions:
        args += ["--partition", partition]
    return run(args, env)
