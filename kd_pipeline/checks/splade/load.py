"""Loading a SPLADE folder into DuckDB temp tables, every malformed line recorded.

Each line takes a cheap check that only well-formed rows pass; only the lines that fail it
are parsed again (the diagnosis) to say exactly what is wrong. The tables keep ids only:
no rule needs a text or a score value, only that it is well formed.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from kd_pipeline.checks.splade.layout import SPLITS, SpladeLayout
from kd_pipeline.checks.splade.read import (
    LONG_LINE_MIB,
    Censuses,
    GzipLines,
    ReadPlan,
    default_scratch,
    plain_lines,
)
from kd_pipeline.lake import quote_literal
from kd_pipeline.lines import unaccounted
from kd_pipeline.parsers import engine_reason

_SPLIT_TYPE = f"ENUM({', '.join(repr(s) for s in SPLITS)})"  # joins hash it as a small int
_INTEGER_TYPES = ("UBIGINT", "BIGINT")
# Lists mixing negative and large positive ints come out as HUGEINT; [] and [null] as NULL.
_LIST_TYPES = ('["UBIGINT"]', '["BIGINT"]', '["HUGEINT"]', '["NULL"]')
_NUMBER_TYPES = ("UBIGINT", "BIGINT", "HUGEINT", "DOUBLE")
_DERIVED_TABLES = ("positive_scores", "qid_presence")  # built by rules.py, once per load


@dataclass(frozen=True)
class SpladeTables:
    """The temp tables one folder was loaded into (names carry a prefix, so two folders can
    be loaded on one connection). Only ids are kept: no rule needs a text or a score value,
    only that it is well formed.

    A row whose id is an integer is kept even when another field is malformed, so one bad
    row is reported once, by `rows_well_formed`, not again as a missing id.
    """

    prefix: str
    splits: tuple[str, ...]
    root: str = ""  # file names in reports are relative to it

    @property
    def queries(self) -> str:  # (split, qid)
        return f"{self.prefix}queries"

    @property
    def documents(self) -> str:  # (split, doc_id)
        return f"{self.prefix}documents"

    @property
    def positives(self) -> str:  # (split, qid, positive_doc_ids BIGINT[])
        return f"{self.prefix}positives"

    @property
    def scores(self) -> str:  # (qid, doc_ids BIGINT[]): one per row, its well-formed keys
        return f"{self.prefix}scores"

    @property
    def malformed(self) -> str:  # (file, split, id, problem)
        return f"{self.prefix}malformed"

    @property
    def staging(self) -> str:
        return f"{self.prefix}staging"


def _shapes(keys: dict[str, Sequence[str]]) -> list[str]:
    """Every json_structure() string a well-formed row can have (any key order)."""
    shapes = []
    for order in itertools.permutations(keys):
        for types in itertools.product(*(keys[k] for k in order)):
            fields = [
                f'"{k}":' + (t if t.startswith("[") else f'"{t}"')
                for k, t in zip(order, types, strict=True)
            ]
            shapes.append("{" + ",".join(fields) + "}")
    return shapes


def _sql_list(values: Sequence[object]) -> str:
    return (
        "["
        + ", ".join(_sql_list(v) if isinstance(v, list) else quote_literal(str(v)) for v in values)
        + "]"
    )


# Strict patterns for the score file's fast path: a line they match is certainly a
# well-formed row (integer qid and keys that fit 64 bits, finite numbers: exponents of at
# most two digits). A line they do not match is judged exactly, by parsing it.
_INT = r"-?(?:0|[1-9][0-9]{0,17})"
_NUMBER = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]{1,2})?"
_WS = r"[ \t]*"
_ENTRY = rf'"{_INT}"{_WS}:{_WS}{_NUMBER}'
_SCORE_LINE = (
    rf'\{{{_WS}"qid"{_WS}:{_WS}{_INT}{_WS},{_WS}"scores"{_WS}:{_WS}\{{{_WS}'
    rf"(?:{_ENTRY}(?:{_WS},{_WS}{_ENTRY})*)?{_WS}\}}{_WS}\}}[ \t\r]*"
)
_SCORE_QID = rf'^\{{{_WS}"qid"{_WS}:{_WS}({_INT})'
_POSITIVE_LINE = (
    rf'\{{{_WS}"qid"{_WS}:{_WS}{_INT}{_WS},{_WS}"positive_doc_ids"{_WS}:{_WS}\[{_WS}'
    rf"(?:{_INT}(?:{_WS},{_WS}{_INT})*)?{_WS}\]{_WS}\}}[ \t\r]*"
)


@dataclass(frozen=True)
class _Kind:
    """One master file's row shape, its fast check and its exact diagnosis."""

    table: str  # SpladeTables attribute
    id_key: str
    value_key: str
    json_types: dict[str, tuple[str, ...]]  # json_structure types a key may have
    expected: str  # for messages
    value_type: str | None = None  # kept in the table (positives only)


_MASTERS = (
    _Kind(
        "queries",
        "qid",
        "text",
        {"qid": _INTEGER_TYPES, "text": ("VARCHAR",)},
        '{"qid": integer, "text": string}',
    ),
    _Kind(
        "documents",
        "doc_id",
        "text",
        {"doc_id": _INTEGER_TYPES, "text": ("VARCHAR",)},
        '{"doc_id": integer, "text": string}',
    ),
    _Kind(
        "positives",
        "qid",
        "positive_doc_ids",
        {"qid": _INTEGER_TYPES, "positive_doc_ids": _LIST_TYPES},
        '{"qid": integer, "positive_doc_ids": [integer, ...]}',
        "BIGINT[]",
    ),
)
_SCORES_EXPECTED = '{"qid": integer, "scores": {"<doc_id>": number, ...}}'


def _problem(keys: Sequence[str], expected: str, shape_ok: str) -> str:
    """SQL: what is wrong with a line (NULL when well formed): blank, not JSON, not an
    object, extra or missing keys, else a wrong type (the row's structure is shown)."""
    wanted = _sql_list(list(keys))
    extra = f"list_filter(json_keys(line), lambda k: NOT list_contains({wanted}, k))"
    missing = f"list_filter({wanted}, lambda k: NOT list_contains(json_keys(line), k))"
    return (
        "CASE WHEN line IS NULL OR trim(line) = '' THEN 'blank line (json.loads fails on it)' "
        "WHEN NOT json_valid(line) THEN 'not valid JSON' "
        f"WHEN {shape_ok} THEN NULL "
        "WHEN json_type(line) <> 'OBJECT' THEN 'not a JSON object but ' || json_type(line) "
        f"WHEN len({extra}) > 0 THEN 'extra key(s) ' || array_to_string({extra}, ', ') "
        f"WHEN len({missing}) > 0 THEN 'missing key(s) ' || array_to_string({missing}, ', ') "
        f"ELSE {quote_literal('expected ' + expected + ', found ')} || "
        "json_structure(line)::VARCHAR END"
    )


def _loose_id(key: str) -> str:
    """SQL: the integer id of a line, whatever else is wrong with it (NULL if it has none)."""
    return (
        "CASE WHEN line IS NOT NULL AND json_valid(line) THEN CASE WHEN "
        f"list_contains({_sql_list(list(_INTEGER_TYPES))}, json_type(line, '$.{key}')) "
        f"THEN TRY_CAST(line ->> '$.{key}' AS BIGINT) END END"
    )


def _id_label(key: str) -> str:
    """SQL: an offending line named by its id, else by its first characters."""
    return (
        f"coalesce('{key} ' || CAST(id AS VARCHAR), "
        "'line ' || coalesce(to_json(left(line, 60))::VARCHAR, '(blank)'))"
    )


def load_splade(
    con: duckdb.DuckDBPyConnection,
    layout: SpladeLayout,
    prefix: str = "splade_",
    scratch: Path | None = None,
) -> SpladeTables:
    """Read a SPLADE folder's files into temp tables, recording every malformed line.

    Each line takes a cheap check that only well-formed rows pass (the key list and two
    JSON types for a master row, a strict pattern for a score row), and only the lines
    that fail it are parsed again to say exactly what is wrong (a differently ordered or
    spaced row is still well formed). A file DuckDB cannot read at all (not UTF-8, not
    gzip) is one malformed entry naming the file, not an exception. Before any of that,
    every file gets a line census (`ReadPlan`): gzip files are decompressed whole (CRC and
    length checked), a line the census rejects (longer than LONG_LINE_MIB, holding a NUL
    byte or a CR that does not end it) refuses its file, named with that line (no line is
    ever skipped), mixed LF/CRLF line ends are read from an LF copy in scratch (default:
    `default_scratch`; its free space checked first), and the lines each file yields are
    reconciled with the lines it has.
    """
    t = SpladeTables(prefix, tuple(layout.splits), str(layout.root))
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {t.malformed} "
        "(file VARCHAR, split VARCHAR, id VARCHAR, problem VARCHAR)"
    )
    groups = [parts[kind.table] for kind in _MASTERS for parts in layout.splits.values()]
    censuses = Censuses([*groups, layout.scores], scratch or default_scratch(layout.root))
    gzipped = [p for p in layout.scores if p.name.endswith(".gz")]
    # started at once on the files themselves: their census runs meanwhile, and only when
    # it asks for something else (a refused file, an LF copy) is the score file read again
    optimistic = ReadPlan(list(layout.scores), longest=LONG_LINE_MIB << 20)
    pending = GzipLines(con, f"{prefix}score_lines", optimistic) if gzipped else None
    try:
        _load_all(con, t, layout, censuses, pending)
    finally:
        censuses.close()
    con.execute(f"DROP TABLE IF EXISTS {t.staging}")
    for derived in _DERIVED_TABLES:
        con.execute(f"DROP TABLE IF EXISTS {t.prefix}{derived}")
    return t


def _load_all(
    con: duckdb.DuckDBPyConnection,
    t: SpladeTables,
    layout: SpladeLayout,
    censuses: Censuses,
    pending: GzipLines | None,
) -> None:
    for kind in _MASTERS:
        value = f", {kind.value_key} {kind.value_type}" if kind.value_type else ""
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {getattr(t, kind.table)} "
            f"(split {_SPLIT_TYPE}, {kind.id_key} BIGINT{value})"
        )
        for split, parts in layout.splits.items():
            _load_master(con, t, kind, split, censuses.plan(parts[kind.table]))
    con.execute(f"CREATE OR REPLACE TEMP TABLE {t.scores} (qid BIGINT, doc_ids BIGINT[])")
    scores = censuses.plan(layout.scores)
    if pending is not None and (scores.refused or scores.names):
        pending.discard()  # read on the files themselves; the plan reads otherwise
        pending = None
    _load_scores(con, t, scores, pending)


def _stage(
    con: duckdb.DuckDBPyConnection,
    t: SpladeTables,
    split: str,
    plan: ReadPlan,
    select: str,
    pending: GzipLines | None = None,
) -> int | None:
    """Create the staging table from select, whose `{lines}` is the files' lines as
    (file, line), and return how many lines failed the fast check; None when no file could
    be read (each recorded as malformed). Gzip files are decompressed into a table first
    (or were, by pending): decompression is sequential, and the JSON work on the table then
    runs on every thread. The lines read per file must be the lines the census counted."""
    for path, problem in plan.refused:
        _file_malformed(con, t, path, split, problem)
    if not plan.readable:
        if pending is not None:
            pending.discard()
        return None
    per_file = _stage_lines(con, t, split, plan, select, pending)
    if per_file is None:
        return None
    read = {f: int(n) for f, n, _ in per_file}
    for name, census in plan.census.items():
        gap = unaccounted(census, census.lines, read.get(name, 0))  # a blank line is a row
        if gap:
            _file_malformed(con, t, Path(name), split, gap)
    return sum(int(slow) for _, _, slow in per_file)


def _file_malformed(
    con: duckdb.DuckDBPyConnection, t: SpladeTables, path: Path, split: str, problem: str
) -> None:
    con.execute(
        f"INSERT INTO {t.malformed} VALUES ($f, $s, '(file)', $p)",
        {"f": str(path), "s": split, "p": problem},
    )


def _stage_lines(
    con: duckdb.DuckDBPyConnection,
    t: SpladeTables,
    split: str,
    plan: ReadPlan,
    select: str,
    pending: GzipLines | None,
) -> list[tuple[str, int, int]] | None:
    """(file, lines, lines failing the fast check) per file read, or None when DuckDB
    cannot read them (each file recorded as malformed)."""
    create = f"CREATE OR REPLACE TEMP TABLE {t.staging} AS "
    files = plan.readable
    try:
        if pending is None and any(p.name.endswith(".gz") for p in files):
            pending = GzipLines(con, f"{t.prefix}gz_lines", plan)
        if pending is not None:
            try:
                con.execute(create + select.replace("{lines}", pending.wait()))
            finally:  # the decompressed text is not needed once staged
                con.execute(f"DROP TABLE IF EXISTS {pending.table}")
        else:
            con.execute(create + select.replace("{lines}", plain_lines(plan)))
    except duckdb.Error as exc:
        reason = engine_reason(exc, plan.names)
        for path in files:
            _file_malformed(
                con,
                t,
                Path(plan.names.get(str(path), str(path))),
                split,
                f"cannot be read: {reason}",
            )
        return None
    return con.execute(
        f"SELECT file, count(*), count_if(NOT fast_ok) FROM {t.staging} GROUP BY file"
    ).fetchall()


def _load_master(
    con: duckdb.DuckDBPyConnection,
    t: SpladeTables,
    kind: _Kind,
    split: str,
    plan: ReadPlan,
) -> None:
    """A master file. Fast check of a text master: valid JSON with exactly the keys
    [id, text] in that order (json_keys), and a line that starts `{"<id>": <integer>,
    "text": "` (one anchored pattern, which also captures the id): with exactly those two
    keys, that proves the id is an integer and the text a string. Positive lists: a strict
    pattern over the whole line (the element types count)."""
    id_key, value_key = kind.id_key, kind.value_key
    if kind.value_type:
        fast = f"regexp_full_match(line, {quote_literal(_POSITIVE_LINE)})"
        fast_id = f"TRY_CAST(line ->> '$.{id_key}' AS BIGINT)"
        prefix_id = "NULL"
        value = (
            f", CASE WHEN fast_ok THEN json_transform(line, "
            f'\'{{"{value_key}":"{kind.value_type}"}}\').{value_key} END AS value'
        )
    else:
        keys = _sql_list([id_key, value_key])
        fast = f"coalesce(try(json_keys(line)) = {keys}, false) AND prefix_id <> ''"
        fast_id = "TRY_CAST(prefix_id AS BIGINT)"
        prefix = rf'^\{{{_WS}"{id_key}"{_WS}:{_WS}({_INT}){_WS},{_WS}"{value_key}"{_WS}:{_WS}"'
        prefix_id = f"regexp_extract(line, {quote_literal(prefix)}, 1)"
        value = ""
    select = (
        f"SELECT file, fast_ok, CASE WHEN fast_ok THEN {fast_id} END AS id{value}, "
        "CASE WHEN NOT fast_ok THEN line END AS line FROM "
        f"(SELECT file, line, prefix_id, coalesce(line IS NOT NULL AND {fast}, false) AS fast_ok "
        f"FROM (SELECT file, line, {prefix_id} AS prefix_id FROM {{lines}}))"
    )
    slow = _stage(con, t, split, plan, select)
    if slow is None:
        return
    if slow:
        _diagnose_master(con, t, kind, split)
    keep = ", value" if kind.value_type else ""
    con.execute(
        f"INSERT INTO {getattr(t, kind.table)} SELECT $s, id{keep} FROM {t.staging} "
        "WHERE id IS NOT NULL",
        {"s": split},
    )


def _diagnose_master(
    con: duckdb.DuckDBPyConnection, t: SpladeTables, kind: _Kind, split: str
) -> None:
    """The lines that failed the fast check: their id (if any), their value when well
    formed, and what is wrong. A line that passed it is well formed with ids of at most
    18 digits (they fit 64 bits), so a folder without slow lines skips all of this."""
    id_key, value_key = kind.id_key, kind.value_key
    shapes = _sql_list(_shapes(kind.json_types))
    exact_ok = f"list_contains({shapes}, try(json_structure(line))::VARCHAR)"
    con.execute(f"UPDATE {t.staging} SET id = {_loose_id(id_key)} WHERE NOT fast_ok")
    if kind.value_type:
        con.execute(
            f"UPDATE {t.staging} SET value = json_transform(line, "
            f'\'{{"{value_key}":"{kind.value_type}"}}\').{value_key} '
            f"WHERE NOT fast_ok AND CASE WHEN json_valid(line) THEN {exact_ok} ELSE false END"
        )
    late = f"WHEN id IS NULL THEN '{id_key} outside the 64-bit integer range' " + (
        "WHEN list_count(value) <> len(value) THEN "
        "'positive_doc_ids holds a null or an id outside the 64-bit range' "
        if kind.value_type
        else ""
    )
    con.execute(
        f"INSERT INTO {t.malformed} SELECT file, $s, {_id_label(id_key)}, problem FROM "
        "(SELECT file, id, line, coalesce(CASE WHEN NOT fast_ok THEN "
        f"{_problem(list(kind.json_types), kind.expected, exact_ok)} END, CASE {late} END) "
        f"AS problem FROM {t.staging}) WHERE problem IS NOT NULL",
        {"s": split},
    )


def _load_scores(
    con: duckdb.DuckDBPyConnection,
    t: SpladeTables,
    plan: ReadPlan,
    pending: GzipLines | None = None,
) -> None:
    """Score rows: exactly `qid` and `scores`; every key an integer doc id (the consumer
    calls int() on it), every value a finite number. A row with a bad entry is malformed;
    every entry keyed by a doc id still counts as that doc's score entry, so a NaN or
    non-numeric score is reported once, by rows_well_formed, and not again as a pair
    without a teacher score (issue 12 item 7)."""
    select = (
        f"SELECT file, fast_ok, "
        f"CASE WHEN fast_ok THEN TRY_CAST(regexp_extract(line, {quote_literal(_SCORE_QID)}, 1) "
        "AS BIGINT) END AS id, "
        "CASE WHEN fast_ok THEN TRY_CAST(json_keys(line, '$.scores') AS BIGINT[]) END AS doc_ids, "
        "CASE WHEN NOT fast_ok THEN line END AS line FROM "
        f"(SELECT file, line, coalesce(regexp_full_match(line, {quote_literal(_SCORE_LINE)}), "
        "false) AS fast_ok FROM {lines})"
    )
    slow = _stage(con, t, "-", plan, select, pending)
    if slow is None:
        return
    if slow:
        _diagnose_scores(con, t)
    con.execute(f"INSERT INTO {t.scores} SELECT id, doc_ids FROM {t.staging} WHERE id IS NOT NULL")


def _diagnose_scores(con: duckdb.DuckDBPyConnection, t: SpladeTables) -> None:
    """The score lines that failed the fast check: their qid (if any), what is wrong, and
    the doc ids of their well-formed entries. A line that passed it is well formed with
    ids of at most 18 digits (they fit 64 bits), so a folder without slow lines skips this."""
    shape_ok = (
        "list_sort(json_keys(line)) = ['qid', 'scores'] AND "
        f"list_contains({_sql_list(list(_INTEGER_TYPES))}, json_type(line, '$.qid')) AND "
        "json_type(line, '$.scores') = 'OBJECT'"
    )
    con.execute(f"UPDATE {t.staging} SET id = {_loose_id('qid')} WHERE NOT fast_ok")
    con.execute(
        f"INSERT INTO {t.malformed} SELECT file, '-', {_id_label('qid')}, problem FROM "
        f"(SELECT file, id, line, CASE WHEN NOT fast_ok THEN "
        f"{_problem(['qid', 'scores'], _SCORES_EXPECTED, shape_ok)} END AS problem "
        f"FROM {t.staging}) WHERE problem IS NOT NULL"
    )
    # entries of the slow rows whose structure is right: each key and value judged
    entry_problem = (
        "CASE WHEN NOT regexp_full_match(key, '[+-]?[0-9]+') OR doc_id IS NULL THEN "
        "'score key ' || to_json(key)::VARCHAR || ' is not an integer doc id' "
        "WHEN value IS NULL OR json_type(value) = 'NULL' THEN "
        "'score of doc ' || key || ' is null, not a number' "
        f"WHEN NOT list_contains({_sql_list(list(_NUMBER_TYPES))}, json_type(value)) THEN "
        "'score of doc ' || key || ' is ' || value || ', not a number' "
        "WHEN NOT isfinite(score) THEN 'score of doc ' || key || ' is not finite' END"
    )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {t.prefix}entries AS "
        f"SELECT file, qid, doc_id, {entry_problem} AS problem FROM "
        "(SELECT file, qid, e.key AS key, e.value AS value, "
        "TRY_CAST(e.key AS BIGINT) AS doc_id, TRY_CAST(e.value AS DOUBLE) AS score FROM "
        "(SELECT file, id AS qid, unnest(map_entries(json_transform(line, "
        '\'{"scores":"MAP(VARCHAR, JSON)"}\').scores)) AS e '
        f"FROM {t.staging} WHERE NOT fast_ok AND id IS NOT NULL AND "
        f"CASE WHEN json_valid(line) THEN {shape_ok} ELSE false END))"
    )
    entries = f"{t.prefix}entries"
    con.execute(
        f"INSERT INTO {t.malformed} SELECT file, '-', 'qid ' || qid, min(problem) "
        f"FROM {entries} WHERE problem IS NOT NULL GROUP BY file, qid"
    )
    con.execute(  # a doc whose score is bad still has an entry: one fault, one message
        f"UPDATE {t.staging} s SET doc_ids = coalesce((SELECT list(doc_id) FROM {entries} e "
        "WHERE e.qid = s.id AND e.doc_id IS NOT NULL), []) WHERE NOT fast_ok AND id IS NOT NULL"
    )
    con.execute(f"DROP TABLE {entries}")
