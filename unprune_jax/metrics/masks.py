"""Mask metrics: how close an (un-pruned) mask is to the gold retrain+reprune mask.

The basic similarities (:func:`similarity`, :func:`jaccard`, :func:`hamming`,
:func:`delta_jaccard`) are defined in ``unprune_jax.masks`` and re-exported here. This module adds
the full recommended metric set (theory-and-methods §5), all computed on the host with numpy:

* :func:`mask_metrics`: Jaccard, chance-corrected Jaccard, Hamming and flip counts, gold
  recall / precision, layer-allocation distance, and, given the original mask, the un-pruning gain
  ΔJ, corrected fraction and introduced fraction; globally and per layer.
* :func:`filter_metrics`: the same Jaccard / Hamming on the sets of kept output filters
  (the Early-Bird mask distance for structured masks).
* :func:`noise_floor`: the distribution of Jaccard over pairs of gold masks from different seeds.
* :func:`weight_distance`: ‖θ_a − θ_b‖₂ over the union of the two supports (the verification-error
  analogue).

Notation: A is the kept set of the candidate mask, B the gold mask's, O the original mask's, over
the n prunable entries; d_X = |X| / n.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from ..masks import check_mask, delta_jaccard, hamming, jaccard, leaf_paths, similarity

PyTree = Any

__all__ = [
    "similarity", "jaccard", "hamming", "delta_jaccard",
    "mask_metrics", "filter_metrics", "noise_floor", "weight_distance",
]

_NAN = float("nan")


# --- helpers -----------------------------------------------------------------------------------


def _flags(tree: PyTree, prunable: PyTree | None) -> list[bool]:
    """One Python bool per leaf of ``tree`` (all True when ``prunable`` is None)."""
    n_leaves = len(jax.tree.leaves(tree))
    if prunable is None:
        return [True] * n_leaves
    if jax.tree.structure(prunable) != jax.tree.structure(tree):
        flags = jax.tree.leaves(prunable)
        if len(flags) != n_leaves:
            raise ValueError(
                f"prunable flags have {len(flags)} leaves, the masks have {n_leaves}: "
                f"{leaf_paths(tree)[:5]}..."
            )
        p_paths, t_paths = set(leaf_paths(prunable)), set(leaf_paths(tree))
        if p_paths != t_paths:
            raise ValueError(
                "prunable structure differs from the masks: only in prunable "
                f"{sorted(p_paths - t_paths)[:5]}, only in the masks "
                f"{sorted(t_paths - p_paths)[:5]}"
            )
    flags = [bool(f) for f in jax.tree.leaves(prunable)]
    if not any(flags):
        raise ValueError(f"no prunable leaf among {leaf_paths(tree)}")
    return flags


def _check_masks(reference: PyTree, *others: PyTree) -> None:
    """Raises ``ValueError`` naming the leaf where a mask does not fit ``reference``."""
    check_mask(reference, reference)
    for m in others:
        check_mask(reference, m)


def _prunable_leaves(mask: PyTree, flags: Sequence[bool]) -> list[np.ndarray]:
    return [np.asarray(m, bool) for m, f in zip(jax.tree.leaves(mask), flags) if f]


def _ratio(num: int, den: int, empty: float = _NAN) -> float:
    return num / den if den else empty


# --- entry-level metrics -----------------------------------------------------------------------

def _counts(a: np.ndarray, b: np.ndarray, o: np.ndarray | None) -> dict[str, int]:
    """Additive entry counts of one leaf (sums over leaves give the global counts)."""
    c = {
        "n": int(a.size),
        "a": int(a.sum()),
        "b": int(b.sum()),
        "ab": int((a & b).sum()),
        "a_or_b": int((a | b).sum()),
    }
    c["lad"] = abs(c["a"] - c["b"])  # n_l · |d_A^l − d_B^l|
    if o is not None:
        d_ab, d_ob = a != b, o != b
        c.update(
            o=int(o.sum()),
            ob=int((o & b).sum()),
            o_or_b=int((o | b).sum()),
            od=int(d_ob.sum()),                 # |O △ B|
            corr=int((d_ob & ~d_ab).sum()),     # |(O △ B) ∖ (A △ B)|
            intro=int((d_ab & ~d_ob).sum()),    # |(A △ B) ∖ (O △ B)|
        )
    return c


def _from_counts(c: dict[str, int], with_original: bool) -> dict[str, float | int]:
    n, a, b, ab, a_or_b = c["n"], c["a"], c["b"], c["ab"], c["a_or_b"]
    j = _ratio(ab, a_or_b, empty=1.0)
    # J_rand = d_A d_B / (d_A + d_B − d_A d_B) = a b / (n (a + b) − a b), exactly from the counts.
    den = n * (a + b) - a * b
    j_rand = a * b / den if den else _NAN
    j_corr = (j - j_rand) / (1.0 - j_rand) if not math.isnan(j_rand) and j_rand != 1.0 else _NAN
    out = {
        "jaccard": j,
        "jaccard_chance": j_rand,
        "jaccard_corrected": j_corr,
        "hamming": (a_or_b - ab) / n,
        "only_candidate": a - ab,
        "only_gold": b - ab,
        "recall": _ratio(ab, b),
        "precision": _ratio(ab, a),
        "layer_allocation_distance": c["lad"] / n,
        "density_candidate": a / n,
        "density_gold": b / n,
        "n": n,
    }
    if with_original:
        j_o = _ratio(c["ob"], c["o_or_b"], empty=1.0)
        out.update(
            jaccard_original=j_o,
            delta_jaccard=j - j_o,
            corrected_fraction=_ratio(c["corr"], c["od"]),
            introduced_fraction=_ratio(c["intro"], c["od"]),
            corrected=c["corr"],
            introduced=c["intro"],
            original_diff=c["od"],
            density_original=c["o"] / n,
        )
    return out


def mask_metrics(
    candidate: PyTree,
    gold: PyTree,
    prunable: PyTree | None,
    *,
    original: PyTree | None = None,
    per_layer: bool = True,
) -> dict:
    """The recommended mask-similarity metric set of a candidate mask against the gold mask.

    A, B, O are the kept sets of ``candidate``, ``gold`` and ``original`` over the prunable entries
    (n of them); d_X = |X| / n. Global values are computed over all prunable entries together, so
    additive quantities (Hamming, densities, layer-allocation distance) are the n_l-weighted means
    of the per-layer values.

    Args:
        candidate: bool mask pytree (e.g. the un-pruned mask).
        gold: bool mask pytree with the same structure and shapes (retrain+reprune mask).
        prunable: pytree of Python bools (one per leaf) from ``masks.prunable_leaves``; None means
            every leaf.
        original: optional bool mask pytree, the mask before unlearning (trained on all of D).
        per_layer: also return the metrics of each prunable leaf under ``'per_layer'``.

    Returns:
        A dict with

        * ``jaccard``: J(A,B) = |A∩B| / |A∪B| (1.0 when both are empty).
        * ``jaccard_chance``: J_rand = d_A d_B / (d_A + d_B − d_A d_B), the expected Jaccard of
          independent random masks at these densities (nan when both are empty).
        * ``jaccard_corrected``: J* = (J − J_rand) / (1 − J_rand); 0 at chance, 1 when identical;
          nan when J_rand is nan or 1 (both masks keep everything: nothing to beat chance on).
        * ``hamming``: |A △ B| / n; ``only_candidate`` = |A ∖ B| and ``only_gold`` = |B ∖ A|
          (flip counts, ints).
        * ``recall``: |A∩B| / |B| (nan if B is empty); ``precision``: |A∩B| / |A| (nan if A is
          empty).
        * ``layer_allocation_distance``: LD = Σ_l (n_l / n) |d_A^l − d_B^l| (per layer:
          |d_A^l − d_B^l|). Always ≤ ``hamming``.
        * ``density_candidate`` d_A, ``density_gold`` d_B, and ``n``.

        With ``original``, also

        * ``jaccard_original``: J(O,B); ``delta_jaccard``: ΔJ = J(A,B) − J(O,B).
        * ``corrected_fraction``: CF = |(O△B) ∖ (A△B)| / |O△B|, the share of the original's
          differences from gold that the candidate fixed.
        * ``introduced_fraction``: |(A△B) ∖ (O△B)| / |O△B|, new differences from gold that the
          candidate created (where the original agreed with gold), relative to the same
          denominator. So |A△B| = |O△B| (1 − CF + introduced_fraction); it can exceed 1.
        * Both fractions are nan when O == B (|O△B| = 0: 0/0, nothing to correct); the raw counts
          ``corrected``, ``introduced`` and ``original_diff`` (= |O△B|) are always defined.
        * ``density_original`` d_O.

        and, with ``per_layer``, ``per_layer``: ``{path: {the same keys, on that leaf alone}}``
        for every prunable leaf.

    Raises:
        ValueError: naming the leaf, if the masks' structures, shapes or dtypes (bool) differ, or
            if no leaf is prunable.
    """
    others = (candidate,) if original is None else (candidate, original)
    _check_masks(gold, *others)
    flags = _flags(gold, prunable)
    paths = [p for p, f in zip(leaf_paths(gold), flags) if f]
    a_l = _prunable_leaves(candidate, flags)
    b_l = _prunable_leaves(gold, flags)
    o_l = [None] * len(b_l) if original is None else _prunable_leaves(original, flags)
    counts = [_counts(a, b, o) for a, b, o in zip(a_l, b_l, o_l)]
    with_o = original is not None
    total = {k: sum(c[k] for c in counts) for k in counts[0]}
    out = _from_counts(total, with_o)
    if per_layer:
        out["per_layer"] = {p: _from_counts(c, with_o) for p, c in zip(paths, counts)}
    return out


# --- filter-level metrics ----------------------------------------------------------------------


def _kept_filters(leaf: np.ndarray, path: str) -> np.ndarray:
    if leaf.ndim < 2:
        raise ValueError(f"filter metrics need kernels (ndim >= 2); prunable leaf {path!r} has "
                         f"shape {leaf.shape}")
    return np.any(leaf, axis=tuple(range(leaf.ndim - 1)))


def _filter_stats(fa: np.ndarray, fb: np.ndarray) -> dict:
    inter, union = int((fa & fb).sum()), int((fa | fb).sum())
    n = int(fa.size)
    return {
        "jaccard": _ratio(inter, union, empty=1.0),
        "hamming": (union - inter) / n,
        "only_candidate": int((fa & ~fb).sum()),
        "only_gold": int((~fa & fb).sum()),
        "kept_candidate": int(fa.sum()),
        "kept_gold": int(fb.sum()),
        "n_filters": n,
    }


def filter_metrics(candidate: PyTree, gold: PyTree, prunable: PyTree | None) -> dict:
    """Filter-level Jaccard (IoU) and normalised Hamming distance of two masks.

    Flax kernels keep output channels last, so output filter / neuron ``o`` of a kernel is the
    slice ``kernel[..., o]``: for conv kernels (ndim 4, ``(kh, kw, in, out)``) a filter, for dense
    kernels (ndim 2, ``(in, out)``) an output neuron. A filter counts as kept if any of its entries
    is kept. The sets compared are the kept filters of each prunable leaf (the Early-Bird mask
    distance for structured masks).

    Args:
        candidate: bool mask pytree.
        gold: bool mask pytree with the same structure and shapes.
        prunable: pytree of Python bools (one per leaf); None means every leaf (then every leaf
            must be a kernel).

    Returns:
        ``{'jaccard', 'hamming', 'only_candidate', 'only_gold', 'kept_candidate', 'kept_gold',
        'n_filters', 'per_layer': {path: {the same keys}}}``. Jaccard is |F_A ∩ F_B| / |F_A ∪ F_B|
        over kept filters (1.0 when both keep none), Hamming is the fraction of filters kept by
        exactly one mask. Global values pool the filters of all prunable leaves (so the global
        Hamming is the n_filters-weighted mean of the per-layer ones).

    Raises:
        ValueError: naming the leaf, if the masks do not match, or a prunable leaf has ndim < 2.
    """
    _check_masks(gold, candidate)
    flags = _flags(gold, prunable)
    paths = [p for p, f in zip(leaf_paths(gold), flags) if f]
    fa = [_kept_filters(m, p) for m, p in zip(_prunable_leaves(candidate, flags), paths)]
    fb = [_kept_filters(m, p) for m, p in zip(_prunable_leaves(gold, flags), paths)]
    out = _filter_stats(np.concatenate(fa), np.concatenate(fb))
    out["per_layer"] = {p: _filter_stats(x, y) for p, x, y in zip(paths, fa, fb)}
    return out


# --- seed noise floor --------------------------------------------------------------------------


def _summary(values: list[float]) -> dict:
    v = np.asarray(values, np.float64)
    return {"mean": float(np.mean(v)), "std": float(np.std(v)), "min": float(np.min(v)),
            "max": float(np.max(v)), "values": [float(x) for x in v]}


def noise_floor(masks: Sequence[PyTree], prunable: PyTree | None) -> dict:
    """The seed noise floor: Jaccard between gold masks from different retrain seeds.

    Args:
        masks: two or more bool mask pytrees of the same structure (e.g. gold masks retrained with
            different data-order seeds).
        prunable: pytree of Python bools (one per leaf); None means every leaf.

    Returns:
        ``{'jaccard': s, 'jaccard_corrected': s, 'pairs': k}``, where each ``s`` is
        ``{'mean', 'std', 'min', 'max', 'values'}`` over the k = m(m−1)/2 unordered pairs
        (i < j, in lexicographic order, which is the order of ``values``); ``std`` is the
        population standard deviation (ddof=0). A nan ``jaccard_corrected`` (full masks)
        propagates to its summary.

    Raises:
        ValueError: if fewer than 2 masks are given (naming the count), or they do not match.
    """
    masks = list(masks)
    if len(masks) < 2:
        raise ValueError(f"noise_floor needs at least 2 masks, got {len(masks)}")
    _check_masks(masks[0], *masks[1:])
    j, jc = [], []
    for x, y in itertools.combinations(masks, 2):
        m = mask_metrics(x, y, prunable, per_layer=False)
        j.append(m["jaccard"])
        jc.append(m["jaccard_corrected"])
    return {"jaccard": _summary(j), "jaccard_corrected": _summary(jc), "pairs": len(j)}


# --- weight distance ---------------------------------------------------------------------------


def weight_distance(
    params_a: PyTree,
    params_b: PyTree,
    mask_a: PyTree,
    mask_b: PyTree,
    prunable: PyTree | None = None,
) -> float:
    """‖θ_a − θ_b‖₂ over the union of the two supports (the verification-error analogue).

    The compared weights are the effective (masked) ones, ``θ ⊙ M``: on an entry kept by only one
    mask the other model's weight counts as 0, even if its stored value is not. Entries pruned in
    both masks are ignored. Accumulated in float64.

    Args:
        params_a: parameter pytree of model a (e.g. un-pruned + unlearned).
        params_b: parameter pytree of model b (e.g. gold), same structure and shapes.
        mask_a: bool mask of model a.
        mask_b: bool mask of model b.
        prunable: pytree of Python bools (one per leaf): only prunable leaves count. None: every
            leaf counts (non-prunable leaves are all-True in both masks, so biases etc. are
            compared in full).

    Returns:
        The Euclidean distance, a Python float.

    Raises:
        ValueError: naming the leaf, if the params and masks do not match.
    """
    check_mask(params_a, mask_a)
    check_mask(params_a, mask_b)
    check_mask(params_b, mask_a)
    flags = _flags(params_a, prunable)
    total = 0.0
    for pa, pb, ma, mb, f in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b),
                                 jax.tree.leaves(mask_a), jax.tree.leaves(mask_b), flags):
        if not f:
            continue
        ma, mb = np.asarray(ma, bool), np.asarray(mb, bool)
        ea = np.where(ma, np.asarray(pa, np.float64), 0.0)
        eb = np.where(mb, np.asarray(pb, np.float64), 0.0)
        total += float(np.sum(np.square(ea - eb)[ma | mb]))
    return math.sqrt(total)
