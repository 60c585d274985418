"""The rules light-splade enforces on a SPLADE folder, as queries over its loaded tables.

light-splade reads four NDJSON files and validates them only after loading everything, in
Python, one rule at a time, stopping at the first offender. These are the same rules as
plain functions over DuckDB tables, each returning *every* violation as `(id, detail)`
rows, so the export's blocking checks, `kd-pipeline validate-splade` and the
tests all judge a folder the same way, in seconds, before a trainer ever starts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import duckdb

from kd_pipeline.checks.rules import EXAMPLES, Rule, RuleFn, RuleOutcome, Table
from kd_pipeline.checks.splade.layout import resolve_layout
from kd_pipeline.checks.splade.load import SpladeTables, load_splade
from kd_pipeline.lake import quote_literal

POINTWISE_ALTERNATIVE = (
    "a pointwise export, e.g. sentence-transformers (query, document, score) "
    "(kd-pipeline format `pointwise`)"
)


@dataclass(frozen=True)
class SpladeFacts:
    """What the SPLADE rules read: the folder's tables (`load_splade`, temp tables of the
    connection the rules run on) and what to use instead of SPLADE when the data turns out
    pointwise (named by queries_have_negative's message)."""

    tables: SpladeTables
    alternative: str = POINTWISE_ALTERNATIVE


# Each rule's violations: a function (connection, facts) -> relation of (id, detail): every
# violation, not the first. Ids are prefixed by the split when a folder has a
# validation one.
Violations = Callable[[duckdb.DuckDBPyConnection, SpladeFacts], duckdb.DuckDBPyRelation]

_NONE = "SELECT NULL AS id, NULL AS detail LIMIT 0"  # a rule with nothing to report


def _where(t: SpladeTables, split_expr: str) -> str:
    """`<split> ` before an id, when the folder has more than the train split."""
    return f"{split_expr} || ' '" if len(t.splits) > 1 else "''"


def _violations(
    con: duckdb.DuckDBPyConnection, select: str, params: dict | None = None
) -> duckdb.DuckDBPyRelation:
    """The relation of select, which yields (id, detail)."""
    return con.sql(f"SELECT id, detail FROM ({select})", params=params)


def rows_well_formed(con: duckdb.DuckDBPyConnection, facts: SpladeFacts) -> duckdb.DuckDBPyRelation:
    """Each line is one JSON object with exactly the file's keys, ids JSON integers, texts
    strings, scores finite numbers keyed by integer doc ids (the consumer's dataclasses
    reject extra or missing keys; a string id silently never matches)."""
    t = facts.tables
    return _violations(
        con,
        "SELECT CASE WHEN starts_with(file, $root) THEN file[len($root) + 1:] ELSE file END "
        f"|| ' ' || id || ': ' || problem AS id, problem AS detail FROM {t.malformed}",
        {"root": t.root.rstrip("/") + "/"},
    )


def positive_qids_in_query_master(
    con: duckdb.DuckDBPyConnection, facts: SpladeFacts
) -> duckdb.DuckDBPyRelation:
    """Rule 1: every qid of the positive lists exists in the query master."""
    t = facts.tables
    return _violations(
        con,
        f"SELECT {_where(t, 'split')} || 'qid ' || qid AS id, "
        "'qid of the positive lists is not in the query master' AS detail "
        f"FROM {_qid_presence(con, t)} WHERE positive_lists > 0 AND queries = 0",
    )


def queries_have_positive_list(
    con: duckdb.DuckDBPyConnection, facts: SpladeFacts
) -> duckdb.DuckDBPyRelation:
    """Rule 2: every qid of the query master has a positive list."""
    t = facts.tables
    return _violations(
        con,
        f"SELECT {_where(t, 'split')} || 'qid ' || qid AS id, "
        "'qid of the query master has no positive list' AS detail "
        f"FROM {_qid_presence(con, t)} WHERE queries > 0 AND positive_lists = 0",
    )


def _qid_presence(con: duckdb.DuckDBPyConnection, t: SpladeTables) -> str:
    """(split, qid, queries, positive_lists): how often each qid occurs in its split's query
    master and positive lists, counted once for the rules that compare them. When both
    files hold the same (split, qid) at every line and the qids only increase (files
    written in one sorted order, like ours), each qid is once in each, seen in one
    streaming pass; otherwise they are counted by a hash aggregate."""
    name = f"{t.prefix}qid_presence"
    if _exists(con, name):
        return name
    counted = (
        f"SELECT split, qid, 1 AS queries, 1 AS positive_lists FROM {t.queries}"
        if _line_for_line(con, t.queries, t.positives, "qid", "split")
        else "SELECT split, qid, count_if(in_queries) AS queries, "
        "count_if(NOT in_queries) AS positive_lists FROM "
        f"(SELECT split, qid, true AS in_queries FROM {t.queries} "
        f"UNION ALL SELECT split, qid, false FROM {t.positives}) GROUP BY split, qid"
    )
    con.execute(f"CREATE TEMP TABLE {name} AS {counted}")
    return name


def _line_for_line(con: duckdb.DuckDBPyConnection, a: str, b: str, key: str, *same: str) -> bool:
    """Tables a and b hold the same key (and same columns) at every row, and the key only
    increases: then each key is once in each and a POSITIONAL JOIN is their join on it,
    proven in one streaming pass (files written in one sorted order, like ours)."""
    differs = " OR ".join(f"a.{c} IS DISTINCT FROM b.{c}" for c in (key, *same))
    ((aligned,),) = con.execute(
        f"SELECT (SELECT count(*) FROM {a}) = (SELECT count(*) FROM {b}) AND "
        f"count_if(a.{key} <= a.previous OR {differs}) = 0 FROM "
        f"(SELECT *, lag({key}) OVER () AS previous FROM {a}) a POSITIONAL JOIN {b} b"
    ).fetchall()
    return bool(aligned)


def _exists(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    """A temp table of this connection exists (a derived table already built)."""
    ((found,),) = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE temporary AND table_name = $t", {"t": table}
    ).fetchall()
    return bool(found)


def _only_increasing(con: duckdb.DuckDBPyConnection, table: str, key: str) -> bool:
    """The key only increases in the table's row order, so no key repeats (whatever that
    order is): one streaming pass, where finding repeats takes a hash aggregate."""
    ((repeats,),) = con.execute(
        f"SELECT count_if({key} <= previous) FROM "
        f"(SELECT {key}, lag({key}) OVER () AS previous FROM {table})"
    ).fetchall()
    return repeats == 0


def _positive_pairs(t: SpladeTables) -> str:
    return (
        f"(SELECT DISTINCT split, qid, unnest(positive_doc_ids) AS doc_id FROM {t.positives} "
        "WHERE positive_doc_ids IS NOT NULL)"
    )


def positive_docs_in_doc_master(
    con: duckdb.DuckDBPyConnection, facts: SpladeFacts
) -> duckdb.DuckDBPyRelation:
    """Rule 3: every positive doc_id exists in the document master (of its split)."""
    t = facts.tables
    return _violations(
        con,
        f"SELECT {_where(t, 'split')} || 'qid ' || qid || ' doc_id ' || doc_id AS id, "
        "'positive doc_id is not in the document master' AS detail "
        f"FROM {_positive_pairs(t)} p ANTI JOIN {t.documents} d USING (split, doc_id) "
        "WHERE doc_id IS NOT NULL",
    )


def queries_have_positive(
    con: duckdb.DuckDBPyConnection, facts: SpladeFacts
) -> duckdb.DuckDBPyRelation:
    """Rule 4: every query has at least one positive."""
    t = facts.tables
    return _violations(
        con,
        f"SELECT DISTINCT {_where(t, 'split')} || 'qid ' || qid AS id, "
        "'the positive list is empty' AS detail "
        f"FROM {t.positives} WHERE len(positive_doc_ids) = 0",
    )


def _positive_scores(con: duckdb.DuckDBPyConnection, t: SpladeTables) -> str:
    """(split, qid, unscored, negatives): per positive list and its score row, the positives
    without a score and the scored non-positives, built in one pass for rules 5 and 6. A
    repeated qid (a warning of ids_unique) gives a row per pair of its rows."""
    name = f"{t.prefix}positive_scores"
    if _exists(con, name):
        return name
    joined = (
        f"{t.positives} p POSITIONAL JOIN {t.scores} s"
        if _line_for_line(con, t.positives, t.scores, "qid")
        else f"{t.positives} p JOIN {t.scores} s USING (qid)"
    )
    con.execute(
        f"CREATE TEMP TABLE {name} AS SELECT p.split, p.qid, "
        "list_filter(p.positive_doc_ids, lambda d: NOT list_contains(s.doc_ids, d)) AS unscored, "
        "list_filter(s.doc_ids, lambda d: NOT list_contains(p.positive_doc_ids, d)) AS negatives "
        f"FROM {joined} WHERE p.positive_doc_ids IS NOT NULL"
    )
    return name


def queries_have_negative(
    con: duckdb.DuckDBPyConnection, facts: SpladeFacts
) -> duckdb.DuckDBPyRelation:
    """Rule 5 (training split): every query has an available negative, a doc with a score
    that is not a positive and is in the document master. When no query has one the data
    is pointwise (every scored pair a positive): the detail says so and what to use
    (facts.alternative)."""
    t = facts.tables
    if "train" not in t.splits:
        return _violations(con, _NONE)
    # per query of the train positive lists with a score row: its scored non-positives
    negatives = f"(SELECT qid, negatives FROM {_positive_scores(con, t)} WHERE split = 'train')"
    available = f"{t.prefix}with_negative"
    docs = f"(SELECT doc_id FROM {t.documents} WHERE split = 'train')"
    # most queries' first negative is in the master: unnest only the other queries' lists
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {available} AS SELECT qid FROM "
        f"(SELECT qid, negatives[1] AS doc_id FROM {negatives}) SEMI JOIN {docs} USING (doc_id)"
    )
    ((rows, first_available),) = con.execute(
        f"SELECT (SELECT count(*) FROM {negatives}), (SELECT count(*) FROM {available})"
    ).fetchall()
    if rows == first_available:  # every row's first negative is available: no violation
        return _violations(con, _NONE)
    con.execute(
        f"INSERT INTO {available} SELECT DISTINCT qid FROM (SELECT qid, unnest(negatives) "
        f"AS doc_id FROM {negatives} ANTI JOIN {available} USING (qid)) "
        f"SEMI JOIN {docs} USING (doc_id)"
    )
    checked = f"(SELECT DISTINCT qid FROM {negatives})"
    ((checked_count, with_negative),) = con.execute(
        f"SELECT (SELECT count(*) FROM {checked}), (SELECT count(*) FROM {available})"
    ).fetchall()
    if checked_count and not with_negative:
        detail = (
            "no scored negatives: no query has a scored document that is not a positive, "
            "so this is pointwise data and SPLADE distillation (one positive and one negative "
            f"per query, with teacher scores) cannot sample a negative; use {facts.alternative} "
            "instead"
        )
    else:
        detail = "no available negative (a scored doc, not a positive, in the document master)"
    return _violations(
        con,
        f"SELECT {_where(t, quote_literal('train'))} || 'qid ' || qid AS id, "
        f"{quote_literal(detail)} AS detail FROM {checked} ANTI JOIN {available} USING (qid)",
    )


def positive_pairs_scored(
    con: duckdb.DuckDBPyConnection, facts: SpladeFacts
) -> duckdb.DuckDBPyRelation:
    """Rule 6: every (query, positive) pair has a teacher score."""
    t = facts.tables
    unscored = (  # list_filter, not list_has_all: that one is 20x slower (DuckDB 2.0)
        f"SELECT DISTINCT split, qid, unnest(unscored) AS doc_id FROM {_positive_scores(con, t)} "
        "WHERE len(unscored) > 0"
    )
    return _violations(
        con,
        f"SELECT {_where(t, 'split')} || 'qid ' || qid || ' doc_id ' || doc_id AS id, "
        "'(query, positive) pair has no teacher score' AS detail "
        f"FROM ({unscored}) WHERE doc_id IS NOT NULL",
    )


def queries_have_score_row(
    con: duckdb.DuckDBPyConnection, facts: SpladeFacts
) -> duckdb.DuckDBPyRelation:
    """Every qid (query master or positive lists) has a row in the score file: the consumer
    looks each one up and fails on a missing one."""
    t = facts.tables
    return _violations(
        con,
        f"SELECT {_where(t, 'split')} || 'qid ' || qid AS id, "
        "'qid has no row in the score file' AS detail "
        f"FROM {_qid_presence(con, t)} ANTI JOIN {t.scores} USING (qid)",
    )


def has_training_queries(
    con: duckdb.DuckDBPyConnection, facts: SpladeFacts
) -> duckdb.DuckDBPyRelation:
    """Every split read has queries in its query master (an empty training set is a crash
    at the first epoch; an empty validation set one at the first evaluation). The rule
    applies to the splits asked for: `--split validation` judges the validation master."""
    t = facts.tables
    splits = ", ".join(quote_literal(s) for s in t.splits)
    return _violations(
        con,
        "SELECT s || '/query_master' AS id, 'no queries in the ' || s || ' split' AS detail "
        f"FROM (SELECT unnest([{splits}]) AS s) WHERE s NOT IN "
        f"(SELECT DISTINCT CAST(split AS VARCHAR) FROM {t.queries})",
    )


def ids_unique(con: duckdb.DuckDBPyConnection, facts: SpladeFacts) -> duckdb.DuckDBPyRelation:
    """An id occurs once per file (the consumer keeps the last row of a repeated id and
    silently drops the others; warning)."""
    t = facts.tables
    where = _where(t, "split")
    presence = _qid_presence(con, t)
    parts = [
        f"SELECT {where} || 'qid ' || qid AS id, 'qid occurs ' || {column} || ' times in "
        f"{name}' AS detail FROM {presence} WHERE {column} > 1"
        for column, name in (
            ("queries", "the query master"),
            ("positive_lists", "the positive lists"),
        )
    ]
    if not _only_increasing(con, t.documents, "doc_id"):
        parts.append(
            f"SELECT {where} || 'doc_id ' || doc_id AS id, 'doc_id occurs ' || count(*) || "
            f"' times in the document master' AS detail FROM {t.documents} "
            "GROUP BY split, doc_id HAVING count(*) > 1"
        )
    if not _only_increasing(con, t.scores, "qid"):
        parts.append(
            "SELECT 'qid ' || qid AS id, 'qid occurs ' || count(*) || ' times in the score file' "
            f"AS detail FROM {t.scores} GROUP BY qid HAVING count(*) > 1"
        )
    return _violations(con, " UNION ALL ".join(parts))


def outcome_of(violations: duckdb.DuckDBPyRelation, detail: str) -> RuleOutcome:
    """Count the violations and name the first few (ordered, so reports are stable); the
    detail is the first violation's, or the given one when there is none."""
    ((count,),) = violations.aggregate("count(*)").fetchall()
    examples: tuple[str, ...] = ()
    shown = detail
    if count:
        rows = violations.order("id").limit(EXAMPLES).fetchall()
        examples = tuple(str(r[0]) for r in rows)
        shown = str(rows[0][1])
    return RuleOutcome(count == 0, int(count), examples, shown)


@dataclass(frozen=True)
class CountViolations:
    """The judge of a SPLADE rule: its verdict on a folder counts the relation `violations`
    returns for the folder's facts and names the first few (`outcome_of`; `holds` is the
    detail of a verdict without violations). The Table a rule is evaluated on is not read:
    the facts name the folder's tables."""

    violations: Violations
    holds: str

    def __call__(self, facts: SpladeFacts) -> RuleFn:
        def evaluate(con: duckdb.DuckDBPyConnection, _table: Table) -> RuleOutcome:
            return outcome_of(self.violations(con, facts), self.holds)

        return evaluate


def splade_rule(
    name: str, description: str, violations: Violations, blocking: bool = True
) -> Rule[SpladeFacts]:
    """A rule judged by its violations (`CountViolations`); name: the asset check's."""
    return Rule(name, description, CountViolations(violations, description), blocking)


SPLADE_RULES: list[Rule[SpladeFacts]] = [
    splade_rule(
        "rows_well_formed",
        "Each line is one JSON object with exactly the file's keys; ids are JSON integers, "
        "texts strings, scores finite numbers keyed by integer doc ids.",
        rows_well_formed,
    ),
    splade_rule(
        "positive_qids_in_query_master",
        "Rule 1: every qid of the positive lists exists in the query master.",
        positive_qids_in_query_master,
    ),
    splade_rule(
        "queries_have_positive_list",
        "Rule 2: every qid of the query master has a positive list.",
        queries_have_positive_list,
    ),
    splade_rule(
        "positive_docs_in_doc_master",
        "Rule 3: every positive doc_id exists in the document master.",
        positive_docs_in_doc_master,
    ),
    splade_rule(
        "queries_have_positive",
        "Rule 4: every query has at least one positive.",
        queries_have_positive,
    ),
    splade_rule(
        "queries_have_negative",
        "Rule 5 (training split): every query has an available negative: a document with a "
        "teacher score, not a positive, present in the document master.",
        queries_have_negative,
    ),
    splade_rule(
        "positive_pairs_scored",
        "Rule 6: every (query, positive) pair has a teacher score.",
        positive_pairs_scored,
    ),
    splade_rule(
        "queries_have_score_row",
        "Every qid of the query master and positive lists has a row in the score file.",
        queries_have_score_row,
    ),
    splade_rule(
        "has_training_queries",
        "The query master of each split read (train, validation, or those asked for) is not "
        "empty: a split without queries crashes the consumer at its first epoch or evaluation.",
        has_training_queries,
    ),
    splade_rule(
        "ids_unique",
        "Each id occurs once per file (warning: the consumer keeps the last one).",
        ids_unique,
        blocking=False,
    ),
]


def evaluate_splade(
    con: duckdb.DuckDBPyConnection,
    t: SpladeTables,
    alternative: str = POINTWISE_ALTERNATIVE,
) -> list[tuple[Rule[SpladeFacts], RuleOutcome]]:
    """Every rule's verdict on a loaded folder, in SPLADE_RULES order."""
    facts = SpladeFacts(t, alternative)
    folder = Table(t.queries)  # not read by the rules: the facts name the tables
    return [(rule, rule.evaluate(con, folder, facts)) for rule in SPLADE_RULES]


def all_violations(con: duckdb.DuckDBPyConnection, facts: SpladeFacts) -> duckdb.DuckDBPyRelation:
    """Every violation of every rule, as one relation (rule, id, detail): all of them, where
    a verdict names the first few."""
    rels = []
    for rule in SPLADE_RULES:
        assert isinstance(rule.judge, CountViolations)  # as splade_rule declares them
        rels.append(rule.judge.violations(con, facts).project(f"'{rule.name}' AS rule, *"))
    union = rels[0]
    for rel in rels[1:]:
        union = union.union(rel)
    return union


def validate_folder(
    con: duckdb.DuckDBPyConnection,
    root: Path,
    *,
    scores: Path | None = None,
    splits: Sequence[str] | None = None,
    alternative: str = POINTWISE_ALTERNATIVE,
    scratch: Path | None = None,
) -> list[tuple[Rule[SpladeFacts], RuleOutcome]]:
    """Resolve, load and judge a SPLADE folder (the CLI's whole job); scratch: where LF
    copies of files with mixed line ends go (`load_splade`). Raises LayoutError when a
    file is missing."""
    layout = resolve_layout(root, scores=scores, splits=splits)
    tables = load_splade(con, layout, scratch=scratch)
    return evaluate_splade(con, tables, alternative)
