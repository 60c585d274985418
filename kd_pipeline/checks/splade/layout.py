"""Finding a SPLADE folder's files as light-splade would be pointed at them.

Layout (a path may be a file or a folder of `.ndjson` / `.ndjson.gz` files)::

    train/query_master.ndjson        {"qid": int, "text": str}
    train/doc_master.ndjson          {"doc_id": int, "text": str}
    train/positive_lists.ndjson      {"qid": int, "positive_doc_ids": [int, ...]}
    validation/...                   the same three (optional)
    hard-negatives-cross-encoder-scores.ndjson.gz   {"qid": int, "scores": {"<doc_id>": float}}
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SCORES_FILE = "hard-negatives-cross-encoder-scores"
MASTER_FILES = {"queries": "query_master", "documents": "doc_master", "positives": "positive_lists"}
SPLITS = ("train", "validation")
SUFFIXES = (".ndjson", ".ndjson.gz")


class LayoutError(ValueError):
    """A SPLADE folder is missing a file (or holds none of the right type)."""


def ndjson_files(path: Path) -> list[Path]:
    """The files the consumer reads for one entry: the path itself when it is an `.ndjson`
    or `.ndjson.gz` file, else the folder's `*.ndjson` and `*.ndjson.gz` (not recursive)."""
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(SUFFIXES))
    if path.is_file() and path.name.endswith(SUFFIXES):
        return [path]
    return []


def entry_files(base: Path, stem: str) -> list[Path]:
    """`<stem>.ndjson`, `<stem>.ndjson.gz` or a folder `<stem>` (or `<stem>.ndjson`) of them."""
    for candidate in (base / f"{stem}.ndjson", base / f"{stem}.ndjson.gz", base / stem):
        files = ndjson_files(candidate)
        if files:
            return files
    return []


@dataclass(frozen=True)
class SpladeLayout:
    """The files of each part of a SPLADE folder."""

    splits: dict[str, dict[str, tuple[Path, ...]]]  # split -> queries|documents|positives
    scores: tuple[Path, ...]
    root: Path = Path(".")


def resolve_layout(
    root: Path,
    *,
    scores: Path | None = None,
    splits: Sequence[str] | None = None,
) -> SpladeLayout:
    """Find a folder's files as light-splade would be pointed at them.

    The train split is required, validation is read when `validation/` exists (or when
    asked for in splits), the score file is looked for at the root (the layout shares it
    between the splits) unless given.
    """
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: not a folder")
    wanted = (
        list(splits)
        if splits
        else ["train", *(["validation"] if (root / "validation").is_dir() else [])]
    )
    found: dict[str, dict[str, tuple[Path, ...]]] = {}
    missing: list[str] = []
    for split in wanted:
        if split not in SPLITS:
            raise LayoutError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
        parts: dict[str, tuple[Path, ...]] = {}
        for kind, stem in MASTER_FILES.items():
            files = entry_files(root / split, stem)
            if not files:
                missing.append(f"{split}/{stem}.ndjson[.gz]")
            parts[kind] = tuple(files)
        found[split] = parts
    score_files = ndjson_files(scores) if scores is not None else entry_files(root, SCORES_FILE)
    if not score_files:
        missing.append(str(scores) if scores is not None else f"{SCORES_FILE}.ndjson[.gz]")
    if missing:
        raise LayoutError(f"{root}: missing {', '.join(missing)}")
    return SpladeLayout(found, tuple(score_files), root.resolve())
