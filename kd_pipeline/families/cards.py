"""What a Hugging Face dataset card (`README.md`) states about itself: its YAML front
matter and its licence fields. Shared by every family read from the Hub (LightOn, FiQA
mined scores), so each records the same lineage fields (`card_license`,
`card_license_name`, `card_license_link`), which the exports carry into their own cards.
"""

from __future__ import annotations

import yaml

# libyaml's parser when PyYAML was built with it (the PyPI wheels are): a LightOn card lists
# 73 configs and is read twice a run, ~0.25 s each with the pure-Python parser.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def card_front_matter(card: str | None) -> dict:
    """The YAML header of a dataset card (`---` ... `---`), or {} when there is none."""
    if not card or not card.startswith("---"):
        return {}
    end = card.find("\n---", 3)
    if end < 0:
        return {}
    data = yaml.load(card[3:end], Loader=_YAML_LOADER) or {}
    return data if isinstance(data, dict) else {}


def card_licence(card: str | None) -> dict[str, str]:
    """The licence a dataset card declares: `license`, plus `license_name` and
    `license_link` when present (a card with `license: other` names the real terms there,
    e.g. `license_name: fiqa-2018-non-commercial`). Empty when the card states none."""
    header = card_front_matter(card)
    found = {}
    for field in ("license", "license_name", "license_link"):
        value = header.get(field)
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        if value not in (None, ""):
            found[field] = str(value)
    return found
