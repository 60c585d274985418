"""Soak: many partition runs in parallel against a faulty Hub, then an integrity audit.

    python bench/soak.py [--partitions 24] [--parallel 4] [--fault-rate 0.3] [--kill-rate 0.1]

The sample mirror is served by the loopback Hub-shaped server with faults injected into
file downloads (503s, connections dropped mid-file, short stalls); some runs are killed
with SIGKILL at a random moment. Failed or killed partitions are retried (bounded). At the
end every published partition of the lake must be whole: its row count read through
DuckLake equals its manifest's, and every file the catalog references exists. Prints runs,
faults injected, retries, failures and the audit.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kd_pipeline.families.lighton_configs import LIGHTON_CONFIGS  # noqa: E402
from kd_pipeline.fetch import sample_mirror  # noqa: E402
from kd_pipeline.lake import Lake  # noqa: E402
from kd_pipeline_tests.hub_server import Fault, HubServer  # noqa: E402


def start_run(env: dict[str, str], partition: str, log_dir: Path) -> subprocess.Popen:
    log = open(log_dir / f"{partition}-{time.monotonic_ns()}.log", "w")  # noqa: SIM115
    return subprocess.Popen(
        [sys.executable, "-m", "kd_pipeline.cli", "materialize", "--partition", partition],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=log,
        start_new_session=True,
    )


def audit(lake: Lake) -> tuple[int, list[str]]:
    """(partitions checked, problems), read through DuckLake in one snapshot, as readers
    read: every table partition's rows equal the rows its manifest records in
    `publications` (a partition counted twice or half shows here), and every file the
    snapshot references exists."""
    problems: list[str] = []
    with lake.connect(read_only=True) as con:
        con.execute("BEGIN TRANSACTION")
        registry = con.execute(
            "SELECT asset, partition, rows, manifest FROM publications"
        ).fetchall()
        for asset, partition, rows, manifest in registry:
            key = tuple(asset.split("/"))
            if json.loads(manifest)["rows"] != rows:
                problems.append(f"{asset}[{partition}]: registry {rows} rows, manifest differs")
            if not lake.is_table(key):
                continue
            schema, table = lake.table_name(key)
            where = "" if partition == "_" else " WHERE partition = $p"
            params = {} if partition == "_" else {"p": partition}
            (read,) = con.execute(
                f"SELECT count(*) FROM {schema}.{table}{where}", params
            ).fetchone()
            if read != rows:
                problems.append(f"{asset}[{partition}]: {read} rows read, manifest {rows}")
        for schema, table in con.execute(
            "SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = 'lake'"
        ).fetchall():
            for (path,) in con.execute(
                "SELECT data_file FROM ducklake_list_files('lake', $t, schema => $s)",
                {"t": table, "s": schema},
            ).fetchall():
                if not Path(path).is_file():
                    problems.append(f"{schema}.{table}: references missing {path}")
        con.execute("COMMIT")
    return len(registry), problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--partitions", type=int, default=24)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--fault-rate", type=float, default=0.3)
    parser.add_argument("--kill-rate", type=float, default=0.1)
    parser.add_argument("--retries", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    partitions = rng.sample(list(LIGHTON_CONFIGS), min(args.partitions, len(LIGHTON_CONFIGS)))
    work = Path(tempfile.mkdtemp(prefix="kd-soak-"))
    (work / "dagster").mkdir()
    (work / "logs").mkdir()
    mirror = sample_mirror()
    stats = {"runs": 0, "faults": 0, "kills": 0, "retries": 0, "failures": 0}
    started = time.monotonic()
    with HubServer(mirror) as hub:
        env = {
            **os.environ,
            "KD_PIPELINE_SOURCE": "hub",
            "HF_ENDPOINT": hub.endpoint,
            "HF_HOME": str(work / "hf"),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_ETAG_TIMEOUT": "5",
            "HF_HUB_DOWNLOAD_TIMEOUT": "5",
            "KD_PIPELINE_LAKE": str(work / "lake"),
            "DAGSTER_HOME": str(work / "dagster"),
        }
        attempts = dict.fromkeys(partitions, 0)
        queue = list(partitions)
        running: dict[str, tuple[subprocess.Popen, float | None]] = {}
        while queue or running:
            while queue and len(running) < args.parallel:
                partition = queue.pop(0)
                for _ in range(3):  # faults the next downloads of this config will meet
                    if rng.random() < args.fault_rate:
                        kind = rng.choice(["status", "drop", "stall"])
                        hub.faults.append(
                            Fault(
                                f"/{partition}/",
                                kind,
                                status=503,
                                after_bytes=512,
                                seconds=1.0,
                                method="GET",
                            )
                        )
                        stats["faults"] += 1
                kill_at = (
                    time.monotonic() + rng.uniform(1, 6) if rng.random() < args.kill_rate else None
                )
                running[partition] = (start_run(env, partition, work / "logs"), kill_at)
                attempts[partition] += 1
                stats["runs"] += 1
            time.sleep(0.2)
            for partition, (process, kill_at) in list(running.items()):
                if kill_at is not None and process.poll() is None and time.monotonic() > kill_at:
                    os.killpg(process.pid, signal.SIGKILL)
                    stats["kills"] += 1
                code = process.poll()
                if code is None:
                    continue
                del running[partition]
                if code != 0:
                    if attempts[partition] <= args.retries:
                        stats["retries"] += 1
                        queue.append(partition)
                    else:
                        stats["failures"] += 1
    checked, problems = audit(Lake(work / "lake"))
    elapsed = time.monotonic() - started
    print(f"partitions: {len(partitions)}, parallel: {args.parallel}, seconds: {elapsed:.0f}")
    print(", ".join(f"{k}: {v}" for k, v in stats.items()))
    print(f"integrity: {checked} published partitions checked, {len(problems)} problem(s)")
    for problem in problems:
        print("  " + problem)
    print(f"work folder: {work}")
    return 1 if problems or stats["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
