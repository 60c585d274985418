"""Benchmark the SPLADE export and `validate-splade` (not a pytest test).

    python bench/bench_exports.py [--queries 1000000] [--candidates 10] [--level 6]
                                  [--workdir DIR] [--repeat 2] [--python-repeat 1]

Input: a canonical listwise table of Q queries x C scored candidates (one positive each,
integer ids as strings, like MS MARCO), its query texts and a document collection, as
zstd Parquet (generated once, cached under --workdir).

Export variants (each in its own child process; seconds = the work only, memory = the
child's VmHWM):
  ours/plain        the pipeline's code (`prepare_candidates` + `write_splade`), no gzip
  ours/gz-L         the same, scores gzipped at level L in parallel members (all threads)
  ours/gz-L-1t      the same with one gzip thread (does parallel gzip pay?)
  python/plain      a straightforward Python writer: pyarrow batches -> dicts -> json.dumps
  python/gz-L       the same, scores through gzip.open(compresslevel=L)
`ours` always audits what it wrote (the SPLADE rules, read back from disk): its seconds
are reported without the audit (`export_seconds`, to compare like with like) and with it.
Validation variants, on ours/gz-L's folder:
  ours/validate     `validate_folder` (what `kd-pipeline validate-splade` runs)
  python/validate   the consumer's own approach: json.loads per line into dicts, then the
                    six rules and the score-row rule with dicts and sets
Every output folder is checked: both writers' folders pass `validate_folder`, hold the
same rows (sha256 of the sorted parsed rows of every file), and both validators agree.
Results: printed, and written to bench/results/exports-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import harness

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "bench" / "results"
DEFAULT_WORKDIR = Path("/tmp/kd-bench-exports")
GEN_VERSION = 1
DOC_POOL_FACTOR = 3  # the collection holds 3 x Q documents; candidates are drawn from it

TARGET_PLAIN = 3.0  # ours vs python, uncompressed export
TARGET_GZ = 1.0  # ours vs python, compressed export: no slower
TARGET_VALIDATE = 5.0


# ---- input ---------------------------------------------------------------------------------
def dataset(workdir: Path, queries: int, candidates: int) -> dict[str, str]:
    """candidates/, queries/, documents/ Parquet folders (cached)."""
    import duckdb

    folder = workdir / f"input-v{GEN_VERSION}-{queries}x{candidates}"
    tables = {name: folder / name for name in ("candidates", "queries", "documents")}
    if all((p / "part-0.parquet").exists() for p in tables.values()):
        return {k: str(v / "*.parquet") for k, v in tables.items()}
    shutil.rmtree(folder, ignore_errors=True)
    for path in tables.values():
        path.mkdir(parents=True)
    began = time.perf_counter()
    print(f"generating {queries:,} x {candidates} candidates into {folder} ...", flush=True)
    con = duckdb.connect()
    pool = DOC_POOL_FACTOR * queries
    con.execute(
        f"COPY (SELECT CAST(q AS VARCHAR) AS query_id, CAST(d AS VARCHAR) AS doc_id, "
        "CAST(row_number() OVER (PARTITION BY q ORDER BY k) AS INTEGER) AS rank, "
        "CAST(20 - k + (hash(q, k, 'score') % 1000) / 1000.0 AS DOUBLE) AS score, "
        "k = 0 AS is_positive FROM (SELECT DISTINCT ON (q, d) q, k, "
        f"CAST(hash(q, k) % {pool} AS BIGINT) AS d FROM range(1, {queries + 1}) a(q), "
        f"range({candidates}) b(k) ORDER BY q, d, k) ORDER BY q, k) "
        f"TO '{tables['candidates']}/part-0.parquet' (FORMAT parquet, COMPRESSION zstd)"
    )
    con.execute(
        "COPY (SELECT CAST(q AS VARCHAR) AS query_id, 'what is ' || md5(CAST(q AS VARCHAR))[1:"
        "12] || ' and why ' || q AS text FROM range(1, "
        f"{queries + 1}) t(q)) TO '{tables['queries']}/part-0.parquet' "
        "(FORMAT parquet, COMPRESSION zstd)"
    )
    con.execute(
        "COPY (SELECT CAST(d AS VARCHAR) AS doc_id, 'passage ' || d || ': ' || "
        "repeat(md5(CAST(d AS VARCHAR)) || ' lorem ipsum dolor ', 4) AS text, '' AS title "
        f"FROM range({pool}) t(d)) TO '{tables['documents']}/part-0.parquet' "
        "(FORMAT parquet, COMPRESSION zstd)"
    )
    print(f"  generated in {time.perf_counter() - began:.1f} s", flush=True)
    return {k: str(v / "*.parquet") for k, v in tables.items()}


# ---- the variants (each runs in a child process) -------------------------------------------
def run_ours_export(spec: dict[str, Any]) -> dict[str, Any]:
    import dagster as dg

    from kd_pipeline.exports.candidates import Selection, TextGlobs, prepare_candidates
    from kd_pipeline.exports.format import ExportRun
    from kd_pipeline.exports.sources import ExportSource
    from kd_pipeline.exports.splade import EXPORT_RULES, SpladeKnobs, write_splade

    con = harness.duckdb_connection(spec)
    out, scratch = Path(spec["out"]), Path(spec["out"] + "-scratch")
    out.mkdir(parents=True)
    scratch.mkdir(parents=True)
    source = ExportSource(dg.AssetKey(["bench", "listwise"]), "listwise", None)
    texts = TextGlobs(spec["inputs"]["queries"], spec["inputs"]["documents"], True)
    began = harness.mark()
    counts = prepare_candidates(
        con, source, spec["inputs"]["candidates"], texts, Selection(), needs_positives=True
    )
    run = ExportRun(
        con,
        out,
        scratch,
        SpladeKnobs(gzip_level=spec["level"]),
        "bench",
        "bench/listwise",
        None,
        spec["gzip_threads"],
        "listwise",
    )
    written = write_splade(run)
    judged = time.perf_counter()
    failed = [
        rule.name
        for rule in EXPORT_RULES
        if not rule.evaluate(con, written.table, written.facts).passed
    ]
    judging = time.perf_counter() - judged
    result = harness.done(began, queries=counts["queries"], files=written.files)
    # the audit: the files read back (in write_splade) and judged (as the export factory does)
    result["audit_seconds"] = written.counts["audit_seconds"] + judging
    result["json_seconds"] = written.counts.get("json_seconds", 0.0)
    result["gzip_seconds"] = written.counts.get("gzip_seconds", 0.0)
    result["export_seconds"] = result["seconds"] - result["audit_seconds"]
    result["audit_failed"] = failed
    shutil.rmtree(scratch, ignore_errors=True)
    return result


def run_python_export(spec: dict[str, Any]) -> dict[str, Any]:
    """The straightforward writer: rows as dicts, json.dumps per line."""
    import pyarrow.parquet as pq

    out = Path(spec["out"])
    (out / "train").mkdir(parents=True)
    level = spec["level"]

    def batches(glob: str, columns: list[str]):
        for path in sorted(Path(glob).parent.glob("*.parquet")):
            yield from pq.ParquetFile(path).iter_batches(batch_size=65536, columns=columns)

    began = harness.mark()
    positives: dict[str, list[str]] = {}
    scores: dict[str, list[tuple[str, float]]] = {}
    for batch in batches(
        spec["inputs"]["candidates"], ["query_id", "doc_id", "score", "is_positive"]
    ):
        for row in batch.to_pylist():
            scores.setdefault(row["query_id"], []).append((row["doc_id"], row["score"]))
            if row["is_positive"]:
                positives.setdefault(row["query_id"], []).append(row["doc_id"])
    needed = {d for pairs in scores.values() for d, _ in pairs}
    query_text = {}
    for batch in batches(spec["inputs"]["queries"], ["query_id", "text"]):
        for row in batch.to_pylist():
            if row["query_id"] in positives:
                query_text[row["query_id"]] = row["text"]
    doc_text = {}
    for batch in batches(spec["inputs"]["documents"], ["doc_id", "text"]):
        for row in batch.to_pylist():
            if row["doc_id"] in needed:
                doc_text[row["doc_id"]] = row["text"]
    kept = sorted((q for q in positives if q in query_text), key=int)
    with open(out / "train" / "query_master.ndjson", "w", encoding="utf-8") as f:
        for q in kept:
            f.write(json.dumps({"qid": int(q), "text": query_text[q]}, ensure_ascii=False) + "\n")
    with open(out / "train" / "doc_master.ndjson", "w", encoding="utf-8") as f:
        for d in sorted((d for d in needed if d in doc_text), key=int):
            f.write(json.dumps({"doc_id": int(d), "text": doc_text[d]}, ensure_ascii=False) + "\n")
    with open(out / "train" / "positive_lists.ndjson", "w", encoding="utf-8") as f:
        for q in kept:
            ids = sorted(int(d) for d in positives[q])
            f.write(json.dumps({"qid": int(q), "positive_doc_ids": ids}) + "\n")
    name = "hard-negatives-cross-encoder-scores.ndjson" + ("" if level is None else ".gz")
    target = out / name
    with (
        open(target, "w", encoding="utf-8")
        if level is None
        else gzip.open(target, "wt", compresslevel=level, encoding="utf-8")
    ) as f:
        for q in kept:
            ranked = sorted(scores[q], key=lambda pair: (-pair[1], pair[0]))
            row = {"qid": int(q), "scores": {d: s for d, s in ranked if d in doc_text}}
            f.write(json.dumps(row) + "\n")
    return harness.done(began, queries=len(kept))


def run_ours_validate(spec: dict[str, Any]) -> dict[str, Any]:
    from kd_pipeline.checks.splade import validate_folder

    con = harness.duckdb_connection(spec)
    began = harness.mark()
    verdicts = validate_folder(con, Path(spec["folder"]))
    failed = sorted(r.name for r, o in verdicts if not o.passed)
    return harness.done(began, failed=failed)


def run_python_validate(spec: dict[str, Any]) -> dict[str, Any]:
    """The consumer's approach: every line through json.loads into dicts, then the rules
    with dicts and sets (every offender collected, so the verdict matches ours)."""
    root = Path(spec["folder"])

    def rows(path: Path):
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as handle:
            for line in handle:
                yield json.loads(line)

    def entry(stem: str) -> Path:
        return next(p for p in (root / f"{stem}.ndjson", root / f"{stem}.ndjson.gz") if p.exists())

    began = harness.mark()
    queries = {r["qid"]: r["text"] for r in rows(entry("train/query_master"))}
    docs = {r["doc_id"]: r["text"] for r in rows(entry("train/doc_master"))}
    positives = {r["qid"]: r["positive_doc_ids"] for r in rows(entry("train/positive_lists"))}
    scores = {
        r["qid"]: {int(k): v for k, v in r["scores"].items()}
        for r in rows(entry("hard-negatives-cross-encoder-scores"))
    }
    failed = set()
    if any(q not in queries for q in positives):
        failed.add("positive_qids_in_query_master")
    if any(q not in positives for q in queries):
        failed.add("queries_have_positive_list")
    if any(d not in docs for ds in positives.values() for d in ds):
        failed.add("positive_docs_in_doc_master")
    if any(not ds for ds in positives.values()):
        failed.add("queries_have_positive")
    if any(q not in scores for q in set(queries) | set(positives)):
        failed.add("queries_have_score_row")
    doc_ids = set(docs)
    for q, ds in positives.items():
        if q not in scores:
            continue
        if not (set(scores[q]) - set(ds)) & doc_ids:
            failed.add("queries_have_negative")
        if any(d not in scores[q] for d in ds):
            failed.add("positive_pairs_scored")
    return harness.done(began, failed=sorted(failed))


def run_light_splade_validate(spec: dict[str, Any]) -> dict[str, Any]:
    """light-splade's own TripletDistilDataset: its loaders, dataclasses and _validate."""
    import logging

    os.environ["TQDM_DISABLE"] = "1"  # its progress bars would flood the report
    from light_splade.data import TripletDistilDataset

    logging.disable(logging.INFO)
    root = Path(spec["folder"])
    began = harness.mark()
    TripletDistilDataset(
        root / "train" / "query_master.ndjson",
        root / "train" / "doc_master.ndjson",
        root / "train" / "positive_lists.ndjson",
        next(root.glob("hard-negatives-cross-encoder-scores.ndjson*")),
    )
    return harness.done(began, failed=[])


CHILD_RUNNERS = {
    "ours-export": run_ours_export,
    "python-export": run_python_export,
    "ours-validate": run_ours_validate,
    "python-validate": run_python_validate,
    "light-splade-validate": run_light_splade_validate,
}


# ---- the parent ----------------------------------------------------------------------------
def run_child(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    return harness.run_child(__file__, spec, workdir)


def content_digest(folder: Path) -> dict[str, str]:
    """Per file (compressed or not): sha256 of its parsed rows, sorted (so two writers that
    order or space rows differently but hold the same data agree)."""
    digests = {}
    for path in sorted(folder.rglob("*.ndjson*")):
        opener = gzip.open if path.name.endswith(".gz") else open
        with opener(path, "rt", encoding="utf-8") as handle:
            rows = sorted(json.dumps(json.loads(line), sort_keys=True) for line in handle)
        name = str(path.relative_to(folder)).removesuffix(".gz")
        digests[name] = hashlib.sha256("\n".join(rows).encode()).hexdigest()
    return digests


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*.ndjson*"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=1_000_000)
    parser.add_argument("--candidates", type=int, default=10)
    parser.add_argument("--level", type=int, default=6, help="gzip level of the score file")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--repeat", type=int, default=2, help="best of R for ours")
    parser.add_argument("--python-repeat", type=int, default=1, help="best of R for python")
    parser.add_argument(
        "--memory-limit", default=os.environ.get("KD_PIPELINE_DUCKDB_MEMORY", "4GB")
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        harness.child_main(args.child, CHILD_RUNNERS)
        return 0

    workdir = args.workdir.resolve()
    (workdir / "scratch").mkdir(parents=True, exist_ok=True)
    outdir = workdir / "out"
    shutil.rmtree(outdir, ignore_errors=True)
    outdir.mkdir()
    inputs = dataset(workdir, args.queries, args.candidates)
    common = {
        "memory_limit": args.memory_limit,
        "threads": args.threads,
        "temp_dir": str(workdir / "scratch"),
        "inputs": inputs,
    }
    level = args.level
    exports = [
        ("ours/plain", "ours-export", {"level": None, "gzip_threads": args.threads}, args.repeat),
        (
            f"ours/gz-{level}",
            "ours-export",
            {"level": level, "gzip_threads": args.threads},
            args.repeat,
        ),
        (f"ours/gz-{level}-1t", "ours-export", {"level": level, "gzip_threads": 1}, args.repeat),
        ("python/plain", "python-export", {"level": None}, args.python_repeat),
        (f"python/gz-{level}", "python-export", {"level": level}, args.python_repeat),
    ]
    results: dict[str, dict[str, Any]] = {}
    kept: dict[str, Path] = {}
    for round_no in range(max(args.repeat, args.python_repeat)):
        for name, kind, extra, repeats in exports:
            if round_no >= repeats:
                continue
            out = outdir / name.replace("/", "-")
            shutil.rmtree(out, ignore_errors=True)
            print(f"round {round_no + 1}: {name} ...", flush=True)
            load = os.getloadavg()[0]
            result = run_child(
                {**common, **extra, "kind": kind, "name": name, "out": str(out)}, workdir
            )
            result["load_before"] = load
            if name not in results or result["seconds"] < results[name]["seconds"]:
                results[name] = result
            kept[name] = out
    folder = kept[f"ours/gz-{level}"]
    validators = [
        ("ours/validate", "ours-validate", args.repeat),
        ("python/validate", "python-validate", args.python_repeat),
    ]
    if importlib.util.find_spec("light_splade") is not None:  # the consumer itself
        validators.append(("light-splade/validate", "light-splade-validate", args.python_repeat))
    for round_no in range(max(args.repeat, args.python_repeat)):
        for name, kind, repeats in validators:
            if round_no >= repeats:
                continue
            print(f"round {round_no + 1}: {name} ...", flush=True)
            load = os.getloadavg()[0]
            result = run_child(
                {**common, "kind": kind, "name": name, "folder": str(folder)}, workdir
            )
            result["load_before"] = load
            if name not in results or result["seconds"] < results[name]["seconds"]:
                results[name] = result

    # ---- correctness: both writers valid and equal; both validators agree
    sys.path.insert(0, str(REPO))
    import duckdb

    from kd_pipeline.checks.splade import validate_folder

    digests = {}
    for name, path in kept.items():
        failed = [r.name for r, o in validate_folder(duckdb.connect(), path) if not o.passed]
        assert not failed, (name, failed)
        digests[name] = content_digest(path)
        results[name]["bytes"] = folder_bytes(path)
    reference = digests["python/plain"]
    for name, digest in digests.items():
        assert digest == reference, (name, "holds other rows than python/plain")
    assert results["ours/validate"]["failed"] == results["python/validate"]["failed"] == []
    for name in kept:
        if name.startswith("ours/"):
            assert not results[name]["audit_failed"], name

    # ---- report
    for r in results.values():
        r.setdefault("export_seconds", r["seconds"])
    print()
    print(
        f"input: {args.queries:,} queries x {args.candidates} candidates; DuckDB "
        f"{duckdb.__version__}, threads={args.threads}, memory_limit={args.memory_limit}, "
        f"{os.cpu_count()} cpus, gzip level {level}"
    )
    header = (
        f"{'variant':<22}{'seconds':>9}{'export s':>10}{'cpu s':>8}{'peak MiB':>10}{'MiB out':>9}"
    )
    print(header)
    print("-" * len(header))
    for name, r in results.items():
        out_mib = r.get("bytes", 0) / 2**20
        print(
            f"{name:<22}{r['seconds']:>9.2f}{r['export_seconds']:>10.2f}{r['cpu_seconds']:>8.1f}"
            f"{r['peak_mib']:>10,.0f}{out_mib:>9,.0f}"
        )
    print("(seconds: the work only, best of the runs; export s: ours without its audit)")
    loads = [r["load_before"] for r in results.values()]
    print(f"(1-min load average before the runs: {min(loads):.1f} to {max(loads):.1f})")
    ratios = {
        "export_plain_vs_python": results["python/plain"]["seconds"]
        / results["ours/plain"]["export_seconds"],
        "export_gz_vs_python": results[f"python/gz-{level}"]["seconds"]
        / results[f"ours/gz-{level}"]["export_seconds"],
        "parallel_gzip_speedup": results[f"ours/gz-{level}-1t"]["gzip_seconds"]
        / max(results[f"ours/gz-{level}"]["gzip_seconds"], 1e-9),
        "validate_vs_python": results["python/validate"]["seconds"]
        / results["ours/validate"]["seconds"],
        "export_gz_with_audit_vs_python": results[f"python/gz-{level}"]["seconds"]
        / results[f"ours/gz-{level}"]["seconds"],
    }
    targets = {
        "export_plain_vs_python": TARGET_PLAIN,
        "export_gz_vs_python": TARGET_GZ,
        "validate_vs_python": TARGET_VALIDATE,
    }
    print()
    for name, value in ratios.items():
        target = targets.get(name)
        verdict = (
            ""
            if target is None
            else (f" (target >= {target:g}x) " + ("ok" if value >= target else "MISSED"))
        )
        print(f"{name}: {value:.2f}x{verdict}")
    print("check: every folder passes validate_folder; all hold the same rows as python/plain")

    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    report = {
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "queries": args.queries,
        "candidates": args.candidates,
        "gzip_level": level,
        "threads": args.threads,
        "memory_limit": args.memory_limit,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "duckdb": duckdb.__version__,
        "results": results,
        "ratios": ratios,
        "targets": targets,
    }
    path = RESULTS_DIR / f"exports-{dt.date.today().isoformat()}.json"
    path.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"\nwrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
