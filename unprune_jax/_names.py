"""One error message for every name a user types: config keys, pruners, scores, methods, models,
datasets, strategies. It lists the valid names and suggests the closest one (difflib), so a typo
costs one glance instead of a trip to the docs.
"""

from __future__ import annotations

import difflib
from typing import Iterable


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
