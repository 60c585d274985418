"""What the benchmarks here share: each variant runs in a child process of this interpreter
(`<script> --child <spec json>`), timed on its work only, its memory the child's own peak.

A benchmark defines its variants as functions spec -> result dict, calls `child_main` when
given `--child`, and `run_child` from the parent.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def peak_mib() -> float:
    """Peak RSS of this process image. VmHWM, not ru_maxrss: Linux carries ru_maxrss over
    from the parent through fork + exec, so a child would report the parent's peak."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def mark() -> tuple[float, float, float]:
    """When the measured work starts: (clock, peak MiB so far, CPU seconds)."""
    return time.perf_counter(), peak_mib(), cpu_seconds()


def done(began: tuple[float, float, float], **fields: Any) -> dict[str, Any]:
    """A variant's result: seconds and CPU seconds since began, memory before and at peak."""
    return {
        "seconds": time.perf_counter() - began[0],
        "cpu_seconds": cpu_seconds() - began[2],
        "base_mib": began[1],
        "peak_mib": peak_mib(),
        **fields,
    }


def duckdb_connection(spec: Mapping[str, Any]):
    """A connection with the same settings as kd_pipeline.engine.engine_connection."""
    import duckdb

    con = duckdb.connect()
    con.execute("SET memory_limit = ?", [spec["memory_limit"]])
    con.execute("SET threads = ?", [spec["threads"]])
    con.execute("SET temp_directory = ?", [spec["temp_dir"]])
    con.execute("SET preserve_insertion_order = true")
    return con


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def count_rows(out: Path) -> int:
    """Rows of a Parquet file or of every Parquet file under a folder (from the footers)."""
    import pyarrow.parquet as pq

    files = [out] if out.is_file() else sorted(out.rglob("*.parquet"))
    return sum(pq.ParquetFile(f).metadata.num_rows for f in files)


def child_main(spec_json: str, runners: Mapping[str, Callable[[dict[str, Any]], dict]]) -> None:
    """In the child: run the variant `spec["kind"]` and leave its result at `spec["result"]`."""
    spec = json.loads(spec_json)
    result = runners[spec["kind"]](spec)
    Path(spec["result"]).write_text(json.dumps(result, default=str))


def run_child(script: str, spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """In the parent: run one variant of script in a fresh interpreter (the repository on
    its path) and return its result, plus the child's whole wall time."""
    result_path = workdir / "child-result.json"
    result_path.unlink(missing_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    began = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, script, "--child", json.dumps({**spec, "result": str(result_path)})],
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"variant {spec['name']} failed (exit {proc.returncode})")
    result = json.loads(result_path.read_text())
    result["child_wall_seconds"] = time.perf_counter() - began
    return result
