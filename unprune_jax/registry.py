"""Named things a user can pick, and one error message for every name a user types.

:class:`Registry` is the one shape of every name → thing table in the library (pruners, scores,
models, datasets, unlearning methods, un-pruning options, K-run strategies): ``register`` adds an
entry with a one-line description, ``get`` looks one up (an unknown name gets the closest valid
one in the error), ``describe`` feeds ``unprune-jax list``. Config keys use the same error
(:func:`unknown_name_error`): it lists the valid names and suggests the closest one (difflib), so a
typo costs one glance instead of a trip to the docs.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


def closest_name(name: str, valid: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The valid name closest to ``name``, or None when nothing is close enough.

    A case-insensitive exact match wins first (``ft`` → ``FT``), because difflib scores short
    names that differ only in case as far apart.

    Args:
        name: what the user typed.
        valid: the accepted names.
        cutoff: difflib similarity ratio in [0, 1] a suggestion must reach.
    """
    valid = [str(v) for v in valid]
    same_case = [v for v in valid if v.lower() == str(name).lower()]
    if same_case:
        return same_case[0]
    close = difflib.get_close_matches(str(name), valid, n=1, cutoff=cutoff)
    return close[0] if close else None


def unknown_name_error(kind: str, name, valid: Iterable[str], *, cutoff: float = 0.6
                       ) -> ValueError:
    """A ``ValueError`` for an unknown ``name`` of ``kind``, listing ``valid`` with a suggestion.

    The caller raises it (``raise unknown_name_error('pruner', name, PRUNERS)``), so tracebacks
    point at the caller.

    Example message: ``unknown pruner 'ompp'; known: ['imp', 'omp', ...]. Did you mean 'omp'?``
    """
    valid = list(valid)
    close = closest_name(str(name), valid, cutoff)
    hint = f" Did you mean {close!r}?" if close is not None else ""
    return ValueError(f"unknown {kind} {name!r}; known: {sorted(valid)}.{hint}")


@dataclasses.dataclass(frozen=True)
class Entry(Generic[T]):
    """A registered value and its one-line description."""

    value: T
    description: str


class Registry(Generic[T]):
    """An ordered name → value table with descriptions and closest-name errors.

    Example:
        >>> PRUNERS = Registry("pruner")
        >>> @PRUNERS.register("omp", "one-shot magnitude pruning")
        ... def omp(run): ...
        >>> PRUNERS.get("ompp")  # ValueError: unknown pruner 'ompp'; ... Did you mean 'omp'?

    Args:
        kind: what an entry is, for error messages (``"pruner"``, ``"unlearning method"``).
        cutoff: difflib ratio a suggestion must reach (short names such as ``GA`` need a low one).
    """

    def __init__(self, kind: str, *, cutoff: float = 0.6):
        self.kind = kind
        self.cutoff = cutoff
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, description: str, value=None) -> Callable[[T], T] | T:
        """Adds ``value`` under ``name``; without ``value``, a decorator that adds what it wraps.

        Raises:
            ValueError: ``name`` is already registered (a second registration would silently
                replace the first).
        """
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is already registered")

        def add(v: T) -> T:
            self._entries[name] = Entry(v, description)
            return v

        return add if value is None else add(value)

    def unregister(self, name: str) -> T:
        """Removes ``name`` and returns its value (for tests and examples that register a
        temporary entry and leave the table as they found it).

        Raises:
            ValueError: unknown ``name``, as :meth:`get`.
        """
        value = self.get(name)
        del self._entries[name]
        return value

    def get(self, name: str) -> T:
        """The value registered under ``name``.

        Raises:
            ValueError: unknown ``name``, listing the valid ones and the closest.
        """
        if name not in self._entries:
            raise unknown_name_error(self.kind, name, self._entries, cutoff=self.cutoff)
        return self._entries[name].value

    def check(self, name: str) -> str:
        """``name`` if registered (for validating configs), else the :meth:`get` error."""
        self.get(name)
        return name

    def describe(self) -> dict[str, str]:
        """``{name: one-line description}`` in registration order."""
        return {n: e.description for n, e in self._entries.items()}

    def items(self) -> list[tuple[str, T]]:
        """``(name, value)`` pairs in registration order."""
        return [(n, e.value) for n, e in self._entries.items()]

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __contains__(self, name) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"
