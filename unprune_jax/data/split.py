"""Train/val/test/forget splits: disjoint index sets into a dataset pool, stored as plain JSON."""

from __future__ import annotations

import dataclasses
import functools
import numbers
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from ._checks import as_index_array, check_int, check_range, check_unique, fmt
from .dataset import Dataset

#: The forget fraction :func:`make_split` (and ``DataConfig``) use when no forget criterion is
#: given.
DEFAULT_FORGET_FRACTION = 0.1

_SPLIT_FIELDS = ("train", "val", "test", "forget")


@dataclasses.dataclass(frozen=True)
class Split:
    """Disjoint index sets into a :class:`~unprune_jax.data.Dataset` pool.

    Attributes:
        train: Sorted int64 pool indices of the training set (retain + forget).
        val: Sorted int64 pool indices of the validation set.
        test: Sorted int64 pool indices of the test set.
        forget: Sorted int64 pool indices of the forget set (subset of train).

    Inputs are converted to sorted, read-only int64 arrays. Construction does
    not validate; use :func:`validate_split` (as :func:`make_split` does).
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    forget: np.ndarray

    def __post_init__(self) -> None:
        for f in _SPLIT_FIELDS:
            arr = np.sort(as_index_array(getattr(self, f), f"split.{f}"))
            arr.setflags(write=False)
            object.__setattr__(self, f, arr)

    @functools.cached_property
    def retain(self) -> np.ndarray:
        """Sorted int64 ``train`` indices that are not in ``forget``."""
        arr = np.setdiff1d(self.train, self.forget).astype(np.int64)
        arr.setflags(write=False)
        return arr

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Split):
            return NotImplemented
        return all(np.array_equal(getattr(self, f), getattr(other, f)) for f in _SPLIT_FIELDS)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, f).tobytes() for f in _SPLIT_FIELDS))

    def to_dict(self) -> dict[str, list[int]]:
        """Returns a JSON-serialisable dict of index lists."""
        return {f: getattr(self, f).tolist() for f in _SPLIT_FIELDS}

    @classmethod
    def from_dict(cls, d: Mapping[str, Sequence[int]]) -> Split:
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: If a key is missing or unknown.
        """
        missing = [f for f in _SPLIT_FIELDS if f not in d]
        unknown = [k for k in d if k not in _SPLIT_FIELDS]
        if missing or unknown:
            raise ValueError(
                f"Split.from_dict: missing keys {missing}, unknown keys {unknown}; "
                f"expected exactly {list(_SPLIT_FIELDS)}"
            )
        return cls(**{f: d[f] for f in _SPLIT_FIELDS})

    def summary(self) -> dict[str, int]:
        """Returns the size of each set, including ``retain``."""
        out = {f: int(getattr(self, f).size) for f in _SPLIT_FIELDS}
        out["retain"] = int(self.retain.size)
        return out

    def __repr__(self) -> str:
        return f"Split({', '.join(f'{k}={v}' for k, v in self.summary().items())})"


def validate_split(split: Split, n_pool: int) -> None:
    """Checks that a split is consistent with a pool of ``n_pool`` examples.

    Args:
        split: The split.
        n_pool: Number of examples in the dataset pool.

    Raises:
        ValueError: If an index is outside ``[0, n_pool)``; a set holds
            duplicates; train, val and test overlap; forget is not a subset
            of train (the message says which offending indices are in the
            test or val set); forget or train is empty; or forget is all of
            train (empty retain set). Messages name the offending values.
    """
    for f in _SPLIT_FIELDS:
        check_range(getattr(split, f), n_pool, f"split.{f}")
    for f in _SPLIT_FIELDS:
        check_unique(getattr(split, f), f"split.{f}")
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        both = np.intersect1d(getattr(split, a), getattr(split, b))
        if both.size:
            raise ValueError(
                f"split.{a} and split.{b} overlap in {both.size} indices: {fmt(both)}"
            )
    if split.train.size == 0:
        raise ValueError("split.train is empty")
    if split.forget.size == 0:
        raise ValueError("split.forget is empty: there is nothing to unlearn")
    outside = np.setdiff1d(split.forget, split.train)
    if outside.size:
        where = []
        for other in ("test", "val"):
            hit = np.intersect1d(outside, getattr(split, other))
            if hit.size:
                where.append(f"{hit.size} of them are in the {other} set ({fmt(hit)})")
        detail = ("; " + "; ".join(where)) if where else ""
        raise ValueError(
            f"split.forget is not a subset of split.train: {outside.size} forget "
            f"indices are not in train: {fmt(outside)}{detail}"
        )
    if split.retain.size == 0:
        raise ValueError(
            f"the retain set is empty: split.forget covers all {split.train.size} "
            "training examples"
        )


def make_split(
    dataset: Dataset,
    *,
    seed: int,
    train_size: int | None = None,
    val_size: int = 0,
    test_size: int | None = None,
    forget_fraction: float | None = None,
    forget_classes: Iterable[int] | int | None = None,
    forget_indices: Iterable[int] | None = None,
) -> Split:
    """Draws a validated train/val/test/forget split of a dataset pool, a deterministic function
    of the arguments.

    ``val`` and then ``train`` are drawn without replacement from ``dataset.train_pool``, ``test``
    from ``dataset.test_pool``. The forget set is chosen by at most one of ``forget_fraction``,
    ``forget_classes`` and ``forget_indices``; none of them means ``forget_fraction`` =
    :data:`DEFAULT_FORGET_FRACTION` (0.1).

    Args:
        dataset: The dataset.
        seed: Non-negative int seed for ``np.random.default_rng``.
        train_size: Training examples; None = all of ``train_pool`` not drawn for val.
        val_size: Validation examples.
        test_size: Test examples; None = all of ``test_pool``.
        forget_fraction: Forget ``round(forget_fraction * len(train))`` random training
            examples, in ``(0, 1)``; None = the default 0.1 when neither other criterion is given.
        forget_classes: Forget every training example with one of these labels.
        forget_indices: Forget exactly these pool indices; they must be in the drawn train set
            (always true for ``train_pool`` indices when ``train_size`` is None and ``val_size``
            is 0).

    Raises:
        ValueError: On a bad size, seed, fraction or class label, more than one forget criterion,
            or a split :func:`validate_split` rejects. Messages name the offending values.
    """
    seed = check_int(seed, "seed", 0)
    train_pool, test_pool = dataset.train_pool, dataset.test_pool
    val_size = check_int(val_size, "val_size", 0, len(train_pool))
    rest = len(train_pool) - val_size
    train_size = rest if train_size is None else check_int(train_size, "train_size", 1, rest)
    test_size = (len(test_pool) if test_size is None
                 else check_int(test_size, "test_size", 0, len(test_pool)))
    given = [name for name, value in (("forget_fraction", forget_fraction),
                                      ("forget_classes", forget_classes),
                                      ("forget_indices", forget_indices)) if value is not None]
    if len(given) > 1:
        raise ValueError(f"give only one of {', '.join(given)}")

    # Independent streams, so e.g. the forget draw does not depend on test_size.
    rng_pool, rng_test, rng_forget = np.random.default_rng(seed).spawn(3)
    perm = rng_pool.permutation(train_pool)
    val = perm[:val_size]
    train = np.sort(perm[val_size:val_size + train_size])
    if test_size == len(test_pool):
        test = test_pool
    else:
        test = rng_test.choice(test_pool, size=test_size, replace=False)

    if forget_classes is not None:
        forget = _class_members(dataset, train, forget_classes)
    elif forget_indices is not None:
        forget = as_index_array(forget_indices, "forget_indices")
    else:
        frac = DEFAULT_FORGET_FRACTION if forget_fraction is None else forget_fraction
        if isinstance(frac, bool) or not isinstance(frac, numbers.Real) or not 0 < frac < 1:
            raise ValueError(f"forget_fraction must be in (0, 1), got {frac!r}")
        k = round(float(frac) * len(train))
        if k == 0 or k == len(train):
            raise ValueError(
                f"forget_fraction={float(frac)!r} of {len(train)} training examples "
                f"gives {k} forget examples; the forget and retain sets must both be non-empty"
            )
        forget = rng_forget.choice(train, size=k, replace=False)

    split = Split(train=train, val=val, test=test, forget=forget)
    validate_split(split, len(dataset))
    return split


def _class_members(dataset: Dataset, train: np.ndarray, forget_classes) -> np.ndarray:
    """The ``train`` indices whose label is one of ``forget_classes`` (checked)."""
    classes = np.atleast_1d(np.asarray(forget_classes))
    if classes.size == 0:
        raise ValueError("forget_classes is empty")
    if not np.issubdtype(classes.dtype, np.integer):
        raise ValueError(f"forget_classes must be int labels, got {fmt(classes)}")
    bad = np.unique(classes[(classes < 0) | (classes >= dataset.num_classes)])
    if bad.size:
        raise ValueError(
            f"unknown class labels {fmt(bad)} in forget_classes: dataset "
            f"{dataset.name!r} has classes 0..{dataset.num_classes - 1}"
        )
    forget = train[np.isin(dataset.y[train], classes)]
    if forget.size == 0:
        raise ValueError(
            f"forget_classes {fmt(np.unique(classes))} match no example of "
            f"the {len(train)}-example training set"
        )
    return forget
