"""The dataset card (`README.md`) that makes every export folder a Hugging Face dataset.

The YAML header names the folder's subsets and splits in a `configs:` block (so
`datasets.load_dataset(folder)` and `load_dataset(folder, "<config>")` read exactly the
export's files, in name order, and `push_to_hub` of the folder keeps them), the licence of
every source the rows come from, and the provenance: the source and text assets with the
versions that were read, the spec, its knobs, the split and the score transform. The card
is a pure function of those inputs, so two builds of the same inputs write the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CARD_NAME = "README.md"
VALIDATION_DIR = "validation"


@dataclass(frozen=True)
class Licence:
    """One source's terms: an id for the card's `license_name`, and a sentence."""

    name: str
    terms: str


# by the first part of an asset key (the family); texts are listed by their own key
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
        "stefan-jo/fiqa-train-mined-reranker-scores: non-commercial (see its card).",
    ),
    "lighton": Licence(
        "lighton-embeddings-pre-training",
        "lightonai/embeddings-pre-training: the terms of its dataset card apply (not "
        "verified here).",
    ),
    "text/msmarco_passage": Licence(
        "ms-marco", "MS MARCO passage texts: non-commercial research use only."
    ),
    "text/fiqa": Licence(
        "fiqa-2018", "BEIR FiQA-2018 texts: the FiQA 2018 challenge terms apply (not verified)."
    ),
}


def licences_for(keys: Sequence[str]) -> list[Licence]:
    """The licences of the assets an export reads (source first, then texts), once each."""
    found: list[Licence] = []
    for key in keys:
        match = next(
            (
                lic
                for prefix, lic in LICENCES.items()
                if key == prefix or key.startswith(prefix + "/")
            ),
            None,
        )
        if match is not None and match not in found:
            found.append(match)
    return found


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
    reads: Sequence[str],
    provenance: Mapping[str, Any],
    consumer: str,
) -> str:
    """The README.md text: YAML header, then what the export is and where it came from."""
    licences = licences_for(reads)
    header: dict[str, Any] = {
        "license": "other",
        "license_name": "+".join(lic.name for lic in licences) or "unknown",
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
        "## Licence (every source's terms apply)",
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
    (folder / CARD_NAME).write_text(text, encoding="utf-8")
