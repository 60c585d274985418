"""Deterministic sample mirror: small, synthetic stand-ins for the upstream datasets.

The pipeline never reaches the real hosts from the build machines, so this module writes a
directory laid out exactly like a local mirror of them (``<out>/hf/datasets/<repo id>/...``
for Hub datasets, ``<out>/url/<host>/<path>`` for plain URLs) and serves as the embedded
default data source. It deliberately reproduces the awkward parts
of the real data (sharded configs, varying Arrow widths, optional ``index`` column, duplicate
pointers equal to 0, tied scores, non-Latin scripts) so the loaders are exercised on them.

Everything is derived from stable hashes (never ``hash()`` or global random state), so the
same arguments give byte-identical files. Each family is one ``_write_<family>`` function.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import itertools
import json
import os
import random
import tarfile
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from kd_pipeline.families import upstream
from kd_pipeline.families.lighton_configs import LIGHTON_CONFIGS, LIGHTON_REPO_ID
from kd_pipeline.fetch import mirror_path_for_url

DEFAULT_ROWS_PER_CONFIG = 200

_SHARDED_CONFIGS: dict[str, int] = {"msmarco": 3}  # config -> number of parquet shards
_ROW_GROUP_SIZE = 128  # small, so a default-size sample already has several row groups
_LEXICON_SIZE = 400


def write_sample_mirror(out: Path, rows_per_config: int = DEFAULT_ROWS_PER_CONFIG) -> Path:
    """Write the sample mirror under out; return out. rows_per_config sizes the LightOn
    configs; the other families are small and fixed (hundreds of rows), with a
    `stand-in-md5sums.json` declaring the md5 of every plain-URL file (they are not the
    upstream files, so the upstream md5s cannot match them) and the Zenodo records'
    metadata listing those md5s (for the change sensor).

    Byte-identical output for the same arguments. Atomicity of the whole tree is the
    caller's job; each single file is written under a temporary name and renamed.
    """
    if rows_per_config < 0:
        raise ValueError(f"rows_per_config must be >= 0, got {rows_per_config}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_lighton(out, rows_per_config)
    _write_msmarco(out)
    _write_hofstaetter(out)
    _write_rank_distillm(out)
    _write_beir_fiqa(out)
    _write_fiqa(out)
    declared = upstream.declare_stand_in_checksums(
        out, upstream.all_upstream_urls(), "kd-pipeline synthetic sample"
    )
    upstream.declare_stand_in_records(out, declared)
    return out


def lighton_sample_dir(mirror: Path) -> Path:
    """Where the LightOn dataset lives inside a mirror (the Hub's repo layout starts here)."""
    return Path(mirror) / "hf" / "datasets" / LIGHTON_REPO_ID


# --------------------------------------------------------------------------- helpers


def _stable_seed(*parts: object) -> int:
    """A process-independent 64-bit seed (``hash()`` is salted per process)."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a hidden temp name then os.replace, so no half file ever has the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _atomic_write_parquet(path: Path, table: pa.Table) -> None:
    """Write a parquet file with fixed options (no timestamps; created_by is the only stamp)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        pq.write_table(
            table,
            tmp,
            row_group_size=_ROW_GROUP_SIZE,
            compression="snappy",
            use_dictionary=True,
            write_statistics=True,
            write_page_index=False,
            store_schema=True,
        )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- text


def _split(text: str) -> tuple[str, ...]:
    """Whitespace-separated tokens: keeps the syllable and word tables compact to read."""
    return tuple(text.split())


@dataclass(frozen=True)
class _Lang:
    """How to make words and sentences that look like one language/script."""

    iso: str  # code for the card's `language:` list
    syllables: Sequence[str] = ()
    syllables_per_word: tuple[int, int] = (1, 3)
    word_sep: str = " "
    full_stop: str = "."
    question_mark: str = "?"
    words: Sequence[str] = ()  # a fixed word list instead of syllables
    builder: Callable[[random.Random], str] | None = None  # custom word maker
    question_words: Sequence[str] = ()


_LATIN_BASE = _split(
    "ba be bi bo bu da de di do du ka ke ki ko ku la le li lo lu ma me mi mo mu na ne ni no "
    "nu pa pe pi po pu ra re ri ro ru sa se si so su ta te ti to tu va ve vi vo an en in on "
    "er ar or al el il"
)


def _latin(iso: str, flavour: str, question_words: str = "", per_word=(1, 3)) -> _Lang:
    """Latin-script language: shared syllables plus its own, weighted to show up often."""
    own = _split(flavour)
    return _Lang(
        iso=iso,
        syllables=tuple(_LATIN_BASE) + tuple(own) * 5,
        syllables_per_word=per_word,
        question_words=_split(question_words),
    )


_HIRAGANA = "のにはをたがでてとしれさあいうえおかきくけこすなもるよりまみ"
_KATAKANA = "カタナラトスクリプアイシンテムデルコ"
_KANJI = "日本語人時間学生会社国大年中出事見行分今手自者方地"


def _japanese_word(rng: random.Random) -> str:
    """Kanji stem + hiragana ending, or a katakana loanword: the mix real Japanese shows."""
    if rng.random() < 0.25:
        word = "".join(rng.choices(_KATAKANA, k=rng.randint(2, 4)))
        return word + ("ー" if rng.random() < 0.3 else "")
    stem = "".join(rng.choices(_KANJI, k=rng.randint(1, 2)))
    return stem + "".join(rng.choices(_HIRAGANA, k=rng.randint(0, 2)))


_ENGLISH_WORDS = _split(
    "the of and to in is for that on with as are by this be from it an or at which data "
    "model time people new first use used system can one two between water city world "
    "university history market price energy research study results method learning network "
    "language health school government company music film game season team player book "
    "country river population science computer software question answer best way make how "
    "work number area form also after during more most other some such than only over known "
    "year years state national public local early large small high long light power design "
    "process source free open simple function value return list code file error test user "
    "product review quality service customer order support easy great good price size"
)

_LANGS: dict[str, _Lang] = {
    "eng": _Lang(
        iso="en",
        words=_ENGLISH_WORDS,
        question_words=("how", "what", "why", "when", "where", "which", "who", "is", "can"),
    ),
    "fra": _latin("fr", "é è ç à ré tè çon eau oi ées ête où", "comment pourquoi quand où qui"),
    "ita": _latin("it", "zio gli che zza ssi cci gno", "come perché quando dove chi"),
    "spa": _latin("es", "ña ción á é ño llá qué rá ía", "cómo qué cuándo dónde quién"),
    "deu": _latin(
        "de", "schä bü größ mäh lü ung ein der tür öst weiß fuß straß", "wie was warum wo"
    ),
    "por": _latin("pt", "ção ões nã çã ão lhe nh ça", "como porque quando onde quem"),
    "swe": _latin("sv", "å ä ö skå kö bär sjö", "hur vad varför när var"),
    "nob": _latin("no", "æ ø å bær sjø kø gå", "hvordan hva hvorfor når hvor"),
    "dan": _latin("da", "æ ø å bær sø kø gå", "hvordan hvad hvorfor hvornår"),
    "ces": _latin("cs", "ě š č ř ž ště řa čí žo ně bě vý ří", "jak proč kdy kde"),
    "pol": _latin("pl", "ą ę ł ż łą się żo prz wie ść ła gę", "jak dlaczego kiedy gdzie"),
    "tur": _latin("tr", "ğ ı ş ğı şe lık dır ış ğa çı", "nasıl neden ne zaman nerede"),
    "vie": _latin(
        "vi",
        "đư ơn tră nâ hô ngư vê ợ đă ươ các của người một những được không đô bằng",
        "làm sao tại sao khi nào",
        per_word=(1, 1),
    ),
    "hun": _latin("hu", "ő ű győ tűz ész lő szű ből", "hogyan miért mikor hol"),
    "ind": _latin("id", "ng ny ka ah an kan per ber", "bagaimana mengapa kapan di mana"),
    "nld": _latin("nl", "ij oe aa sch ee uu ui", "hoe waarom wanneer waar"),
    "arb": _Lang(
        iso="ar",
        syllables=_split("كا تب مد رس سل ام عل ين ون قا لم حم ال بي نا هو في من"),
        full_stop=".",
        question_mark="؟",
    ),
    "fas": _Lang(
        iso="fa",
        syllables=_split("پا چه ژو گا یک کی ان ست می بر را ها ای دو ام"),
        question_mark="؟",
    ),
    "cmn": _Lang(
        iso="zh",
        syllables=tuple(
            "的是不了人我在有他这中大来上国个到说们为子和你地出道也时年得就那要下以生会自着去"
            "之过家学对可她里后小么心多天而能好都然没日于起还发成事只作当想看文无开手十用主行方"
        ),
        syllables_per_word=(1, 2),
        word_sep="",
        full_stop="。",
        question_mark="？",
    ),
    "jpn": _Lang(iso="ja", builder=_japanese_word, word_sep="", full_stop="。", question_mark="？"),
    "ell": _Lang(
        iso="el",
        syllables=_split("κα τα μα να πο το λο σι νη ρι ου ει αι στ ής ός ά έ ί ό ύ ώ"),
        question_mark=";",
    ),
    "rus": _Lang(
        iso="ru",
        syllables=_split(
            "ка на то по ра ли ни ст ов ен ро ко во де ть ся ый ая ие пр ё жи щё ы ю я"
        ),
    ),
}

_WIKIPEDIA_LANG = {"fr": "fra", "it": "ita", "es": "spa", "de": "deu", "ar": "arb"}
_WIKIPEDIA_LANG |= {"pt": "por", "sv": "swe", "no": "nob"}

_QUESTION_CONFIG_MARKERS = (
    "qa", "eli5", "quora", "question", "yahoo", "webfaq", "wikianswers", "msmarco", "paq",
)  # fmt: skip


def _config_langs(config: str) -> tuple[str, str]:
    """(query language, document language) for a config, as keys of _LANGS."""
    if config.startswith("fw2-"):
        return (config[4:7],) * 2
    for sep in ("_", "-"):
        prefix = f"wikipedia{sep}"
        if config.startswith(prefix) and config[len(prefix) :] in _WIKIPEDIA_LANG:
            return (_WIKIPEDIA_LANG[config[len(prefix) :]],) * 2
    if config in ("cc_news_fr", "webfaq_fra"):
        return ("fra", "fra")
    if config == "nllb_eng_fra":
        return ("eng", "fra")
    return ("eng", "eng")


class _Lexicon:
    """A fixed, Zipf-weighted vocabulary per language, built once from its syllables."""

    def __init__(self, code: str) -> None:
        lang = _LANGS[code]
        rng = random.Random(_stable_seed("lexicon", code))
        if lang.words:
            words = list(lang.words)
        else:
            words = []
            seen: set[str] = set()
            for _ in range(_LEXICON_SIZE * 4):
                if len(words) >= _LEXICON_SIZE:
                    break
                if lang.builder is not None:
                    word = lang.builder(rng)
                else:
                    lo, hi = lang.syllables_per_word
                    word = "".join(rng.choices(lang.syllables, k=rng.randint(lo, hi)))
                if word not in seen:
                    seen.add(word)
                    words.append(word)
        self.lang = lang
        self.words = words
        # Zipf-like frequencies (flattened at the top) by repetition: unweighted draws from
        # this pool are several times faster than weighted ones
        self.pool = [
            w for rank, w in enumerate(words) for _ in range(max(1, int(60 / (rank + 8) ** 0.8)))
        ]

    @staticmethod
    @functools.cache
    def of(code: str) -> _Lexicon:
        """Cached lexicon; building it is deterministic, so caching cannot change output."""
        return _Lexicon(code)

    def draw(self, rng: random.Random, k: int) -> list[str]:
        """k words drawn with Zipf-like frequencies."""
        return rng.choices(self.pool, k=k)


def _randint(rng: random.Random, lo: int, hi: int) -> int:
    """rng.randint without its overhead (it dominates the run time otherwise)."""
    return lo + int(rng.random() * (hi - lo + 1))


def _capitalize(word: str) -> str:
    """Upper-case the first character unless that changes the length (ß -> SS)."""
    first = word[:1].upper()
    return first + word[1:] if len(first) == 1 else word


def _make_query(rng: random.Random, code: str, question: bool) -> str:
    """3-12 words; question-style configs get a question word and mark."""
    lex = _Lexicon.of(code)
    lang = lex.lang
    n = _randint(rng, 3, 12)
    if question and lang.question_words:
        words = [rng.choice(lang.question_words), *lex.draw(rng, n - 1)]
    else:
        words = lex.draw(rng, n)
    text = lang.word_sep.join(words)
    if question:
        return _capitalize(text) + lang.question_mark
    return text


def _make_document(rng: random.Random, code: str) -> str:
    """20-120 words in sentences of 4-16 words."""
    lex = _Lexicon.of(code)
    lang = lex.lang
    words = lex.draw(rng, _randint(rng, 20, 120))
    sentences = []
    i = 0
    while i < len(words):
        step = _randint(rng, 4, 16)
        chunk = words[i : i + step]
        i += step
        sentences.append(_capitalize(lang.word_sep.join(chunk)) + lang.full_stop)
    return lang.word_sep.join(sentences)


# --------------------------------------------------------------------------- LightOn


@dataclass(frozen=True)
class _ConfigShape:
    """Per-config knobs: shares, score distribution, Arrow widths, columns."""

    drop_share: float
    duplicate_share: float
    sim_mean: float
    sim_sd: float
    narrow: bool  # float32 similarity + int32 duplicate
    has_index: bool
    query_lang: str
    doc_lang: str
    question: bool


def _config_shape(config: str, position: int) -> _ConfigShape:
    """Knobs depend on the config name only, so a bigger sample keeps the same shares."""
    rng = random.Random(_stable_seed("lighton-shape", config))
    query_lang, doc_lang = _config_langs(config)
    return _ConfigShape(
        drop_share=0.5 if config == "fw-edu" else round(rng.uniform(0.1, 0.7), 3),
        duplicate_share=round(rng.uniform(0.02, 0.15), 3),
        # means and sds chosen so 3.0 (the union recipe's cut) lies inside nearly every range
        sim_mean=rng.uniform(2.0, 4.0),
        sim_sd=rng.uniform(0.4, 1.2),
        narrow=position % 4 == 3,
        # an 8-cycle that crosses the 4-cycle above, so every width/index combination occurs
        has_index=position % 8 in (0, 2, 5, 7),
        query_lang=query_lang,
        doc_lang=doc_lang,
        question=any(marker in config for marker in _QUESTION_CONFIG_MARKERS),
    )


def _lighton_schema(shape: _ConfigShape) -> pa.Schema:
    """Arrow schema with Hugging Face-style `huggingface` feature metadata."""
    float_type = pa.float32() if shape.narrow else pa.float64()
    int_type = pa.int32() if shape.narrow else pa.int64()
    fields = [
        pa.field("query", pa.string()),
        pa.field("document", pa.string()),
        pa.field("similarity", float_type),
        pa.field("drop", pa.bool_()),
        pa.field("duplicate", int_type),
    ]
    if shape.has_index:
        fields.insert(0, pa.field("index", pa.int64()))
    features = {f.name: {"dtype": _hf_dtype(f.type), "_type": "Value"} for f in fields}
    meta = json.dumps({"info": {"features": features}}, separators=(",", ":"))
    return pa.schema(fields, metadata={b"huggingface": meta.encode("utf-8")})


def _hf_dtype(arrow_type: pa.DataType) -> str:
    """The dtype string Hugging Face cards use for an Arrow type (float64, not double)."""
    names = {pa.float64(): "float64", pa.float32(): "float32", pa.bool_(): "bool"}
    return names.get(arrow_type, str(arrow_type))


def _lighton_table(config: str, position: int, rows: int) -> pa.Table:
    """One config's rows: texts, rounded scores, drop flags, duplicate pointers."""
    shape = _config_shape(config, position)
    rng = random.Random(_stable_seed("lighton-rows", config, rows))
    queries: list[str] = []
    documents: list[str] = []
    sims: list[float] = []
    drops: list[bool] = []
    dups: list[int | None] = []
    seen: set[tuple[str, str]] = set()
    first_duplicate = True
    for i in range(rows):
        drops.append(rng.random() < shape.drop_share)
        if i > 0 and rng.random() < shape.duplicate_share:
            # point at the first occurrence; the first duplicate of each config points at
            # row 0 so the value 0 (not null!) always occurs
            j = 0 if first_duplicate else rng.randrange(i)
            first_duplicate = False
            target = dups[j] if dups[j] is not None else j
            queries.append(queries[target])
            documents.append(documents[target])
            sims.append(sims[target])  # same pair, same teacher score
            dups.append(target)
            continue
        while True:
            query = _make_query(rng, shape.query_lang, shape.question)
            document = _make_document(rng, shape.doc_lang)
            if (query, document) not in seen:  # originals are unique, so duplicates are exact
                seen.add((query, document))
                break
        score = min(5.0, max(0.0, rng.gauss(shape.sim_mean, shape.sim_sd)))
        queries.append(query)
        documents.append(document)
        sims.append(round(score, 2))
        dups.append(None)
    schema = _lighton_schema(shape)
    columns = {
        "index": list(range(rows)),
        "query": queries,
        "document": documents,
        "similarity": sims,
        "drop": drops,
        "duplicate": dups,
    }
    arrays = [pa.array(columns[f.name], type=f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _shard_bounds(rows: int, shards: int) -> list[tuple[int, int]]:
    """Split rows into contiguous, nearly equal [start, stop) ranges."""
    cuts = [rows * k // shards for k in range(shards + 1)]
    return list(itertools.pairwise(cuts))


def _lighton_card(infos: list[dict]) -> str:
    """README.md with HF-style YAML front matter (configs block with train-* globs)."""
    languages = sorted({_LANGS[lang].iso for c in LIGHTON_CONFIGS for lang in _config_langs(c)})
    header = {
        "license": "apache-2.0",
        "task_categories": ["sentence-similarity", "feature-extraction"],
        "language": languages,
        "multilinguality": "multilingual",
        "size_categories": ["1B<n<10B"],
        "pretty_name": "Embeddings pre-training (sample)",
        "tags": ["embeddings", "knowledge-distillation", "synthetic-sample"],
        "dataset_info": infos,
        "configs": [
            {
                "config_name": config,
                "data_files": [{"split": "train", "path": f"{config}/train-*"}],
            }
            for config in LIGHTON_CONFIGS
        ],
    }
    front = yaml.safe_dump(header, sort_keys=False, allow_unicode=True, width=1000)
    body = (
        "# Embeddings pre-training (synthetic sample)\n\n"
        "Query/document pairs with a teacher `similarity` score, a `drop` flag (rows outside "
        "the recommended subset) and a `duplicate` pointer (null, or the row index of an "
        "earlier identical pair), in 73 configs.\n\n"
        "This copy is a small deterministic synthetic sample written by `kd_pipeline.sample` "
        "in the layout of the Hugging Face repository "
        f"`{LIGHTON_REPO_ID}`; its texts are generated, not real.\n\n"
        "Recommended subset: `drop = false AND duplicate IS NULL`.\n"
    )
    return f"---\n{front}---\n\n{body}"


def _write_lighton(out: Path, rows_per_config: int) -> None:
    """All 73 configs as parquet, a dataset card and a .gitattributes, as in the Hub repo."""
    root = lighton_sample_dir(out)
    infos = []
    for position, config in enumerate(LIGHTON_CONFIGS):
        table = _lighton_table(config, position, rows_per_config)
        shards = _SHARDED_CONFIGS.get(config, 1)
        download_size = 0
        for k, (start, stop) in enumerate(_shard_bounds(rows_per_config, shards)):
            path = root / config / f"train-{k:05d}-of-{shards:05d}.parquet"
            _atomic_write_parquet(path, table.slice(start, stop - start))
            download_size += path.stat().st_size
        infos.append(
            {
                "config_name": config,
                "features": [{"name": f.name, "dtype": _hf_dtype(f.type)} for f in table.schema],
                "splits": [
                    {"name": "train", "num_bytes": table.nbytes, "num_examples": table.num_rows}
                ],
                "download_size": download_size,
                "dataset_size": table.nbytes,
            }
        )
    _atomic_write_bytes(root / "README.md", _lighton_card(infos).encode("utf-8"))
    _atomic_write_bytes(root / ".gitattributes", b"*.parquet filter=lfs diff=lfs merge=lfs -text\n")


# --------------------------------------------------------------------------- MS MARCO & co.
# Small, fixed-size stand-ins for the MS MARCO passage texts, the Hofstaetter teacher
# scores, the Rank-DistiLLM runs and BEIR FiQA with its mined scores, in the exact upstream
# layouts (tar.gz, zip, header-less TSVs, TREC runs with either separator). Ids join across
# files, except for a few deliberate ones that do not (well under the 1% the checks allow),
# and some passages carry the mojibake MS MARCO is known for.

_ARCHIVE_MTIME = 1_546_300_800  # 2019-01-01: fixed, so archives are byte-identical
_MISSING_PID = "8841823"  # one past the last real MS MARCO pid: never in the sample either
_MISSING_FIQA_DOC = "999999"


def _tar_gz(members: Sequence[tuple[str, bytes]]) -> bytes:
    """A .tar.gz with fixed metadata (mtime, owner, mode) and a gzip header without a time."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), _ARCHIVE_MTIME, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), compresslevel=6, mtime=0)


def _zip(members: Sequence[tuple[str, bytes | None]]) -> bytes:
    """A .zip with fixed timestamps; a None payload is a folder entry, as BEIR's zips have."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=(2019, 1, 1, 0, 0, 0))
            info.create_system = 3
            if data is None:
                info.external_attr = (0o40755 << 16) | 0x10
                zf.writestr(info, b"")
            else:
                info.external_attr = 0o100644 << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, data)
    return buf.getvalue()


def _url_path(out: Path, url: str) -> Path:
    """Where a plain URL lives in the mirror (`url/<host>/<path>`, query dropped)."""
    path = mirror_path_for_url(out, url)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _lines(rows: Sequence[Sequence[object]], sep: str = "\t") -> bytes:
    return "".join(sep.join(str(v) for v in row) + "\n" for row in rows).encode("utf-8")


def _distinct_ids(rng: random.Random, count: int, low: int, high: int) -> list[str]:
    return [str(i) for i in sorted(rng.sample(range(low, high), count))]


def _mojibake(text: str, codec: str = "cp1252") -> str:
    """text as it looks after its UTF-8 bytes were decoded with codec (the MS MARCO damage);
    the five bytes cp1252 leaves undefined pass through as latin-1, as Windows tools do."""
    return "".join(
        bytes([b]).decode(codec, errors="ignore") or chr(b) for b in text.encode("utf-8")
    )


@dataclass(frozen=True)
class _MsMarco:
    passages: dict[str, str]  # pid -> passage
    queries: dict[str, dict[str, str]]  # split -> qid -> query
    positives: dict[str, list[str]]  # train qid -> relevant pids


_MOJIBAKE_PHRASES = (
    _mojibake("The café’s crème brûlée costs €5 — “worth it”."),
    _mojibake("Ángel said: ¿qué pasa?", "latin-1"),  # latin-1 damage leaves C1 controls
    _mojibake(_mojibake("Double-damaged naïve résumé.")),
)
_GENUINE_PHRASES = ("A naïve café in Zürich.", "東京 is Tokyo.", 'He said "fine" \\ ok.')


@functools.cache
def _msmarco() -> _MsMarco:
    rng = random.Random(_stable_seed("msmarco-passage"))
    passages = {str(pid): _make_document(rng, "eng") for pid in range(240)}
    for pid, phrase in zip(("7", "42", "150"), _MOJIBAKE_PHRASES, strict=True):
        passages[pid] = f"{passages[pid]} {phrase}"
    for pid, phrase in zip(("3", "77", "11"), _GENUINE_PHRASES, strict=True):
        passages[pid] = f"{passages[pid]} {phrase}"
    qids = _distinct_ids(rng, 100, 1, 1_200_000)
    rng.shuffle(qids)
    splits = {"train": qids[:60], "dev": qids[60:80], "eval": qids[80:]}
    queries = {
        split: {qid: _make_query(rng, "eng", True) for qid in sorted(ids)}
        for split, ids in splits.items()
    }
    pids = sorted(passages, key=int)
    positives = {qid: rng.sample(pids, 2 if rng.random() < 0.1 else 1) for qid in queries["train"]}
    return _MsMarco(passages, queries, positives)


def _write_msmarco(out: Path) -> None:
    """collection.tar.gz, queries.tar.gz (train, dev, eval) and qrels.train.tsv."""
    data = _msmarco()
    collection = _lines(sorted(data.passages.items(), key=lambda kv: int(kv[0])))
    _atomic_write_bytes(
        _url_path(out, upstream.MSMARCO_COLLECTION_URL), _tar_gz([("collection.tsv", collection)])
    )
    members = [
        (f"queries.{split}.tsv", _lines(list(data.queries[split].items())))
        for split in ("train", "dev", "eval")
    ]
    _atomic_write_bytes(_url_path(out, upstream.MSMARCO_QUERIES_URL), _tar_gz(members))
    qrels = [(qid, 0, pid, 1) for qid, pids in data.positives.items() for pid in pids]
    _atomic_write_bytes(_url_path(out, upstream.MSMARCO_QRELS_TRAIN_URL), _lines(qrels))


def _write_hofstaetter(out: Path) -> None:
    """Both teacher files: `pos_score<TAB>neg_score<TAB>qid<TAB>pos_pid<TAB>neg_pid`, 300 rows,
    two of them with a negative passage that is not in the collection."""
    data = _msmarco()
    pids = sorted(data.passages, key=int)
    train = sorted(data.positives)
    for variant, teacher in upstream.HOFSTAETTER_FILES.items():
        rng = random.Random(_stable_seed("hofstaetter", variant))
        rows = []
        for i in range(300):
            qid = train[i % len(train)]
            pos = rng.choice(data.positives[qid])
            neg = rng.choice([p for p in pids if p not in data.positives[qid]])
            if i in (17, 211):
                neg = _MISSING_PID
            pos_score, neg_score = rng.gauss(7.0, 2.0), rng.gauss(-1.0, 3.0)
            rows.append((f"{pos_score:.7g}", f"{neg_score:.7g}", qid, pos, neg))
        _atomic_write_bytes(_url_path(out, teacher.url), _lines(rows))


def _write_rank_distillm(out: Path) -> None:
    """The six runs: BM25-based ones space-separated with `Q0`, ColBERT-based ones
    tab-separated with `0`. The annotated runs rank 30 passages for every train query and
    miss the relevant one for some; the RankZephyr ones re-rank sampled queries."""
    data = _msmarco()
    pids = sorted(data.passages, key=int)
    train = sorted(data.positives)
    for name, variant in upstream.RUN_VARIANTS.items():
        rng = random.Random(_stable_seed("rank-distillm", name))
        bm25 = "bm25" in variant.stem
        sep, q0 = (" ", "Q0") if bm25 else ("\t", "0")
        if variant.annotated:
            queries, depth, system = train, 30, "bm25" if bm25 else "colbert"
        else:
            queries, depth, system = rng.sample(train, 20), min(variant.top_k, 25), "rankzephyr"
        rows = []
        for number, qid in enumerate(sorted(queries)):
            ranked = rng.sample([p for p in pids if p not in data.positives[qid]], depth)
            if rng.random() < 0.85:  # the first-stage ranker found a relevant passage
                ranked[rng.randrange(depth)] = data.positives[qid][0]
            if variant.annotated and number == 5:
                ranked[-1] = _MISSING_PID
            score = rng.uniform(20.0, 40.0)
            for rank, pid in enumerate(ranked, 1):
                score = 1.0 / rank if system == "rankzephyr" else score - rng.uniform(0.1, 0.3)
                rows.append((qid, q0, pid, rank, f"{score:.5f}", system))
        _atomic_write_bytes(_url_path(out, variant.url), _lines(rows, sep))


@dataclass(frozen=True)
class _Fiqa:
    corpus: dict[str, str]  # doc id -> text
    queries: dict[str, dict[str, str]]  # split -> query id -> text
    qrels: dict[str, dict[str, list[str]]]  # split -> query id -> relevant doc ids


@functools.cache
def _fiqa() -> _Fiqa:
    rng = random.Random(_stable_seed("beir-fiqa"))
    doc_ids = _distinct_ids(rng, 150, 1, 600_000)
    corpus = {d: _make_document(rng, "eng") for d in doc_ids}
    qids = _distinct_ids(rng, 60, 1, 12_000)
    rng.shuffle(qids)
    splits = {"train": qids[:40], "dev": qids[40:50], "test": qids[50:]}
    queries = {
        split: {q: _make_query(rng, "eng", True) for q in sorted(ids)}
        for split, ids in splits.items()
    }
    qrels = {
        split: {q: rng.sample(doc_ids, 2 if rng.random() < 0.3 else 1) for q in sorted(ids)}
        for split, ids in splits.items()
    }
    return _Fiqa(corpus, queries, qrels)


def _write_beir_fiqa(out: Path) -> None:
    """fiqa.zip: `fiqa/corpus.jsonl`, `fiqa/queries.jsonl`, `fiqa/qrels/<split>.tsv` (with
    the BEIR header line), plus the folder entries a zip made by `zip -r` has."""
    data = _fiqa()
    corpus = "".join(
        json.dumps({"_id": d, "title": "", "text": t}) + "\n" for d, t in data.corpus.items()
    )
    queries = "".join(
        json.dumps({"_id": q, "text": t}) + "\n"
        for split in ("train", "dev", "test")
        for q, t in data.queries[split].items()
    )
    members: list[tuple[str, bytes | None]] = [
        ("fiqa/", None),
        ("fiqa/corpus.jsonl", corpus.encode("utf-8")),
        ("fiqa/queries.jsonl", queries.encode("utf-8")),
        ("fiqa/qrels/", None),
    ]
    for split in ("train", "dev", "test"):
        rows = [upstream.BEIR_QRELS_HEADER] + [
            (q, d, 1) for q, docs in data.qrels[split].items() for d in docs
        ]
        members.append((f"fiqa/qrels/{split}.tsv", _lines(rows)))
    _atomic_write_bytes(_url_path(out, upstream.BEIR_FIQA_URL), _zip(members))


def _write_fiqa(out: Path) -> None:
    """The mined reranker scores: one row per train query with 16 documents (1 positive,
    5 each of hard, medium and random negatives), sorted by score, and a card."""
    data = _fiqa()
    rng = random.Random(_stable_seed("fiqa-mined"))
    doc_ids = sorted(data.corpus, key=int)
    means = {"positive": 6.0, "hard_negative": 3.0, "medium_negative": 0.0}
    rows: dict[str, list] = {"query_id": [], "document_ids": [], "scores": [], "labels": []}
    for number, (qid, relevant) in enumerate(data.qrels["train"].items()):
        negatives = rng.sample([d for d in doc_ids if d not in relevant], 15)
        if number == 3:
            negatives[-1] = _MISSING_FIQA_DOC
        labelled = [(relevant[0], "positive")] + [
            (d, upstream.FIQA_LABELS[1 + k // 5]) for k, d in enumerate(negatives)
        ]
        scored = sorted(
            ((round(rng.gauss(means.get(label, -5.0), 2.0), 4), d, label) for d, label in labelled),
            reverse=True,
        )
        rows["query_id"].append(qid)
        rows["scores"].append([s for s, _, _ in scored])
        rows["document_ids"].append([d for _, d, _ in scored])
        rows["labels"].append([label for _, _, label in scored])
    schema = pa.schema(
        [
            ("query_id", pa.string()),
            ("document_ids", pa.list_(pa.string())),
            ("scores", pa.list_(pa.float64())),
            ("labels", pa.list_(pa.string())),
        ]
    )
    root = out / "hf" / "datasets" / upstream.FIQA_MINED_REPO_ID
    table = pa.Table.from_pydict(rows, schema=schema)
    _atomic_write_parquet(root / "data" / "train-00000-of-00001.parquet", table)
    header = {
        "license": "cc-by-nc-4.0",
        "pretty_name": "FiQA train mined reranker scores (sample)",
        "configs": [
            {"config_name": "default", "data_files": [{"split": "train", "path": "data/train-*"}]}
        ],
    }
    card = (
        f"---\n{yaml.safe_dump(header, sort_keys=False)}---\n\n"
        "# FiQA train: mined reranker scores (synthetic sample)\n\n"
        "Per FiQA-2018 train query, 16 documents with raw reranker scores (sorted "
        "descending) and labels. Written by `kd_pipeline.sample` in the layout of "
        f"`{upstream.FIQA_MINED_REPO_ID}`; the texts and scores are generated, and the "
        "licence tag above stands in for the real card's non-commercial terms.\n"
    )
    _atomic_write_bytes(root / "README.md", card.encode("utf-8"))
    _atomic_write_bytes(root / ".gitattributes", b"*.parquet filter=lfs diff=lfs merge=lfs -text\n")
