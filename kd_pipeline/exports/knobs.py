"""The one check of an integer knob, shared by every format's and selection's knobs.

YAML reads `true` as a bool, and Python's bool is an int: without this check a spec's
`negatives_per_row: true` would be taken as 1. Every integer knob goes through
`check_integer`, so every one refuses a bool, a float and a string the same way.
"""

from __future__ import annotations


def check_integer(
    name: str,
    value: object,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    optional: bool = False,
) -> None:
    """ValueError `<name>=<value>: expected ...` unless value is an int (not a bool) within
    [minimum, maximum] (None: unbounded), or None when optional (null in the spec)."""
    if optional and value is None:
        return
    fits = isinstance(value, int) and not isinstance(value, bool)
    if fits and minimum is not None and value < minimum:  # type: ignore[operator]
        fits = False
    if fits and maximum is not None and value > maximum:  # type: ignore[operator]
        fits = False
    if fits:
        return
    if minimum is not None and maximum is not None:
        expected = f"an integer from {minimum} to {maximum}"
    elif minimum is not None:
        expected = f"an integer >= {minimum}"
    elif maximum is not None:
        expected = f"an integer <= {maximum}"
    else:
        expected = "an integer"
    raise ValueError(f"{name}={value!r}: expected {expected}" + (" or null" if optional else ""))
