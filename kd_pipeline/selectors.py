"""The dataset selector syntax of the seed tool: `id[key=value,...]`.

    ai.lighton.embeddings_pre_training[name=fw-edu,filter_drop=false,top_percentile=0.35]

Grammar: an id (letters, digits, `._-`), then optionally `[` pairs `key=value` separated by
commas `]`. Values are typed by the axis they set: `null`/`none`; booleans `true/yes/1`,
`false/no/0`; numbers; or a word from the axis's domain. Unknown ids, unknown keys, repeated
keys and values outside an axis's domain are errors that list what is allowed.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_VALUE = re.compile(r"[^,\[\]=\s]+")
NULLS = {"null", "none"}
TRUES = {"true", "yes", "1"}
FALSES = {"false", "no", "0"}


class SelectorError(ValueError):
    """A selector that cannot be used; the message says where and what is allowed."""


def did_you_mean(word: str, options: Sequence[str]) -> str:
    """` (did you mean 'x'?)` for the option closest to a mistyped word (case ignored),
    or '' when none is close."""
    by_folded = {o.lower(): o for o in options}
    close = difflib.get_close_matches(word.lower(), list(by_folded), n=1, cutoff=0.75)
    return f" (did you mean {by_folded[close[0]]!r}?)" if close else ""


_KIND_WORDS = {"float": "a number", "int": "an integer"}


@dataclass(frozen=True)
class Axis:
    """One knob of a dataset id: its type, default and domain.

    A choice axis takes one of `choices` (called `noun` where they are too many to list) or
    one of `aliases` (alias -> choice: accepted as input, listed apart, never counted)."""

    name: str
    kind: str  # "bool" | "float" | "int" | "choice"
    default: Any = None
    nullable: bool = True
    choices: tuple[str, ...] = ()
    check: Callable[[Any], str | None] | None = None  # returns an error text, or None
    help: str = ""
    aliases: Mapping[str, str] = field(default_factory=dict)
    noun: str = "names"

    def _choice_domain(self) -> str:
        """`a|b|c`, or `<one of 73 configs>`, then the aliases with what each stands for."""
        if len(self.choices) <= 8:
            listed = "|".join(self.choices)
        else:
            listed = f"<one of the {len(self.choices)} {self.noun} `kd-pipeline ids --names` lists>"
        if not self.aliases:
            return listed
        aliases = ", ".join(f"{alias} = {target}" for alias, target in self.aliases.items())
        return f"{listed} or an alias <{aliases}>"

    def describe(self) -> str:
        domain = {
            "bool": "true|false",
            "float": "number",
            "int": "integer",
            "choice": self._choice_domain() if self.kind == "choice" else "",
        }[self.kind]
        null = "|null" if self.nullable else ""
        default = (
            "required" if self.default is REQUIRED else f"default {format_value(self.default)}"
        )
        return f"{self.name}={domain}{null} ({default}){': ' + self.help if self.help else ''}"

    def parse(self, raw: str) -> Any:
        text = raw.strip()
        lowered = text.lower()
        if lowered in NULLS:
            if not self.nullable:
                raise SelectorError(f"{self.name} cannot be null; expected {self.describe()}")
            return None
        value: Any
        if self.kind == "bool":
            if lowered not in TRUES | FALSES:
                raise SelectorError(f"{self.name}={text!r}: expected true/yes/1 or false/no/0")
            value = lowered in TRUES
        elif self.kind in ("float", "int"):
            try:
                value = int(text) if self.kind == "int" else float(text)
            except ValueError:
                raise SelectorError(
                    f"{self.name}={text!r}: expected {_KIND_WORDS[self.kind]}"
                ) from None
            if self.kind == "float" and not math.isfinite(value):
                raise SelectorError(f"{self.name}={text!r}: expected a finite number")
        else:
            if text not in self.choices and text not in self.aliases:
                listed = (
                    f"one of {', '.join(self.choices)}"
                    if len(self.choices) <= 8
                    else f"one of the {self.noun} `kd-pipeline ids --names` lists"
                )
                hint = did_you_mean(text, [*self.choices, *self.aliases])
                raise SelectorError(
                    f"{self.name}={text!r}: not a known value{hint}; expected {listed}"
                )
            value = text
        problem = self.check(value) if self.check else None
        if problem:
            raise SelectorError(f"{self.name}={text!r}: {problem}")
        return value


class _Required:
    def __repr__(self) -> str:
        return "required"


REQUIRED: Any = _Required()


def format_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_selector(text: str) -> tuple[str, list[tuple[str, str]]]:
    """Split a selector into its id and its (key, raw value) pairs, checking the grammar."""
    text = text.strip()
    match = _ID.match(text)
    if not match:
        raise SelectorError(
            f"{text!r}: a selector starts with a dataset id such as "
            "ai.lighton.embeddings_pre_training"
        )
    dataset_id, rest = match.group(0), text[match.end() :]
    if not rest:
        return dataset_id, []
    if not (rest.startswith("[") and rest.endswith("]")):
        raise SelectorError(f"{text!r}: after the id, expected [key=value,...] and nothing else")
    body = rest[1:-1].strip()
    pairs: list[tuple[str, str]] = []
    if not body:
        return dataset_id, pairs
    for position, item in enumerate(body.split(","), 1):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _KEY.fullmatch(key) or not _VALUE.fullmatch(value):
            raise SelectorError(
                f"{text!r}: item {position} ({item.strip()!r}) is not of the form key=value"
            )
        pairs.append((key, value))
    return dataset_id, pairs


def resolve_axes(
    dataset_id: str, pairs: Sequence[tuple[str, str]], axes: Sequence[Axis]
) -> dict[str, Any]:
    """Typed values for every axis: the given ones parsed, the others defaulted."""
    by_name: Mapping[str, Axis] = {a.name: a for a in axes}
    values: dict[str, Any] = {}
    for key, raw in pairs:
        if key not in by_name:
            allowed = "; ".join(a.describe() for a in axes) or "no keys"
            raise SelectorError(
                f"{dataset_id}: unknown key {key!r}{did_you_mean(key, list(by_name))}; "
                f"allowed: {allowed}"
            )
        if key in values:
            raise SelectorError(f"{dataset_id}: key {key!r} given twice")
        values[key] = by_name[key].parse(raw)
    for axis in axes:
        if axis.name not in values:
            if axis.default is REQUIRED:
                raise SelectorError(f"{dataset_id}: {axis.describe()} must be given")
            values[axis.name] = axis.default
    return values
