"""Synthetic texts that look like the languages and scripts of the LightOn configs:
a Zipf-weighted lexicon per language, queries and documents built from it.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kd_pipeline.sample.files import (
    stable_seed,
)

_LEXICON_SIZE = 400


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

LANGS: dict[str, _Lang] = {
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


def config_langs(config: str) -> tuple[str, str]:
    """(query language, document language) for a config, as keys of LANGS."""
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
        lang = LANGS[code]
        rng = random.Random(stable_seed("lexicon", code))
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


def make_query(rng: random.Random, code: str, question: bool) -> str:
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


def make_document(rng: random.Random, code: str) -> str:
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
