"""The LightOn `embeddings-pre-training` dataset: repository id and its 73 config names.

The names are the upstream's, character for character (they mix ``-`` and ``_``); they are
the partition keys of every LightOn asset.
"""

from kd_pipeline.selectors import did_you_mean

LIGHTON_REPO_ID = "lightonai/embeddings-pre-training"

LIGHTON_CONFIGS: tuple[str, ...] = (
    "agnews",
    "altlex",
    "amazon_qa",
    "amazon_reviews",
    "arxiv_title_abstract",
    "beir_dbpedia",
    "biorxiv_title_abstract",
    "cc_news_en",
    "cc_news_fr",
    "cnn_dailymail",
    "codesearchnet",
    "eli5",
    "gooaq_qa",
    "hermes",
    "medrxiv_title_abstract",
    "msmarco",
    "mtp",
    "nllb_eng_fra",
    "npr",
    "paq",
    "quora",
    "reddit",
    "reddit_body_comment",
    "s2orc_abstract_citation",
    "s2orc_citation_titles",
    "s2orc_title_abstract",
    "sentence_compression",
    "simplewiki",
    "stackexchange_body_body",
    "stackexchange_duplicate_questions",
    "stackexchange_qa",
    "stackexchange_title_body",
    "stackoverflow_title_body",
    "webfaq_eng",
    "webfaq_fra",
    "wikihow",
    "wikianswers",
    "wikipedia_en",
    "wikipedia_en_mgte",
    "wikipedia_hlp_dl",
    "wikipedia_hlp_cm",
    "wikipedia_fr",
    "wikipedia_it",
    "wikipedia_es",
    "wikipedia_de",
    "wikipedia_ar",
    "wikipedia-pt",
    "wikipedia-sv",
    "wikipedia-no",
    "yahoo_answer",
    "yahoo_qa",
    "yahoo_question_body",
    "fw-edu",
    "fw2-arb_Arab",
    "fw2-ces_Latn",
    "fw2-cmn_Hani",
    "fw2-dan_Latn",
    "fw2-deu_Latn",
    "fw2-ell_Grek",
    "fw2-fas_Arab",
    "fw2-fra_Latn",
    "fw2-hun_Latn",
    "fw2-ind_Latn",
    "fw2-ita_Latn",
    "fw2-jpn_Jpan",
    "fw2-nld_Latn",
    "fw2-pol_Latn",
    "fw2-por_Latn",
    "fw2-rus_Cyrl",
    "fw2-spa_Latn",
    "fw2-swe_Latn",
    "fw2-tur_Latn",
    "fw2-vie_Latn",
)

# Misspellings found in published recipe texts: accepted as input, never partition keys.
LIGHTON_CONFIG_ALIASES: dict[str, str] = {
    "fw_edu": "fw-edu",
    "hlp_wikipedia_cm": "wikipedia_hlp_cm",
    "hlp_wikipedia_dl": "wikipedia_hlp_dl",
}


def canonical_config_name(name: str) -> str:
    """Map an alias to its config name; raise ValueError naming the unknown config and the
    nearest known one."""
    name = LIGHTON_CONFIG_ALIASES.get(name, name)
    if name not in LIGHTON_CONFIGS:
        hint = did_you_mean(name, LIGHTON_CONFIGS)
        raise ValueError(
            f"unknown LightOn config {name!r}{hint}; `kd-pipeline ids --names` lists the "
            f"{len(LIGHTON_CONFIGS)} names"
        )
    return name
