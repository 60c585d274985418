"""Declarative recipe specs: a few lines of YAML per published variant.

A spec is the identity of a variant (Dagster run config is not): adding an entry to a
spec file adds an asset with its own key, lineage and published location.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from kd_pipeline.lake import LakeError, safe_name
from kd_pipeline.recipes.filters import FilterKnobs, SpecError
from kd_pipeline.recipes.unions import UnionSpec, parse_group

FILTER_SPEC_FILE = Path(__file__).with_name("lighton_filters.yaml")
UNION_SPEC_FILE = Path(__file__).with_name("lighton_unions.yaml")
RESERVED_NAMES = {"raw", "custom", "custom_union"}


@dataclass(frozen=True)
class FilterSpec:
    """One filter variant of the LightOn raw table."""

    name: str
    description: str
    knobs: FilterKnobs


def _spec_entries(path: Path) -> list[tuple[str, dict]]:
    """(name, body) of every entry of a spec file, names checked, bodies mappings."""
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as exc:
        raise SpecError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{path}: expected a mapping of recipe name to its definition")
    entries = []
    for name, body in data.items():
        where = f"{path}: recipe {name!r}"
        try:
            safe_name(str(name), "recipe name")
        except LakeError as exc:
            raise SpecError(f"{where}: {exc}") from None
        if name in RESERVED_NAMES:
            raise SpecError(f"{where}: the name is reserved ({sorted(RESERVED_NAMES)})")
        body = body or {}
        if not isinstance(body, dict):
            raise SpecError(f"{where}: expected a mapping")
        entries.append((str(name), body))
    return entries


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses a key given twice (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"{key!r} is defined twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


def load_filter_specs(path: Path = FILTER_SPEC_FILE) -> list[FilterSpec]:
    """Read and validate a filter spec file; errors name the file and the spec."""
    specs = []
    allowed = set(FilterKnobs.__dataclass_fields__) | {"description"}
    for name, body in _spec_entries(path):
        where = f"{path}: recipe {name!r}"
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise SpecError(f"{where}: unknown knob(s) {unknown}; allowed: {sorted(allowed)}")
        knob_values = {k: v for k, v in body.items() if k != "description"}
        try:
            knobs = FilterKnobs(**knob_values)
        except SpecError as exc:
            raise SpecError(f"{where}: {exc}") from None
        specs.append(FilterSpec(str(name), str(body.get("description") or name), knobs))
    return specs


def load_union_specs(
    path: Path = UNION_SPEC_FILE, taken: set[str] = frozenset()
) -> list[UnionSpec]:
    """Read and validate a union spec file; errors name the file and the union."""
    specs = []
    allowed = {"description", "groups", "seed", "mixing", "dedup", "dedup_casefold"}
    for name, body in _spec_entries(path):
        where = f"{path}: union {name!r}"
        if name in taken:
            raise SpecError(f"{where}: a filter recipe already has this name")
        unknown = sorted(set(body) - allowed)
        if unknown:
            raise SpecError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(allowed)}")
        groups = body.get("groups")
        if not isinstance(groups, list) or not groups:
            raise SpecError(f"{where}: `groups` must be a non-empty list")
        try:
            parsed = tuple(
                parse_group(name, g if isinstance(g, dict) else {}, i) for i, g in enumerate(groups)
            )
            specs.append(
                UnionSpec(
                    name,
                    str(body.get("description") or name).strip(),
                    parsed,
                    seed=body.get("seed"),
                    mixing=body.get("mixing", "uniform"),
                    dedup=bool(body.get("dedup", False)),
                    dedup_casefold=bool(body.get("dedup_casefold", False)),
                )
            )
        except SpecError as exc:
            raise SpecError(f"{path}: {exc}") from None
    return specs
