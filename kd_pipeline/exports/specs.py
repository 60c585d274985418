"""Export specs: a few lines of YAML per published export (`exports.yaml`).

A spec is the identity of an export asset, `exports/<format>/<format>_<name>`: which
format, which source asset (and which text collections give it texts), and the knobs. The
file's `splits:` block decides each source's train/validation split once, for every export
of that source. Everything is checked when the code location loads, so a typo fails there,
naming the spec, not hours into a run.

The key's last part says format and source because it is all the Dagster UI's lineage
graph shows of a node (`AssetNameRow`: the last path component, middle-truncated past
`LABEL_MAX` characters), so it must read on its own and fit.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from kd_pipeline.exports import (
    lightning_ir,
    margin_mse,
    pointwise,
    pylate,
    splade,
    splade_triplets,
    tevatron,
)
from kd_pipeline.exports.candidates import SELECTION_KNOBS, Selection, SourceSplit
from kd_pipeline.exports.format import ExportFormat, SpecError, knob_values, parse_knobs
from kd_pipeline.exports.scores import SCORE_KNOBS, ScoreTransform
from kd_pipeline.exports.sources import (
    DOCUMENT_TEXT_TABLES,
    QUERY_TEXT_TABLES,
    ExportSource,
    TextSources,
    known_sources,
)
from kd_pipeline.lake import LakeError, safe_name
from kd_pipeline.recipes.specs import _UniqueKeyLoader

SPEC_FILE = Path(__file__).with_name("exports.yaml")
FORMATS: dict[str, ExportFormat] = {
    f.name: f
    for f in (
        splade.FORMAT,
        splade_triplets.FORMAT,
        margin_mse.FORMAT,
        pointwise.FORMAT,
        pylate.FORMAT,
        lightning_ir.FORMAT,
        tevatron.FORMAT,
    )
}
_FIELDS = {"name", "format", "source", "texts", "description", "knobs", "partitions"}
_TOP = {"splits", "exports"}
LABEL_MAX = 31  # the UI's ASSET_NODE_NAME_MAX_LENGTH (dagster-webserver 1.13)


@dataclass(frozen=True)
class ExportSpec:
    """One export asset."""

    name: str
    format: ExportFormat
    source: ExportSource
    texts: TextSources | None
    description: str
    selection: Selection
    knobs: Any
    # (partition pattern, selection, format knobs, transform), first match wins
    overrides: tuple[tuple[str, Selection, Any, ScoreTransform], ...] = field(default=())
    raw_knobs: dict[str, Any] = field(default_factory=dict)
    transform: ScoreTransform = field(default_factory=ScoreTransform)
    split: SourceSplit = field(default_factory=SourceSplit)  # the source's, from `splits:`

    @property
    def label(self) -> str:
        """The key's last part, `<format>_<name>`: what the lineage graph shows."""
        return export_label(self.format.name, self.name)

    @property
    def key(self) -> dg.AssetKey:
        return dg.AssetKey(["exports", self.format.name, self.label])

    def for_partition(self, partition: str | None) -> tuple[Selection, Any, ScoreTransform]:
        """The knobs a partition runs with (a `partitions:` override, else the spec's)."""
        for pattern, selection, knobs, transform in self.overrides:
            if partition is not None and fnmatch.fnmatchcase(partition, pattern):
                return selection, knobs, transform
        return self.selection, self.knobs, self.transform

    def knob_values(self) -> dict[str, Any]:
        values = {
            **knob_values(self.selection),
            **knob_values(self.transform),
            **knob_values(self.knobs),
        }
        if self.overrides:
            values["partitions"] = {
                pattern: {**knob_values(s), **knob_values(t), **knob_values(k)}
                for pattern, s, k, t in self.overrides
            }
        return values


def export_label(format_name: str, name: str) -> str:
    return f"{format_name}_{name}"


def _split_knobs(
    fmt: ExportFormat, values: dict[str, Any], where: str, base: dict[str, Any] | None = None
) -> tuple[Selection, Any, ScoreTransform]:
    """A knob mapping as (shared selection knobs, the format's knobs, the score transform)."""
    if not isinstance(values, dict):
        raise SpecError(f"{where}: knobs must be a mapping")
    if "validation_fraction" in values:
        raise SpecError(
            f"{where}: validation_fraction is decided once per source, for all its exports: "
            "set it in the file's `splits:` block ({source: {validation_fraction, seed}})"
        )
    merged = {**(base or {}), **values}
    selection = {k: v for k, v in merged.items() if k in SELECTION_KNOBS}
    scores = {k: v for k, v in merged.items() if k in SCORE_KNOBS}
    own = {k: v for k, v in merged.items() if k not in SELECTION_KNOBS | SCORE_KNOBS}
    try:
        chosen = Selection(**selection)
        transform = ScoreTransform(**scores)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"{where}: {exc}") from None
    try:
        knobs = parse_knobs(fmt.knobs, own, where)
    except SpecError as exc:
        allowed = sorted(SELECTION_KNOBS | SCORE_KNOBS | set(fmt.knobs.__dataclass_fields__))
        raise SpecError(f"{exc} (knobs of {fmt.name}: {allowed})") from None
    return chosen, knobs, transform


def _texts(body: dict[str, Any], source: ExportSource, where: str) -> TextSources | None:
    texts = body.get("texts")
    if source.shape == "pointwise":
        if texts:
            raise SpecError(f"{where}: {source.name} carries its texts; drop `texts`")
        return None
    if not isinstance(texts, dict) or set(texts) != {"queries", "documents"}:
        raise SpecError(
            f"{where}: `texts` must name the `queries` and `documents` collections of "
            f"{source.name} (one of {sorted(QUERY_TEXT_TABLES)} and one of "
            f"{sorted(DOCUMENT_TEXT_TABLES)})"
        )
    if texts["queries"] not in QUERY_TEXT_TABLES:
        raise SpecError(f"{where}: unknown queries table {texts['queries']!r}")
    if texts["documents"] not in DOCUMENT_TEXT_TABLES:
        raise SpecError(f"{where}: unknown documents table {texts['documents']!r}")
    return TextSources(
        dg.AssetKey.from_user_string(texts["queries"]),
        dg.AssetKey.from_user_string(texts["documents"]),
    )


def parse_spec(
    body: object,
    where: str,
    sources: dict[str, ExportSource],
    splits: dict[str, SourceSplit] | None = None,
) -> ExportSpec:
    """One spec entry, validated; splits: the file's split per source name."""
    if not isinstance(body, dict):
        raise SpecError(f"{where}: expected a mapping")
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise SpecError(f"{where}: unknown field(s) {unknown}; allowed: {sorted(_FIELDS)}")
    name = str(body.get("name", ""))
    try:
        safe_name(name, "export name")
    except LakeError as exc:
        raise SpecError(f"{where}: {exc}") from None
    where = f"{where} ({name})"
    fmt = FORMATS.get(str(body.get("format")))
    if fmt is None:
        raise SpecError(f"{where}: format {body.get('format')!r}; known: {sorted(FORMATS)}")
    label = export_label(fmt.name, name)
    if len(label) > LABEL_MAX:
        raise SpecError(
            f"{where}: the label {label!r} is {len(label)} characters; the lineage graph "
            f"shows {LABEL_MAX}: choose a shorter name"
        )
    source = sources.get(str(body.get("source")))
    if source is None:
        raise SpecError(f"{where}: source {body.get('source')!r}; known: {sorted(sources)}")
    if source.shape not in fmt.shapes:
        raise SpecError(
            f"{where}: {fmt.name} needs a {' or '.join(sorted(fmt.shapes))} source; "
            f"{source.name} is {source.shape}"
        )
    texts = _texts(body, source, where)
    raw = body.get("knobs") or {}
    selection, knobs, transform = _split_knobs(fmt, raw, where)
    overrides = []
    partitions = body.get("partitions") or {}
    if partitions and source.partitions_def is None:
        raise SpecError(f"{where}: `partitions` given but {source.name} is not partitioned")
    keys = source.partitions_def.get_partition_keys() if source.partitions_def else []
    for pattern, values in dict(partitions).items():
        if not any(fnmatch.fnmatchcase(k, str(pattern)) for k in keys):
            raise SpecError(f"{where}: partition pattern {pattern!r} matches none of {keys}")
        chosen, own, scaled = _split_knobs(
            fmt, values or {}, f"{where} partitions {pattern!r}", raw
        )
        overrides.append((str(pattern), chosen, own, scaled))
    description = str(body.get("description") or "").strip() or (f"{fmt.title} of {source.name}.")
    return ExportSpec(
        name,
        fmt,
        source,
        texts,
        description,
        selection,
        knobs,
        tuple(overrides),
        dict(raw),
        transform,
        (splits or {}).get(source.name, SourceSplit()),
    )


def parse_splits(
    body: object, where: str, sources: dict[str, ExportSource]
) -> dict[str, SourceSplit]:
    """The `splits:` block: source name -> {validation_fraction, seed}."""
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise SpecError(f"{where}: `splits` must map a source to {{validation_fraction, seed}}")
    splits = {}
    for name, values in body.items():
        if name not in sources:
            raise SpecError(f"{where}: splits: source {name!r}; known: {sorted(sources)}")
        if not isinstance(values, dict):
            raise SpecError(f"{where}: splits: {name}: expected {{validation_fraction, seed}}")
        try:
            splits[name] = SourceSplit(**values)
        except (TypeError, ValueError) as exc:
            raise SpecError(f"{where}: splits: {name}: {exc}") from None
    return splits


def load_export_specs(path: Path = SPEC_FILE) -> list[ExportSpec]:
    """Read and validate a spec file (`splits:` per source, `exports:` a list of entries);
    errors name the file and entry."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict) or not set(data) <= _TOP:
        raise SpecError(f"{path}: expected a mapping with {sorted(_TOP)}")
    entries = data.get("exports") or []
    if not isinstance(entries, list):
        raise SpecError(f"{path}: `exports` must be a list of exports")
    sources = known_sources()
    splits = parse_splits(data.get("splits"), str(path), sources)
    specs = [
        parse_spec(body, f"{path}: export #{i + 1}", sources, splits)
        for i, body in enumerate(entries)
    ]
    seen: dict[str, str] = {}
    for spec in specs:
        # the label (the key's last part) is unique: the UI shows it alone, and so does the
        # lake's catalog view of the export (kd_pipeline.lake.catalog_view_names)
        key = spec.key.to_user_string()
        if spec.label in seen:
            other = seen[spec.label]
            twice = "defined twice" if other == key else f"clashes with {other}"
            raise SpecError(f"{path}: {key} {twice} (both read {spec.label})")
        seen[spec.label] = key
    return specs
