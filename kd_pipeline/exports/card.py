"""The dataset card (`README.md`) that makes every export folder a Hugging Face dataset.

The YAML header names the folder's subsets and splits in a `configs:` block (so
`datasets.load_dataset(folder)` and `load_dataset(folder, "<config>")` read exactly the
export's files, in name order, and `push_to_hub` of the folder keeps them), the licence of
every source the rows come from (as its own dataset card recorded it when it has one), and
the provenance: the source and text assets with the versions that were read and the
upstream lineage recorded for them (revision or md5, card licence), the spec, its knobs,
the split and the score transform. The card
is a pure function of those inputs, so two builds of the same inputs write the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kd_pipeline.families.cards import card_front_matter

CARD_NAME = "README.md"
VALIDATION_DIR = "validation"


@dataclass(frozen=True)
class Licence:
    """One source's terms: a name (a Hub licence id when `hub_id` is set, else an id for
    `license_name`), a sentence, and where the terms are written (None: only here)."""

    name: str
    terms: str
    hub_id: str | None = None
    link: str | None = None


# Terms of the sources that record no dataset card licence, by the first part of an asset
# key (the family) or a text collection's key; a Hub source's card licence, recorded in its
# lineage (`card_license`, `card_license_name`, `card_license_link`), comes first.
LICENCES: dict[str, Licence] = {
    "hofstaetter": Licence(
        "ms-marco-derived",
        "Teacher scores over MS MARCO passage (Zenodo 4068216); MS MARCO is released for "
        "non-commercial research only; the scores' own licence is not verified here.",
    ),
    "rank_distillm": Licence(
        "ms-marco-derived",
        "Rank-DistiLLM runs over MS MARCO passage (Zenodo 12528410); MS MARCO is released "
        "for non-commercial research only; the runs' own licence is not verified here.",
    ),
    "fiqa": Licence(
        "fiqa-mined-non-commercial",
        "stefan-jo/fiqa-train-mined-reranker-scores: non-commercial (its card stated none).",
    ),
    "lighton": Licence(
        "lighton-embeddings-pre-training",
        "lightonai/embeddings-pre-training: the terms of its dataset card apply (its card "
        "stated none).",
    ),
    "text/msmarco_passage": Licence(
        "ms-marco", "MS MARCO passage texts: non-commercial research use only."
    ),
    "text/fiqa": Licence(
        "fiqa-2018", "BEIR FiQA-2018 texts: the FiQA 2018 challenge terms apply (not verified)."
    ),
}
# The card's header when its rows come under several sources' terms: `license: other`,
# this name, and a link to the card's own licence section listing each source's terms.
SEVERAL_LICENCES = "terms-of-every-source"
LICENCE_SECTION = "Licence"


def recorded_licence(lineage: Mapping[str, Any]) -> Licence | None:
    """The licence one upstream read recorded from its dataset card (kd_pipeline.families.
    cards.card_licence: `card_license`, plus `card_license_name` / `card_license_link` for
    `license: other`), or None when it recorded none. A single Hub id is kept as the id;
    `other` (or a list of ids) is named by its license_name."""
    declared = lineage.get("card_license")
    if declared in (None, ""):
        return None
    declared = str(declared)
    single = declared != "other" and "," not in declared
    name = declared if single else str(lineage.get("card_license_name") or declared)
    repo = lineage.get("repo_id", "the upstream dataset")
    link = lineage.get("card_license_link")
    terms = f"{repo} (revision {lineage.get('revision', '?')}): its dataset card's licence"
    terms += f" `{name}`" + (f", {link}" if link else "") + "."
    return Licence(name, terms, declared if single else None, str(link) if link else None)


def licences_for(reads: Mapping[str, Sequence[Mapping[str, Any]]]) -> list[Licence]:
    """The licences of the assets an export reads (source first, then texts), once each:
    reads maps each asset key to the upstream lineage recorded for it (one entry per
    upstream read); the card licence recorded there wins over the LICENCES table."""
    found: list[Licence] = []
    for key, lineages in reads.items():
        recorded = [lic for lin in lineages if (lic := recorded_licence(lin)) is not None]
        fallback = next(
            (
                lic
                for prefix, lic in LICENCES.items()
                if key == prefix or key.startswith(prefix + "/")
            ),
            None,
        )
        for lic in recorded or ([fallback] if fallback is not None else []):
            if lic not in found:
                found.append(lic)
    return found


def licence_header(licences: Sequence[Licence]) -> dict[str, str]:
    """The card's licence fields as the Hub reads them: one source under a Hub licence ->
    `license: <id>`; otherwise `license: other` with `license_name` and `license_link` (the
    source's own terms when there is one source, else SEVERAL_LICENCES and the card's
    licence section, which lists every source's terms). Never several ids in one field."""
    if len(licences) == 1 and licences[0].hub_id:
        return {"license": licences[0].hub_id}
    if len(licences) == 1:
        only = licences[0]
        return {
            "license": "other",
            "license_name": only.name,
            "license_link": only.link or f"{CARD_NAME}#{LICENCE_SECTION.lower()}",
        }
    return {
        "license": "other",
        "license_name": SEVERAL_LICENCES if licences else "unknown",
        "license_link": f"{CARD_NAME}#{LICENCE_SECTION.lower()}",
    }


def split_path(pattern: str, split: str, writes_splits: bool) -> str:
    """Where one split of a config lives: `{split}` in a pattern is the split's name; a
    format that lays out its splits itself (SPLADE's `train/`, `validation/`) says where,
    for the others train is at the top of the folder and validation under validation/."""
    path = pattern.format(split=split) if "{split}" in pattern else pattern
    if split == "train" or writes_splits:
        return path
    return f"{VALIDATION_DIR}/{path}"


def configs_block(
    configs: Mapping[str, str], splits: Sequence[str], writes_splits: bool, default: str
) -> list[dict[str, Any]]:
    """The card's `configs:` entries: one per subset, one data_files entry per split."""
    block = []
    for name, pattern in configs.items():
        per_split = splits if ("{split}" in pattern or not writes_splits) else ["train"]
        entry: dict[str, Any] = {
            "config_name": name,
            "data_files": [
                {"split": s, "path": split_path(pattern, s, writes_splits)} for s in per_split
            ],
        }
        if name == default:
            entry["default"] = True
        block.append(entry)
    return block


def render_card(
    *,
    export: str,
    title: str,
    description: str,
    configs: list[dict[str, Any]],
    licences: Sequence[Licence],
    provenance: Mapping[str, Any],
    consumer: str,
) -> str:
    """The README.md text: YAML header, then what the export is and where it came from."""
    header: dict[str, Any] = {
        **licence_header(licences),
        "pretty_name": export,
        "tags": ["knowledge-distillation", "information-retrieval", "kd-pipeline"],
        "configs": configs,
    }
    lines = [
        "---",
        yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip(),
        "---",
        f"# {export}",
        "",
        f"{title}. {description}",
        "",
        "## Loading",
        "",
        consumer,
        "",
        f"## {LICENCE_SECTION}",
        "",
        "Every source's terms apply:",
        "",
        *(f"- `{lic.name}`: {lic.terms}" for lic in licences),
        "",
        "## Provenance",
        "",
        "```yaml",
        yaml.safe_dump(dict(provenance), sort_keys=False, allow_unicode=True).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def write_card(folder: Path, text: str) -> None:
    """Write the card into the staged export folder, adding to its YAML header a
    `dataset_info:` entry per config with the bytes of that config's files.

    Why: `datasets` (5.x) keys its cache of a local folder by the folder's name (`bert`) and
    the card's metadata, not by the files. Without metadata that changes with the files, a
    republished export at the same path, or another export whose folder has the same name,
    is silently read from the cache. The size is a pure function of the files, so two builds
    of the same inputs still write the same card.
    """
    header_end = text.index("\n---", 3)
    infos = [
        {
            "config_name": entry["config_name"],
            "dataset_size": sum(
                path.stat().st_size
                for files in entry["data_files"]
                for path in folder.glob(files["path"])
            ),
        }
        for entry in card_front_matter(text).get("configs") or []
    ]
    block = yaml.safe_dump({"dataset_info": infos}, sort_keys=False).rstrip()
    text = f"{text[:header_end]}\n{block}{text[header_end:]}"
    (folder / CARD_NAME).write_text(text, encoding="utf-8")
