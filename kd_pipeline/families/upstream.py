"""Where the pairwise, listwise, mined and text families' upstream files live, how each
file is verified, and what Zenodo currently says about its records' files.

Plain data and the checksum decision only (no Dagster, no resources): the sample generator
(`kd_pipeline.sample`) imports it for the URLs its stand-ins live under. Facts come from the
project's UPSTREAM notes: URLs, md5s and the per-variant top-k of the Rank-DistiLLM runs.

Checksums: an upstream md5 is the md5 of the *real* file. The sample mirror (and any other
stand-in mirror, e.g. a test fixture) holds different bytes under the same URLs, so it
declares its own sums in `stand-in-md5sums.json` at its root. A fetch through a local
mirror verifies against that declaration when the mirror has one and lists the URL;
everything else (a mirror without a declaration, the network, an HTTP mirror) verifies
against the md5 pinned here. A run tagged `kd-pipeline/upstream_revision=md5:<hex>` (the
Zenodo sensor's runs, or a run launched with that tag) expects that md5 for its Zenodo file
instead: the run was started for those bytes. The lineage metadata always says which md5
was expected and where it came from.
"""

from __future__ import annotations

import json
import os
import urllib.parse
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from kd_pipeline.fetch import (
    MD5_HEX,
    ChecksumMismatch,
    Fetcher,
    FetchError,
    file_md5,
    mirror_path_for_url,
    read_url,
)
from kd_pipeline.settings import DEFAULT_ZENODO_API, hub_timeout, zenodo_api

STAND_IN_CHECKSUMS = "stand-in-md5sums.json"
# Run tags the upstream sensors set; a Zenodo family asset honours the revision tag.
UPSTREAM_REVISION_TAG = "kd-pipeline/upstream_revision"
ZENODO_RECORD_TAG = "kd-pipeline/zenodo_record"

# ---- MS MARCO passage and BEIR FiQA texts --------------------------------------------------
MSMARCO_BASE = "https://msmarco.z22.web.core.windows.net/msmarcoranking/"
MSMARCO_COLLECTION_URL = MSMARCO_BASE + "collection.tar.gz"
MSMARCO_QUERIES_URL = MSMARCO_BASE + "queries.tar.gz"
MSMARCO_QRELS_TRAIN_URL = MSMARCO_BASE + "qrels.train.tsv"

BEIR_FIQA_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/fiqa.zip"
BEIR_FIQA_MD5 = "17918ed23cd04fb15047f73e6c3bd9d9"
BEIR_QRELS_HEADER = ("query-id", "corpus-id", "score")


# ---- Hofstaetter teacher scores (Zenodo record 4068216) ------------------------------------
HOFSTAETTER_RECORD = "4068216"


@dataclass(frozen=True)
class TeacherFile:
    """One Hofstaetter teacher-score file: a partition of hofstaetter/teacher_scores."""

    variant: str
    file: str
    md5: str
    teacher: str

    @property
    def record(self) -> str:
        return HOFSTAETTER_RECORD

    @property
    def url(self) -> str:
        return f"https://zenodo.org/record/{HOFSTAETTER_RECORD}/files/{self.file}?download=1"


HOFSTAETTER_FILES: dict[str, TeacherFile] = {
    f.variant: f
    for f in (
        TeacherFile(
            "bert",
            "bertbase_cat_msmarcopassage_train_scores_ids.tsv",
            "a2575af08a19b47c2041e67c9efcd917",
            "BERT-Base CAT",
        ),
        TeacherFile(
            "ensemble",
            "bert_cat_ensemble_msmarcopassage_train_scores_ids.tsv",
            "4d99696386f96a7f1631076bcc53ac3c",
            "mean of BERT-Base, BERT-Large and ALBERT-Large CAT",
        ),
    )
}


# ---- Rank-DistiLLM runs (Zenodo record 12528410) -------------------------------------------
RANK_DISTILLM_RECORD = "12528410"


@dataclass(frozen=True)
class RunVariant:
    """One Rank-DistiLLM run file: a partition of rank_distillm/runs."""

    variant: str
    stem: str
    top_k: int
    md5: str

    @property
    def record(self) -> str:
        return RANK_DISTILLM_RECORD

    @property
    def file(self) -> str:
        return f"{self.stem}msmarco-passage-train-judged.run"

    @property
    def url(self) -> str:
        return f"https://zenodo.org/records/{RANK_DISTILLM_RECORD}/files/{self.file}?download=1"

    @property
    def annotated(self) -> bool:
        """Annotated runs are joined with the MS MARCO train qrels (`is_positive`)."""
        return self.variant.endswith(".annotated")


RUN_VARIANTS: dict[str, RunVariant] = {
    v.variant: v
    for v in (
        RunVariant("msmarco.bm25.annotated", "__bm25__", 500, "835372b2ab4d20acf10addeae526c559"),
        RunVariant(
            "msmarco.colbertv2.annotated", "__colbert__", 500, "6ed152027f7270f32fcbfaaa6def951e"
        ),
        RunVariant(
            "rankzephyr.bm25_10000.sampled100",
            "__rankzephyr-bm25-10000-sampled-100__",
            100,
            "05e3137ea3526671e1565cc90f9a2c8a",
        ),
        RunVariant(
            "rankzephyr.colbert10000.sampled100",
            "__rankzephyr-colbert-10000-sampled-100__",
            100,
            "49f8dbf2c1ee7a2ca1fe517eda528af6",
        ),
        RunVariant(
            "rankzephyr.colbert10000.sampled50",
            "__rankzephyr-colbert-10000-sampled-50__",
            50,
            "c37b78874d4893a00566ab40aa453c56",
        ),
        RunVariant(
            "rankzephyr.colbert10000.sampled10",
            "__rankzephyr-colbert-10000-sampled-10__",
            10,
            "619bc815bd133bdca44d6331b241d39a",
        ),
    )
}

# ---- FiQA mined reranker scores (Hugging Face dataset) -------------------------------------
FIQA_MINED_REPO_ID = "stefan-jo/fiqa-train-mined-reranker-scores"
FIQA_MINED_LICENCE = "non-commercial (see dataset card)"
FIQA_LABELS = ("positive", "hard_negative", "medium_negative", "random_negative")


# ---- Zenodo record metadata (what the upstream sensor compares) ----------------------------
def zenodo_record_url(record: str) -> str:
    """The record's metadata at Zenodo's REST API; a mirror holds it under this URL's path."""
    return f"{DEFAULT_ZENODO_API}/records/{record}"


def zenodo_checksums(fetcher: Fetcher, record: str) -> dict[str, str]:
    """file name -> checksum (`md5:<hex>`, as Zenodo states it) of one record: one request to
    the API (`KD_PIPELINE_ZENODO_API`), or the mirror's copy of the record's JSON."""
    url = zenodo_record_url(record)
    if fetcher.mirror is not None:
        body = fetcher.url_file(url).read_bytes()
    else:
        url = f"{zenodo_api()}/records/{record}"
        body = read_url(url, timeout=hub_timeout())
    try:
        return record_checksums(json.loads(body))
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise FetchError(f"{url}: not a Zenodo record ({type(exc).__name__}: {exc})") from None


def record_checksums(record: Mapping[str, Any]) -> dict[str, str]:
    """The files of a record's JSON: Zenodo's `files: [{key, checksum, ...}]`, or the
    InvenioRDM `files: {entries: {name: {key, checksum}}}` (tolerated: the shape is Zenodo's
    to change)."""
    files = record["files"]
    entries = files["entries"].values() if isinstance(files, dict) else files
    return {
        str(entry.get("key") or entry["filename"]): str(entry["checksum"]).strip()
        for entry in entries
    }


# ---- fetching with the right checksum ------------------------------------------------------
def url_key(url: str) -> str:
    """A URL without its query string: `?download=1` does not change which file it is."""
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))


PINNED = "pinned in kd_pipeline/families/upstream.py"
RUN_TAG = f"run tag {UPSTREAM_REVISION_TAG}"
STAND_IN = f"stand-in mirror ({STAND_IN_CHECKSUMS})"
NONE_PUBLISHED = "none published upstream"


@dataclass(frozen=True)
class ExpectedMd5:
    """The md5 a fetched file must have (None: none is known) and where it comes from."""

    md5: str | None
    source: str


@dataclass(frozen=True)
class FetchedFile:
    """A local copy of an upstream file and how it was verified, for lineage."""

    url: str
    path: Path
    md5: str | None
    checksum_source: str
    pinned_md5: str | None = None

    def metadata(self) -> dict[str, object]:
        drifted = self.pinned_md5 is not None and self.pinned_md5 != self.md5
        return {
            "url": self.url,
            "md5": self.md5 or "none",
            "checksum_source": self.checksum_source,
            **({"pinned_md5": self.pinned_md5} if drifted else {}),
            "bytes": self.path.stat().st_size,
        }


def declared_stand_in_md5s(mirror: Path) -> dict[str, str]:
    """The sums a stand-in mirror declares for its own files ({} for a real mirror)."""
    path = mirror / STAND_IN_CHECKSUMS
    if not path.is_file():
        return {}
    return dict(json.loads(path.read_text(encoding="utf-8"))["md5"])


def expected_md5(
    fetcher: Fetcher, url: str, pinned_md5: str | None, tagged_md5: str | None = None
) -> ExpectedMd5:
    """Which md5 the file behind url must have: the run tag's (the run was launched for
    those bytes), else a stand-in mirror's declaration (its bytes are not upstream's), else
    the one pinned here."""
    if tagged_md5:
        return ExpectedMd5(tagged_md5.strip().lower(), RUN_TAG)
    if fetcher.mirror is not None:
        declared = declared_stand_in_md5s(fetcher.local_mirror()).get(url_key(url))
        if declared is not None:
            return ExpectedMd5(declared.strip().lower(), STAND_IN)
    if pinned_md5:
        return ExpectedMd5(pinned_md5.strip().lower(), PINNED)
    return ExpectedMd5(None, NONE_PUBLISHED)


def fetch_upstream_file(
    fetcher: Fetcher, url: str, pinned_md5: str | None, tagged_md5: str | None = None
) -> FetchedFile:
    """The local file behind url, verified against `expected_md5` (a mismatch raises
    ChecksumMismatch naming the file, both md5s and where the expected one came from)."""
    expected = expected_md5(fetcher, url, pinned_md5, tagged_md5)
    try:
        path = fetcher.url_file(url, expected.md5)
    except ChecksumMismatch as exc:
        raise ChecksumMismatch(f"{exc} (expected md5 source: {expected.source})") from None
    pinned = pinned_md5.strip().lower() if pinned_md5 else None
    return FetchedFile(url, path, expected.md5, expected.source, pinned)


# ---- Zenodo files: the pinned md5, or the one a run is tagged with -------------------------
class ZenodoFile(Protocol):
    """A partition's file in a Zenodo record (a TeacherFile or a RunVariant)."""

    @property
    def record(self) -> str: ...
    @property
    def file(self) -> str: ...
    @property
    def url(self) -> str: ...
    @property
    def md5(self) -> str: ...


def tagged_zenodo_md5(zenodo_file: ZenodoFile, run_tags: Mapping[str, str]) -> str | None:
    """The md5 a run's `kd-pipeline/upstream_revision=md5:<hex>` tag expects for this file
    (None without the tag). A tag that is not an md5, or a run tagged for another record,
    fails the run: one launched for a revision must never quietly read another."""
    value = run_tags.get(UPSTREAM_REVISION_TAG)
    if value is None:
        return None
    record = run_tags.get(ZENODO_RECORD_TAG, zenodo_file.record).strip()
    if record != zenodo_file.record:
        raise FetchError(
            f"{zenodo_file.file}: the run is tagged {ZENODO_RECORD_TAG}={record}, but this file "
            f"is in Zenodo record {zenodo_file.record}"
        )
    algorithm, _, digest = value.strip().partition(":")
    if algorithm.lower() != "md5" or not MD5_HEX.fullmatch(digest.lower()):
        raise FetchError(
            f"{zenodo_file.file}: run tag {UPSTREAM_REVISION_TAG}={value!r} is not a Zenodo "
            "checksum (md5:<32 hex digits>)"
        )
    return digest.lower()


def fetch_zenodo_file(
    fetcher: Fetcher, zenodo_file: ZenodoFile, run_tags: Mapping[str, str]
) -> FetchedFile:
    """A Zenodo family's file, verified against the md5 its run is tagged with, else the
    pinned one: what both Zenodo families fetch through."""
    tagged = tagged_zenodo_md5(zenodo_file, run_tags)
    return fetch_upstream_file(fetcher, zenodo_file.url, zenodo_file.md5, tagged)


def declare_stand_in_checksums(
    mirror: Path, urls: Iterable[str], note: str = "stand-in data"
) -> Mapping[str, str]:
    """Write `stand-in-md5sums.json` for the files these URLs map to in the mirror."""
    sums = {url_key(u): file_md5(mirror_path_for_url(mirror, u)) for u in sorted(set(urls))}
    payload = {
        "note": f"{note}: these files are not the upstream ones; their md5s are declared here "
        "so the pipeline verifies them without pretending they match upstream",
        "md5": dict(sorted(sums.items())),
    }
    _write_json(mirror / STAND_IN_CHECKSUMS, payload)
    return sums


def declare_stand_in_records(mirror: Path, declared: Mapping[str, str]) -> list[Path]:
    """Write each Zenodo record's metadata where a mirror keeps it
    (`url/zenodo.org/api/records/<id>`), in Zenodo's shape, listing the md5s of the
    mirror's own files: the change sensor then reads a stand-in mirror (the sample) as it
    reads Zenodo. declared: url -> md5, as declare_stand_in_checksums returns."""
    by_record: dict[str, list[ZenodoFile]] = {}
    for zenodo_file in (*HOFSTAETTER_FILES.values(), *RUN_VARIANTS.values()):
        by_record.setdefault(zenodo_file.record, []).append(zenodo_file)
    written = []
    for record, files in sorted(by_record.items()):
        entries = []
        for zenodo_file in files:
            path = mirror_path_for_url(mirror, zenodo_file.url)
            checksum = f"md5:{declared[url_key(zenodo_file.url)]}"
            entries.append(
                {"key": zenodo_file.file, "checksum": checksum, "size": path.stat().st_size}
            )
        target = mirror_path_for_url(mirror, zenodo_record_url(record))
        target.parent.mkdir(parents=True, exist_ok=True)
        _write_json(target, {"id": int(record), "note": "stand-in record", "files": entries})
        written.append(target)
    return written


def _write_json(target: Path, payload: Mapping[str, Any]) -> None:
    """Under a temporary name, then renamed: a reader never sees half a file."""
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, target)


def all_upstream_urls() -> list[str]:
    """Every plain URL these families read (what a stand-in mirror must hold)."""
    return [
        MSMARCO_COLLECTION_URL,
        MSMARCO_QUERIES_URL,
        MSMARCO_QRELS_TRAIN_URL,
        BEIR_FIQA_URL,
        *(f.url for f in HOFSTAETTER_FILES.values()),
        *(v.url for v in RUN_VARIANTS.values()),
    ]
