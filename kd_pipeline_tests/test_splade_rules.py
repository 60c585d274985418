"""The SPLADE rules (kd_pipeline.checks.splade): each caught alone on purpose-built data,
all at once, malformed lines of every kind, the pointwise refusal, the validation split,
the CLI, agreement with the consumer's own logic on random folders, and the real consumer
(light-splade) on the same folders when it is installed."""

from __future__ import annotations

import gzip
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kd_pipeline import lines
from kd_pipeline.checks.splade import (
    SPLADE_RULES,
    LayoutError,
    SpladeFacts,
    all_violations,
    evaluate_splade,
    load_splade,
    resolve_layout,
    validate_folder,
)
from kd_pipeline.cli import main
from kd_pipeline_tests.splade_folders import (
    SpladeData,
    light_splade_data,
    reference_violations,
    valid_data,
    write,
)

RELATIONAL = [
    "positive_qids_in_query_master",
    "queries_have_positive_list",
    "positive_docs_in_doc_master",
    "queries_have_positive",
    "queries_have_negative",
    "positive_pairs_scored",
    "queries_have_score_row",
]


def verdicts(root: Path, **kwargs) -> dict[str, object]:
    con = duckdb.connect()
    return {rule.name: outcome for rule, outcome in validate_folder(con, root, **kwargs)}


def violation_ids(root: Path) -> dict[str, set[str]]:
    """Every violation id per rule (not just the first five)."""
    con = duckdb.connect()
    tables = load_splade(con, resolve_layout(root))
    found: dict[str, set[str]] = {}
    for rule, offender, _ in all_violations(con, SpladeFacts(tables)).fetchall():
        found.setdefault(rule, set()).add(str(offender))
    return found


def failing(root: Path) -> dict[str, str]:
    return {name: o.message() for name, o in verdicts(root).items() if not o.passed}


# ---- each rule alone, then all together ----------------------------------------------------
def _unknown_qid_in_positives(d: SpladeData) -> None:
    d.positives.append({"qid": 1001, "positive_doc_ids": [101]})
    d.scores.append({"qid": 1001, "scores": {"101": 1.0, "201": 0.0}})


def _query_without_positive_list(d: SpladeData) -> None:
    d.queries.append({"qid": 1002, "text": "no list"})
    d.scores.append({"qid": 1002, "scores": {"101": 1.0}})


def _positive_not_in_doc_master(d: SpladeData) -> None:
    d.positives[2]["positive_doc_ids"].append(999)
    d.scores[2]["scores"]["999"] = 4.0


def _empty_positive_list(d: SpladeData) -> None:
    d.positives[3]["positive_doc_ids"] = []


def _no_negative(d: SpladeData) -> None:
    d.scores[4]["scores"] = {"105": 3.0}


def _positive_without_score(d: SpladeData) -> None:
    del d.scores[5]["scores"]["106"]


def _no_score_row(d: SpladeData) -> None:
    del d.scores[6]


def _extra_key(d: SpladeData) -> None:
    d.queries[7]["lang"] = "en"


BROKEN: dict[str, tuple[Callable[[SpladeData], None], str]] = {
    "positive_qids_in_query_master": (_unknown_qid_in_positives, "qid 1001"),
    "queries_have_positive_list": (_query_without_positive_list, "qid 1002"),
    "positive_docs_in_doc_master": (_positive_not_in_doc_master, "qid 3 doc_id 999"),
    "queries_have_positive": (_empty_positive_list, "qid 4"),
    "queries_have_negative": (_no_negative, "qid 5"),
    "positive_pairs_scored": (_positive_without_score, "qid 6 doc_id 106"),
    "queries_have_score_row": (_no_score_row, "qid 7"),
    "rows_well_formed": (_extra_key, "qid 8: extra key(s) lang"),
}


def test_a_valid_folder_passes_every_rule(tmp_path: Path) -> None:
    root = write(valid_data(), tmp_path / "splade")
    assert all(o.passed for o in verdicts(root).values()), failing(root)
    assert reference_violations(valid_data()) == {}


@pytest.mark.parametrize("rule", sorted(BROKEN))
def test_each_rule_alone_names_the_offender(tmp_path: Path, rule: str) -> None:
    data = valid_data()
    mutate, offender = BROKEN[rule]
    mutate(data)
    found = failing(write(data, tmp_path / "splade"))
    assert list(found) == [rule], found
    assert offender in found[rule]


def test_all_rules_together_each_name_their_offender(tmp_path: Path) -> None:
    data = valid_data()
    for mutate, _ in BROKEN.values():
        mutate(data)
    root = write(data, tmp_path / "splade")
    found = failing(root)
    assert sorted(found) == sorted(BROKEN)
    for rule, (_, offender) in BROKEN.items():
        assert offender in found[rule], (rule, found[rule])
    ids = violation_ids(root)
    assert {r: v for r, v in ids.items() if r in RELATIONAL} == reference_violations(data)


def test_an_empty_training_set_is_refused(tmp_path: Path) -> None:
    found = failing(write(SpladeData(), tmp_path / "splade"))
    assert list(found) == ["has_training_queries"]


def test_a_repeated_id_is_a_warning_only(tmp_path: Path) -> None:
    data = valid_data()
    data.documents.append(dict(data.documents[0]))
    result = verdicts(write(data, tmp_path / "splade"))
    assert not result["ids_unique"].passed
    assert "doc_id 101" in result["ids_unique"].message()
    assert all(o.passed for name, o in result.items() if name != "ids_unique")


def sorted_data() -> SpladeData:
    """valid_data with every file in increasing id order: the rules' one-pass path."""
    data = valid_data()
    data.documents.sort(key=lambda row: row["doc_id"])
    return data


def test_sorted_and_shuffled_files_are_judged_alike(tmp_path: Path) -> None:
    data = sorted_data()
    assert all(o.passed for o in verdicts(write(data, tmp_path / "sorted")).values())
    data.positives.reverse()  # no longer line for line with the query master
    data.scores.reverse()
    data.documents.reverse()
    assert all(o.passed for o in verdicts(write(data, tmp_path / "shuffled")).values())
    del data.positives[0]  # qid 8 (reversed) has no positive list now
    result = verdicts(write(data, tmp_path / "missing"))
    assert not result["queries_have_positive_list"].passed
    assert "qid 8" in result["queries_have_positive_list"].message()


@pytest.mark.parametrize(
    "parts", ["queries", "documents", "positives", "scores", "queries+positives"]
)
def test_a_repeated_id_in_sorted_files_is_found(tmp_path: Path, parts: str) -> None:
    data = sorted_data()
    for part in parts.split("+"):  # both: still line for line, ids never decrease
        rows = getattr(data, part)
        rows.insert(3, dict(rows[2]))
    key = "doc_id" if parts == "documents" else "qid"
    result = verdicts(write(data, tmp_path / "splade"))
    assert not result["ids_unique"].passed
    assert f"{key} {rows[2][key]}" in result["ids_unique"].message()


# ---- malformed lines -----------------------------------------------------------------------
MALFORMED = {
    "text not a string": ("query_master", '{"qid": 1, "text": 5}', "found"),
    "text a list": ("doc_master", '{"doc_id": 101, "text": ["x"]}', '"text":["VARCHAR"]'),
    "text an object": ("query_master", '{"qid":1,"text":{"a":"b"}}', "found"),
    "missing key": ("query_master", '{"qid": 1}', "missing key(s) text"),
    "string id": ("doc_master", '{"doc_id": "101", "text": "x"}', '"VARCHAR"'),
    "float id": ("doc_master", '{"doc_id": 101.0, "text": "x"}', '"DOUBLE"'),
    "id beyond 64 bits": ("doc_master", '{"doc_id": 18446744073709551615, "text": "x"}', "64-bit"),
    "not an object": ("doc_master", "[1, 2]", "not a JSON object"),
    "blank line": ("query_master", "", "blank line"),
    "broken JSON": ("query_master", '{"qid": 1, "text": "x', "not valid JSON"),
    "broken JSON positives": ("positive_lists", '{"qid": 1, "positive_doc_ids": [1', "not valid"),
    "broken JSON scores": ("scores", '{"qid": 1, "scores": {"101": 1.0}', "not valid JSON"),
    "float in positive list": (
        "positive_lists",
        '{"qid": 1, "positive_doc_ids": [101.5]}',
        "DOUBLE",
    ),
    "null in positive list": (
        "positive_lists",
        '{"qid": 1, "positive_doc_ids": [101, null]}',
        "null",
    ),
    "string score": ("scores", '{"qid": 1, "scores": {"101": "9.5", "201": 1.0}}', "not a number"),
    "NaN score": ("scores", '{"qid": 1, "scores": {"101": NaN, "201": 1.0}}', "not"),
    "overflowing score": (
        "scores",
        '{"qid": 1, "scores": {"101": 1e400, "201": 1.0}}',
        "not finite",
    ),
    "key not an id": (
        "scores",
        '{"qid": 1, "scores": {"doc-101": 1.0, "101": 2.0}}',
        "integer doc id",
    ),
    "scores a list": ("scores", '{"qid": 1, "scores": [1.0]}', "found"),
    "extra score-row key": (
        "scores",
        '{"qid": 1, "scores": {"101": 1.0}, "x": 1}',
        "extra key(s) x",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_lines_are_named(tmp_path: Path, case: str) -> None:
    stem, line, expected = MALFORMED[case]
    data = valid_data()
    data.raw[stem] = [line]
    result = verdicts(write(data, tmp_path / "splade"))
    outcome = result["rows_well_formed"]
    assert not outcome.passed and outcome.violations == 1, outcome.message()
    assert expected in outcome.message(), outcome.message()


def test_spacing_key_order_gzip_and_folders_are_all_accepted(tmp_path: Path) -> None:
    data = valid_data()
    data.queries = [{"text": r["text"], "qid": r["qid"]} for r in data.queries]  # key order
    for kwargs in (
        {"spaced": True},
        {"gz_scores": False},  # nothing gzipped
        {"gz_masters": True, "gz_scores": False},
        {"parts": 3},
        {"parts": 2, "gz_masters": True},
    ):
        root = write(data, tmp_path / str(sorted(kwargs.items())))
        assert not failing(root), (kwargs, failing(root))


def test_multi_member_gzip_is_read_whole(tmp_path: Path) -> None:
    root = write(valid_data(), tmp_path / "splade")
    scores = root / "hard-negatives-cross-encoder-scores.ndjson.gz"
    lines = gzip.decompress(scores.read_bytes()).splitlines(keepends=True)
    scores.write_bytes(b"".join(gzip.compress(line, mtime=0) for line in lines))
    assert not failing(root)


def test_an_unreadable_file_is_one_violation_naming_it(tmp_path: Path) -> None:
    root = write(valid_data(), tmp_path / "splade")
    (root / "hard-negatives-cross-encoder-scores.ndjson.gz").write_bytes(b"not gzip at all")
    found = failing(root)
    assert "cannot be read" in found["rows_well_formed"]
    assert "hard-negatives-cross-encoder-scores.ndjson.gz" in found["rows_well_formed"]


@pytest.mark.parametrize("gz", [False, True])
def test_a_line_over_8_mib_is_read_in_one_pass(tmp_path: Path, gz: bool) -> None:
    """DuckDB's line limit comes from the census's longest line: no failed first read."""
    data = valid_data()
    data.documents[0]["text"] = "long " * ((8 << 20) // 5 + 1)
    entries = (8 << 20) // len('"1000000":0.25,') + 1  # a score line as long
    data.scores[0]["scores"].update({str(10**6 + i): 0.25 for i in range(entries)})
    assert not failing(write(data, tmp_path / "splade", gz_masters=gz))


@pytest.mark.parametrize(
    ("mib", "gz"), [(60, False), (100, False), (100, True)], ids=["60MB", "100MB", "100MB-gz"]
)
def test_a_line_longer_than_any_read_fails_naming_its_file(
    tmp_path: Path, mib: int, gz: bool
) -> None:
    """Past the reader's limit a line is never skipped: its file is named and refused (a
    100 MB line used to vanish, the folder judged valid)."""
    data = valid_data()
    data.documents[3]["text"] = "x" * (mib * 2**20)
    root = write(data, tmp_path / "splade", gz_masters=gz)
    found = failing(root)
    message = found["rows_well_formed"]
    assert f"train/doc_master.ndjson{'.gz' if gz else ''}" in message
    assert "line 4: line of" in message and "the file is refused" in message
    assert main(["validate-splade", str(root)]) == 1


@pytest.mark.parametrize("gz", [False, True])
def test_mixed_line_ends_are_read(tmp_path: Path, gz: bool) -> None:
    root = write(valid_data(), tmp_path / "splade", gz_masters=gz, gz_scores=gz)
    suffix = ".ndjson.gz" if gz else ".ndjson"
    for path in [*root.rglob(f"*{suffix}")]:
        raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
        lines = raw.splitlines()
        mixed = b"".join(line + (b"\r\n" if i % 2 else b"\n") for i, line in enumerate(lines))
        path.write_bytes(gzip.compress(mixed) if gz else mixed)
    assert not failing(root)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda line: line[:10] + b"\r" + line[10:], "carriage return inside a line"),
        (lambda line: line + b"\r", "carriage return inside a line"),  # \r\r\n, or a last CR
        (lambda line: line[:10] + b"\0" * 4096 + line[10:], "NUL bytes"),  # a zeroed block
    ],
    ids=["cr-inside", "cr-cr-lf", "nul-block"],
)
@pytest.mark.parametrize("gz", [False, True])
def test_a_line_the_census_rejects_refuses_its_file_by_line(
    tmp_path: Path, gz: bool, damage: Callable[[bytes], bytes], reason: str
) -> None:
    """A CR that does not end a line (the consumer's line reader splits there) or a NUL
    byte: the file is one rows_well_formed violation naming it and the line, never a
    reader crash; the last line of a file ending in CR the same."""
    root = write(valid_data(), tmp_path / "splade", gz_masters=gz)
    suffix = ".ndjson.gz" if gz else ".ndjson"

    def rewrite(stem: str, change: Callable[[list[bytes]], bytes]) -> int:
        path = root / "train" / f"{stem}{suffix}"
        raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
        rows = raw.splitlines()
        changed = change(rows)
        path.write_bytes(gzip.compress(changed) if gz else changed)
        return len(rows)

    rewrite("doc_master", lambda rows: b"\r\n".join([*rows[:2], damage(rows[2]), *rows[3:], b""]))
    message = failing(root)["rows_well_formed"]
    assert f"train/doc_master{suffix} (file): line 3: {reason}" in message
    assert "the file is refused" in message
    last = rewrite("query_master", lambda rows: b"\n".join(rows) + b"\r")
    assert (
        f"train/query_master{suffix} (file): line {last}: carriage return"
        in (failing(root)["rows_well_formed"])
    )


def test_an_lf_copy_without_room_names_the_file_and_the_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mixed line ends need an LF copy, made under the scratch folder given (else next to
    the folder); without room (the spare it must leave set above any disk) the file is
    refused in one line naming the bytes, not a traceback; with room nothing is left."""
    root = write(valid_data(), tmp_path / "splade", gz_scores=False)
    path = root / "train" / "doc_master.ndjson"
    rows = path.read_bytes().splitlines()
    path.write_bytes(b"".join(r + (b"\r\n" if i % 2 else b"\n") for i, r in enumerate(rows)))
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    outcomes = verdicts(root, scratch=scratch)
    assert all(o.passed for o in outcomes.values()) and list(scratch.iterdir()) == []
    monkeypatch.setattr(lines, "SPARE_BYTES", 1 << 60)
    message = failing(root)["rows_well_formed"]
    assert "train/doc_master.ndjson (file): a cleaned copy (LF ends" in message
    assert f"needs {path.stat().st_size - len(rows) // 2:,} bytes" in message


def test_a_corrupt_gzip_trailer_names_the_file(tmp_path: Path) -> None:
    root = write(valid_data(), tmp_path / "splade")
    scores = root / "hard-negatives-cross-encoder-scores.ndjson.gz"
    data = bytearray(scores.read_bytes())
    data[-6] ^= 0x01  # the CRC-32: only reading the whole member finds it
    scores.write_bytes(bytes(data))
    message = failing(root)["rows_well_formed"]
    assert "hard-negatives-cross-encoder-scores.ndjson.gz" in message
    assert "cannot be read" in message and "CRC" in message


@pytest.mark.parametrize("value", ["NaN", '"9.5"', "1e400", "null"])
def test_a_bad_teacher_score_is_one_message(tmp_path: Path, value: str) -> None:
    """A positive's score that is not a finite number: rows_well_formed says so, and the
    pair is not reported a second time as having no teacher score."""
    data = valid_data()
    data.scores = data.scores[1:]
    data.raw["scores"] = [f'{{"qid": 1, "scores": {{"101": {value}, "201": 1.0}}}}']
    found = failing(write(data, tmp_path / "splade"))
    assert list(found) == ["rows_well_formed"], found
    assert "score of doc 101" in found["rows_well_formed"]


def test_validate_one_split_applies_the_rules_to_that_split(tmp_path: Path, capsys) -> None:
    data = valid_data(4)
    val = valid_data(8)
    val.queries, val.positives = val.queries[4:], val.positives[4:]
    data.validation = val
    data.scores = valid_data(8).scores
    root = write(data, tmp_path / "splade")
    assert main(["validate-splade", str(root), "--split", "validation"]) == 0
    assert "no queries" not in capsys.readouterr().out
    val.queries, val.positives = [], []  # an empty validation split is refused, by name
    root = write(data, tmp_path / "empty-validation")
    found = failing_split(root, "validation")
    assert list(found) == ["has_training_queries"]
    assert "validation/query_master" in found["has_training_queries"]
    assert "no queries in the validation split" in found["has_training_queries"]
    assert not failing_split(root, "train")


def failing_split(root: Path, split: str) -> dict[str, str]:
    return {name: o.message() for name, o in verdicts(root, splits=[split]).items() if not o.passed}


def test_missing_files_are_a_layout_error(tmp_path: Path) -> None:
    root = write(valid_data(), tmp_path / "splade")
    (root / "train" / "doc_master.ndjson").unlink()
    with pytest.raises(LayoutError, match="train/doc_master"):
        resolve_layout(root)


# ---- pointwise data, validation split ------------------------------------------------------
def test_pointwise_data_is_refused_by_rule_5_saying_why_and_what_instead(tmp_path: Path) -> None:
    data = valid_data()
    for row in data.positives:  # every scored document is a positive: pointwise pairs
        row["positive_doc_ids"] = sorted(int(k) for k in data.scores[row["qid"] - 1]["scores"])
    found = failing(write(data, tmp_path / "splade"))
    assert list(found) == ["queries_have_negative"]
    message = found["queries_have_negative"]
    assert "8 violation(s)" in message and "no scored negatives" in message
    assert "pointwise" in message and "sentence-transformers (query, document, score)" in message


def test_rule_5_names_the_alternative_the_facts_give(tmp_path: Path) -> None:
    """The export passes its own pointwise export as the alternative (SpladeFacts): the
    message names it instead of the generic one."""
    data = valid_data()
    for row in data.positives:
        row["positive_doc_ids"] = sorted(int(k) for k in data.scores[row["qid"] - 1]["scores"])
    root = write(data, tmp_path / "splade")
    chosen = "exports/pointwise/pointwise_example"
    message = verdicts(root, alternative=chosen)["queries_have_negative"].message()
    assert f"use {chosen} instead" in message
    assert "sentence-transformers (query, document, score)" not in message


def test_validation_split_skips_rule_5_and_has_its_own_masters(tmp_path: Path) -> None:
    data = valid_data(4)
    val = valid_data(8)
    val.queries, val.positives = val.queries[4:], val.positives[4:]
    val.documents = [r for r in val.documents if r["doc_id"] % 100 > 4 or r["doc_id"] == 300]
    data.validation = val
    data.scores = valid_data(8).scores
    data.scores[5]["scores"] = {"106": 1.0}  # a validation query without negative: allowed
    root = write(data, tmp_path / "splade")
    assert not failing(root)
    val.documents = [r for r in val.documents if r["doc_id"] != 107]
    found = failing(write(data, tmp_path / "again"))
    assert list(found) == ["positive_docs_in_doc_master"]
    assert "validation qid 7 doc_id 107" in found["positive_docs_in_doc_master"]


# ---- agreement with the consumer's own logic on random folders -----------------------------
@st.composite
def random_folders(draw: st.DrawFn) -> SpladeData:
    qids = st.integers(1, 6)
    docs = st.integers(1, 8)
    return SpladeData(
        queries=[{"qid": q, "text": f"q{q}"} for q in sorted(draw(st.sets(qids)))],
        documents=[{"doc_id": d, "text": f"d{d}"} for d in sorted(draw(st.sets(docs)))],
        positives=[
            {"qid": q, "positive_doc_ids": sorted(draw(st.sets(docs, max_size=3)))}
            for q in sorted(draw(st.sets(qids)))
        ],
        scores=[
            {"qid": q, "scores": {str(d): 1.0 for d in sorted(draw(st.sets(docs, max_size=4)))}}
            for q in sorted(draw(st.sets(qids)))
        ],
    )


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=random_folders())
def test_rules_agree_with_the_consumers_logic(tmp_path: Path, data: SpladeData) -> None:
    root = write(data, tmp_path / f"f{abs(hash(repr(data)))}")
    found = violation_ids(root)
    assert {r: v for r, v in found.items() if r in RELATIONAL} == reference_violations(data)


# ---- the command line ----------------------------------------------------------------------
def test_cli_exit_codes_and_one_line_per_violated_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write(valid_data(), tmp_path / "good")
    assert main(["validate-splade", str(good)]) == 0
    out, err = capsys.readouterr()
    assert out == "" and "valid" in err

    data = valid_data()
    for mutate, _ in BROKEN.values():
        mutate(data)
    bad = write(data, tmp_path / "bad")
    assert main(["validate-splade", str(bad)]) == 1
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert sorted(line.split(":")[0] for line in lines) == sorted(BROKEN)
    for line in lines:
        rule = line.split(":")[0]
        assert BROKEN[rule][1] in line
    assert "INVALID, 8 of 9 rules violated" in err

    assert main(["validate-splade", str(tmp_path / "nowhere")]) == 2
    assert "not a folder" in capsys.readouterr().err


def test_cli_reads_a_score_file_given_apart_and_one_split(tmp_path: Path) -> None:
    root = write(valid_data(), tmp_path / "splade")
    moved = tmp_path / "elsewhere.ndjson.gz"
    (root / "hard-negatives-cross-encoder-scores.ndjson.gz").rename(moved)
    assert main(["validate-splade", str(root)]) == 2
    assert main(["validate-splade", str(root), "--scores", str(moved), "--split", "train"]) == 0


# ---- the real consumer ---------------------------------------------------------------------
def light_splade_dataset(root: Path, split: str = "train"):
    """light-splade's own dataset over a folder (it validates on construction)."""
    data = light_splade_data()
    layout = resolve_layout(root)
    files = layout.splits[split]
    return data.TripletDistilDataset(
        files["queries"][0],
        files["documents"][0],
        files["positives"][0],
        layout.scores[0],
        is_validation_set=split == "validation",
    )


def test_light_splade_accepts_what_the_rules_accept(tmp_path: Path) -> None:
    root = write(valid_data(), tmp_path / "splade")
    dataset = light_splade_dataset(root)
    assert len(dataset) == 8
    query, positive, negative, pos_score, _neg_score = dataset[0]
    assert query.startswith("query 1") and positive == "document 101"
    assert negative in {"document 201", "shared"} and pos_score == 9.5


@pytest.mark.parametrize("rule", [r for r in sorted(BROKEN) if r != "rows_well_formed"])
def test_light_splade_refuses_what_each_rule_refuses(tmp_path: Path, rule: str) -> None:
    light_splade_data()  # the consumer must be there before the folder is broken
    data = valid_data()
    BROKEN[rule][0](data)
    root = write(data, tmp_path / "splade")
    assert list(failing(root)) == [rule]
    with pytest.raises((ValueError, IndexError)):
        light_splade_dataset(root)


def test_light_splade_fails_on_an_extra_key_as_the_rule_says(tmp_path: Path) -> None:
    light_splade_data()  # the consumer must be there before the folder is broken
    data = valid_data()
    _extra_key(data)
    with pytest.raises(TypeError, match="unexpected keyword argument 'lang'"):
        light_splade_dataset(write(data, tmp_path / "splade"))


def test_evaluate_splade_reports_every_rule(tmp_path: Path) -> None:
    con = duckdb.connect()
    tables = load_splade(con, resolve_layout(write(valid_data(), tmp_path / "s")))
    names = [rule.name for rule, _ in evaluate_splade(con, tables)]
    assert names == [r.name for r in SPLADE_RULES]


@pytest.mark.parametrize("gz_scores", [False, True])
def test_loading_leaves_the_connection_free_for_relations(tmp_path: Path, gz_scores: bool) -> None:
    """The export's audit runs the rules as relations right after loading: a half-read
    result left on the connection would block them."""
    con = duckdb.connect()
    load_splade(con, resolve_layout(write(valid_data(), tmp_path / "s", gz_scores=gz_scores)))
    assert con.sql("SELECT 42").fetchall() == [(42,)]
