"""Deterministic sample mirror: small, synthetic stand-ins for the upstream datasets.

The pipeline never reaches the real hosts from the build machines, so this module writes a
directory laid out exactly like a local mirror of them (``<out>/hf/datasets/<repo id>/...``)
and serves as the embedded default data source. It deliberately reproduces the awkward parts
of the real data (sharded configs, varying Arrow widths, optional ``index`` column, duplicate
pointers equal to 0, tied scores, non-Latin scripts) so the loaders are exercised on them.

Everything is derived from stable hashes (never ``hash()`` or global random state), so the
same arguments give byte-identical files. Each family is one ``_write_<family>`` function.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from kd_pipeline.families.lighton_configs import LIGHTON_CONFIGS, LIGHTON_REPO_ID

DEFAULT_ROWS_PER_CONFIG = 200

_SHARDED_CONFIGS: dict[str, int] = {"msmarco": 3}  # config -> number of parquet shards
_ROW_GROUP_SIZE = 128  # small, so a default-size sample already has several row groups
_LEXICON_SIZE = 400


def write_sample_mirror(out: Path, rows_per_config: int = DEFAULT_ROWS_PER_CONFIG) -> Path:
    """Write the LightOn part of the sample mirror under out; return out.

    Byte-identical output for the same arguments. Atomicity of the whole tree is the
    caller's job; each single file is written under a temporary name and renamed.
    """
    if rows_per_config < 0:
        raise ValueError(f"rows_per_config must be >= 0, got {rows_per_config}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _write_lighton(out, rows_per_config)
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
