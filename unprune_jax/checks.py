"""The numbers of a configuration dataclass, checked in one place.

Every config class (``TrainConfig`` and the unlearning methods' subclasses, ``PruneConfig``,
``UnpruneConfig``, ``EvaluateConfig``) calls :func:`check_numbers` from ``__post_init__``:

- every number field (annotated ``int`` or ``float``, optional or in a tuple) holds a real
  number, never a ``bool`` (``True`` is an ``int`` in Python and would read as 1), and a finite
  one (``inf`` and ``nan`` are refused);
- the ranges the class names (``positive``, ``nonnegative``, ...) hold; ``None`` passes.

The error is a :class:`ConfigValueError` naming ``section.field`` and the value;
``config.from_dict`` renames the section after the key in the run config (``train.lr``,
``unlearn.settings.GA.lr``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing

import numpy as np

RANGES = {
    "positive": (lambda v: v > 0, "must be > 0"),
    "nonnegative": (lambda v: v >= 0, "must be ≥ 0"),
    "at_least_one": (lambda v: v >= 1, "must be ≥ 1"),
    "unit": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "fraction": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
}


class ConfigValueError(ValueError):
    """A config field's bad value: ``'{section}.{field} {problem}, got {value!r}'``."""

    def __init__(self, section: str, field: str, problem: str, value):
        self.section, self.field, self.problem, self.value = section, field, problem, value
        super().__init__(f"{section}.{field} {problem}, got {value!r}")

    def renamed(self, section: str) -> ConfigValueError:
        """The same error under another section name (the key path in the run config)."""
        return ConfigValueError(section, self.field, self.problem, self.value)


@functools.cache
def _number_fields(cls) -> tuple[tuple[str, bool], ...]:
    """``(name, is_tuple)`` of the fields of ``cls`` annotated with int or float."""
    try:
        hints = typing.get_type_hints(cls)
    except (NameError, TypeError):  # an annotation that does not resolve: check what does
        hints = {f.name: f.type for f in dataclasses.fields(cls)}
    out = []
    for f in dataclasses.fields(cls):
        tp, in_tuple = hints[f.name], False
        if typing.get_origin(tp) in (typing.Union, types.UnionType):
            inner = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = inner[0] if len(inner) == 1 else None
        if typing.get_origin(tp) is tuple:
            tp, in_tuple = typing.get_args(tp)[0], True
        if tp in (int, float):
            out.append((f.name, in_tuple))
    return tuple(out)


def _bad_number(value) -> str | None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        return "must be a number"
    if not math.isfinite(value):
        return "must be finite"
    return None


def check_numbers(cfg, section: str, **ranges: typing.Sequence[str]) -> None:
    """Checks the number fields of dataclass ``cfg`` (see the module docstring).

    Args:
        cfg: a dataclass instance.
        section: its name in messages (``'prune'``, ``'TrainConfig'``).
        **ranges: for each kind of :data:`RANGES` (``positive``, ``nonnegative``,
            ``at_least_one``, ``unit``, ``fraction``), the fields that must satisfy it.

    Raises:
        ConfigValueError: naming the first offending field and its value.
    """
    for name, in_tuple in _number_fields(type(cfg)):
        value = getattr(cfg, name)
        for v in (value if in_tuple and isinstance(value, (tuple, list)) else (value,)):
            problem = None if v is None else _bad_number(v)
            if problem:
                raise ConfigValueError(section, name, problem, value)
    for kind, names in ranges.items():
        test, problem = RANGES[kind]
        for name in names:
            value = getattr(cfg, name)
            if value is not None and not test(value):
                raise ConfigValueError(section, name, problem, value)
