"""Boolean mask pytrees: which parameters are prunable, exact top-k selection, mask similarity.

A mask is a pytree of ``bool`` arrays with exactly the structure and shapes of the parameters it
masks. Leaves that are never pruned (biases, norms, by default the classifier) are all-True, never
``None``, so masks stack along a leading axis and pass through ``jax.vmap`` like any other state.

Which leaves are prunable is a separate pytree of Python ``bool`` (one per leaf), computed once from
parameter paths by :func:`prunable_leaves` and recorded in the run config.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

DEFAULT_INCLUDE = (r"kernel$",)
DEFAULT_EXCLUDE = (r"(^|/)head(/|$)",)


def path_str(path) -> str:
    """Turns a ``jax.tree_util`` key path into ``'Conv_0/kernel'``."""
    parts = []
    for k in path:
        for attr in ("key", "name", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
        else:
            parts.append(str(k))
    return "/".join(parts)


def leaf_paths(tree: PyTree) -> list[str]:
    """Paths of the leaves of ``tree``, in ``jax.tree.leaves`` order."""
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def prunable_leaves(
    params: PyTree,
    include: Sequence[str] = DEFAULT_INCLUDE,
    exclude: Sequence[str] = DEFAULT_EXCLUDE,
) -> PyTree:
    """Which leaves may be pruned, as a pytree of Python bools shaped like ``params``.

    A leaf is prunable when it has at least two dimensions (a conv or dense kernel), its path
    matches one of the ``include`` regular expressions and none of the ``exclude`` ones. The default
    prunes every conv and dense kernel except the classifier, which our models name ``head``.

    Raises:
        ValueError: if no leaf is prunable (the patterns name the paths that exist).
    """

    def pick(path, leaf):
        name = path_str(path)
        return bool(
            np.ndim(leaf) >= 2
            and any(re.search(p, name) for p in include)
            and not any(re.search(p, name) for p in exclude)
        )

    flags = jax.tree_util.tree_map_with_path(pick, params)
    if not any(jax.tree.leaves(flags)):
        raise ValueError(
            f"no prunable parameters: include={list(include)} exclude={list(exclude)} match none "
            f"of {leaf_paths(params)}"
        )
    return flags


def full_mask(params: PyTree) -> PyTree:
    """An all-True mask shaped like ``params`` (the dense model)."""
    return jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params)


def check_mask(params: PyTree, mask: PyTree) -> None:
    """Raises ``ValueError`` naming the first leaf where ``mask`` does not fit ``params``.

    A mask must have the structure of ``params``, each leaf its parameter's shape and dtype
    ``bool``. Only static properties are read (structure, shapes, dtypes), so the check also runs
    on tracers, at trace time, for nothing per call of a compiled function.
    """
    p_struct, m_struct = jax.tree.structure(params), jax.tree.structure(mask)
    if p_struct != m_struct:
        p_paths, m_paths = set(leaf_paths(params)), set(leaf_paths(mask))
        raise ValueError(
            "mask structure differs from the params: only in params "
            f"{sorted(p_paths - m_paths)[:5]}, only in mask {sorted(m_paths - p_paths)[:5]}"
        )
    for path, p, m in zip(leaf_paths(params), jax.tree.leaves(params), jax.tree.leaves(mask)):
        if jnp.shape(p) != jnp.shape(m):
            raise ValueError(f"mask leaf {path!r} has shape {jnp.shape(m)}, params {jnp.shape(p)}")
        if jnp.result_type(m) != jnp.bool_:
            raise ValueError(f"mask leaf {path!r} has dtype {jnp.result_type(m)}, expected bool")


def apply_mask(params: PyTree, mask: PyTree) -> PyTree:
    """``params ⊙ mask``: pruned entries become exactly zero (also for inf/nan entries).

    Raises:
        ValueError: if ``mask`` does not fit ``params`` (:func:`check_mask`): a leaf of another
            shape is never broadcast, a non-bool leaf never read as a fraction kept.
    """
    check_mask(params, mask)
    return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, mask)


def _prunable_pairs(mask: PyTree, prunable: PyTree | None) -> list:
    """The prunable leaves of ``mask``, after checking that it is a mask over those flags."""
    paths, leaves = leaf_paths(mask), jax.tree.leaves(mask)
    for path, m in zip(paths, leaves):
        if jnp.result_type(m) != jnp.bool_:
            raise ValueError(f"mask leaf {path!r} has dtype {jnp.result_type(m)}, expected bool")
    if prunable is None:
        return leaves
    if leaf_paths(prunable) != paths:
        raise ValueError(f"mask leaves {paths[:5]} do not match the prunable flags' "
                         f"{leaf_paths(prunable)[:5]}")
    return [leaf for leaf, f in zip(leaves, jax.tree.leaves(prunable)) if f]


def count(mask: PyTree, prunable: PyTree | None = None) -> tuple[int, int]:
    """(kept, total) entries over the prunable leaves (all leaves when ``prunable`` is None)."""
    leaves = _prunable_pairs(mask, prunable)
    kept = sum(int(jnp.sum(m)) for m in leaves)
    total = sum(int(np.prod(jnp.shape(m))) for m in leaves)
    return kept, total


def density(mask: PyTree, prunable: PyTree | None = None) -> float:
    """Fraction of kept entries over the prunable leaves (all leaves when ``prunable`` is None)."""
    kept, total = count(mask, prunable)
    return kept / total


def layer_densities(mask: PyTree, prunable: PyTree) -> dict[str, float]:
    """Density of each prunable leaf, keyed by its path."""
    kept = _prunable_pairs(mask, prunable)
    paths = [p for p, f in zip(leaf_paths(mask), jax.tree.leaves(prunable)) if f]
    return {path: float(jnp.mean(m)) for path, m in zip(paths, kept)}


def validate_density(density: float) -> float:
    """Returns ``density`` as a float or raises ``ValueError`` naming it when outside (0, 1]."""
    try:
        if isinstance(density, bool):  # True is an int, not a density
            raise TypeError
        d = float(density)
    except (TypeError, ValueError):
        raise ValueError(f"density must be a number in (0, 1], got {density!r}") from None
    if not 0.0 < d <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density!r}")
    return d


GRANULARITIES = ("weight", "filter")
ALLOCATIONS = ("uniform", "erk")


def _topk_flat(scores: jax.Array, k: int, candidates: jax.Array | None = None) -> jax.Array:
    """Bool vector keeping the ``k`` largest scores; ties go to the lower index, always.

    With ``candidates`` (bool, like ``scores``) every candidate ranks above every non-candidate:
    non-candidates score -inf and a candidate's own -inf is lifted to the lowest finite value
    (NaN stays first, as without candidates). So for ``k`` ≤ Σ candidates only candidates are
    kept, whatever the scores.
    """
    if candidates is not None:
        low = jnp.finfo(scores.dtype).min
        scores = jnp.where(candidates, jnp.maximum(scores, low), -jnp.inf)
    return _keep_top(scores, jnp.asarray(k, jnp.int32))


@jax.jit
def _keep_top(scores: jax.Array, k: jax.Array) -> jax.Array:
    # A stable descending sort keeps equal scores in index order: deterministic tie-breaking.
    # k is traced, so iterative pruners (SynFlow's 100 rounds, IMP) reuse one compilation per
    # shape instead of compiling a new slice for every k.
    order = jnp.argsort(scores, descending=True, stable=True)
    ranks = jnp.zeros(scores.shape, jnp.int32).at[order].set(
        jnp.arange(scores.size, dtype=jnp.int32))
    return ranks < k


def _unit_view(leaf, path: str, granularity: str, allow_dense_filters: bool):
    """Scores (or a mask) per selection unit: each entry, or each output filter / neuron.

    Flax kernels keep output channels last, so a filter is a slice ``leaf[..., o]``. A mask
    counts a filter as kept if any entry of it is kept. A filter's score is the **mean** of its
    entries' scores, and exactly their common value when they are all equal: a per-filter score
    broadcast to the filter's entries (``scores.filter_l2``) ranks by that value, a per-entry
    score (|θ|, SNIP, SynFlow, random) by its average per weight. Within one layer every filter
    has the same fan-in, so the mean orders filters as their sum would; across layers (global
    scope) a layer's fan-in does not weigh in.
    """
    if granularity == "weight":
        return jnp.ravel(leaf)
    if granularity != "filter":
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if jnp.ndim(leaf) == 2 and not allow_dense_filters:
        raise ValueError(
            f"granularity 'filter' on the dense kernel {path!r} (shape {jnp.shape(leaf)}): pass "
            "allow_dense_filters=True to prune its output neurons, or exclude it from the "
            "prunable leaves"
        )
    if jnp.ndim(leaf) < 2:
        raise ValueError(f"granularity 'filter' needs a kernel, {path!r} has shape "
                         f"{jnp.shape(leaf)}")
    axes = tuple(range(jnp.ndim(leaf) - 1))
    if jnp.result_type(leaf) == jnp.bool_:
        return jnp.any(leaf, axis=axes)
    x = jnp.asarray(leaf, jnp.float32)
    lo = jnp.min(x, axis=axes)
    return jnp.where(lo == jnp.max(x, axis=axes), lo, jnp.mean(x, axis=axes))


def _unit_expand(keep, shape, granularity: str):
    if granularity == "weight":
        return keep.reshape(shape)
    return jnp.broadcast_to(keep, shape)


def layer_allocation(
    sizes: Sequence[int],
    density: float,
    allocation: str = "uniform",
    *,
    shapes: Sequence[tuple] | None = None,
    fixed: dict[int, float] | None = None,
    capacity: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
) -> list[int]:
    """Integer keep counts per layer summing exactly to round(density · Σ sizes).

    Per-layer target densities: ``uniform`` (the same in every layer) or ``erk``
    (Erdős–Rényi-kernel: proportional to Σ dims / Π dims of the layer's ``shapes``). ``fixed``
    maps layer positions to explicit densities (pins); the other layers share what remains of the
    budget. ``capacity`` bounds each layer's count (default: its size; iterative pruning passes
    the number of units a layer still has, its candidates). A free layer whose share would exceed
    its capacity keeps its capacity and the other free layers share the rest, rescaled (ERK's cap
    at density 1 is the case capacity = size). Fractional counts are rounded by the
    largest-remainder method (ties to the earlier layer): the total is exact and no count
    exceeds its capacity.

    Args:
        names: the layers' labels for error messages (default ``layer i``).

    Raises:
        ValueError: if the pins cannot be met: a pinned layer cannot hold its pinned count, or
            the pins leave the other layers fewer than 0 or more units than they can hold.
    """
    sizes = np.asarray(sizes, np.int64)
    cap = sizes.copy() if capacity is None else np.minimum(np.asarray(capacity, np.int64), sizes)
    names = [f"layer {i}" for i in range(len(sizes))] if names is None else list(names)
    fixed = dict(fixed or {})
    total = int(round(density * sizes.sum()))
    if allocation == "uniform":
        weight = np.ones(len(sizes))
    elif allocation == "erk":
        if shapes is None:
            raise ValueError("ERK allocation needs the layer shapes")
        weight = np.array([np.sum(s) / np.prod(s) for s in shapes], np.float64)
    else:
        raise ValueError(f"allocation must be one of {ALLOCATIONS}, got {allocation!r}")
    exact = np.zeros(len(sizes))
    for i, d in fixed.items():
        exact[i] = validate_density(d) * sizes[i]
        if exact[i] > cap[i] + 1e-9:
            raise ValueError(f"{names[i]} is pinned to {exact[i]:g} units, but can keep at most "
                             f"{cap[i]} (its candidates)")
    free = [i for i in range(len(sizes)) if i not in fixed]
    pinned = float(exact.sum())
    budget, room = total - pinned, int(sum(cap[i] for i in free))
    if budget < -0.5 or budget > room + 0.5:
        raise ValueError(
            f"per-layer densities cannot be met: density {density} keeps {total} of the "
            f"{int(sizes.sum())} units; the pins keep {pinned:g} "
            f"({', '.join(f'{names[i]}: {exact[i]:g}' for i in fixed)}), leaving {budget:g} for "
            f"the other layers {[names[i] for i in free]}, which can keep 0 to {room}"
        )
    budget = max(budget, 0.0)  # pins over the total by less than half a unit round down
    capped: set[int] = set()
    while free:  # cap at capacity and redistribute to the layers with room
        rest = [i for i in free if i not in capped]
        left = budget - sum(cap[i] for i in capped)
        eps = left / max(sum(weight[i] * sizes[i] for i in rest), 1e-30) if rest else 0.0
        over = [i for i in rest if eps * weight[i] * sizes[i] > cap[i]]
        if not over:
            for i in capped:
                exact[i] = cap[i]
            for i in rest:
                exact[i] = eps * weight[i] * sizes[i]
            break
        capped.update(over)
    counts = np.floor(exact).astype(np.int64)
    short = total - int(counts.sum())
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: max(short, 0)]:
        counts[i] += 1
    if int(counts.sum()) != total or np.any(counts > cap):  # unreachable by the checks above
        raise RuntimeError(f"layer allocation {counts.tolist()} misses {total} or {cap.tolist()}")
    return [int(c) for c in counts]


def topk_mask(
    scores: PyTree,
    density: float,
    prunable: PyTree,
    scope: str = "global",
    *,
    granularity: str = "weight",
    allocation: str = "uniform",
    layer_density: dict[str, float] | None = None,
    candidates: PyTree | None = None,
    allow_dense_filters: bool = False,
    on_empty_layer: str = "warn",
) -> PyTree:
    """Keeps the highest-scoring ``density`` fraction of the prunable units.

    Exactly ``round(density · n)`` units are kept, n being the number of prunable units (entries,
    or output filters with ``granularity='filter'``): over all prunable leaves together
    (``scope='global'``), or split over the leaves by ``allocation`` (``'per_layer'``, see
    :func:`layer_allocation`). Ties go to the unit that comes first in leaf order, then in
    row-major order. Non-prunable leaves are all-True.

    Args:
        scores: float pytree shaped like the params (higher = more important).
        density: kept fraction of the prunable units, in (0, 1].
        prunable: pytree of Python bools from :func:`prunable_leaves`.
        scope: ``'global'`` or ``'per_layer'``.
        granularity: ``'weight'`` or ``'filter'`` (whole output filters of conv kernels; of dense
            kernels too, as output neurons, with ``allow_dense_filters``). A filter's score is
            the mean of its entries' scores: a per-filter score broadcast over the filter
            (``scores.filter_l2``) ranks by its value, a per-entry score by its mean, so across
            layers a filter's fan-in does not weigh in.
        allocation: per-layer densities for ``per_layer``: ``'uniform'`` or ``'erk'``.
        layer_density: explicit per-layer densities, ``{path regex: density}``, for
            ``per_layer``; the other layers share the rest.
        candidates: a mask; only its kept units may be kept (iterative pruning: a unit pruned
            once stays pruned). The density is still relative to all prunable units. With
            ``per_layer``, a layer keeps at most its candidates and the allocation hands the rest
            of its share to the layers with room.
        on_empty_layer: ``'warn'``, ``'error'`` or ``'ignore'`` when a prunable leaf keeps nothing.

    Raises:
        ValueError: for a bad argument; if the candidates hold fewer units than
            ``round(density · n)``; if ``layer_density`` pins cannot be met (they keep more than
            the total, or leave the other layers more than they hold).
    """
    density = validate_density(density)
    if scope not in ("global", "per_layer"):
        raise ValueError(f"scope must be 'global' or 'per_layer', got {scope!r}")
    if on_empty_layer not in ("warn", "error", "ignore"):
        raise ValueError(f"on_empty_layer must be 'warn', 'error' or 'ignore', got "
                         f"{on_empty_layer!r}")
    leaves, treedef = jax.tree.flatten(scores)
    flags = jax.tree.leaves(prunable)
    if len(flags) != len(leaves):
        raise ValueError(f"prunable flags have {len(flags)} leaves, scores have {len(leaves)}")
    paths = leaf_paths(scores)
    if candidates is not None:
        check_mask(scores, candidates)
    cand = None if candidates is None else jax.tree.leaves(candidates)
    idx = [i for i, f in enumerate(flags) if f]
    view = lambda leaf, i: _unit_view(leaf, paths[i], granularity, allow_dense_filters)
    units = [view(leaves[i], i).astype(jnp.float32) for i in idx]
    cunits = None if cand is None else [view(cand[i], i) for i in idx]
    sizes = [int(u.size) for u in units]
    total = int(round(density * sum(sizes)))
    if total < 1:
        raise ValueError(f"density {density} keeps no entry of the {sum(sizes)} prunable units")
    room = None if cunits is None else [int(jnp.sum(c)) for c in cunits]
    if room is not None and sum(room) < total:
        raise ValueError(
            f"candidates keep {sum(room)} of the {sum(sizes)} prunable units, fewer than the "
            f"{total} that density {density} keeps: candidates restrict the selection, they never "
            "add to it"
        )
    if scope == "global":
        if layer_density:
            raise ValueError("layer_density needs scope='per_layer'")
        keep = _topk_flat(jnp.concatenate(units), total,
                          None if cunits is None else jnp.concatenate(cunits))
        bounds = np.cumsum([0] + sizes)
        kept_units = [keep[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
    else:
        fixed, names = {}, [paths[i] for i in idx]
        for pattern, d in (layer_density or {}).items():
            hits = [j for j, i in enumerate(idx) if re.search(pattern, paths[i])]
            if not hits:
                raise ValueError(f"layer_density pattern {pattern!r} matches no prunable leaf of "
                                 f"{[paths[i] for i in idx]}")
            for j in hits:
                fixed[j] = d
                names[j] = f"{paths[idx[j]]} (layer_density {pattern!r} = {d})"
        counts = layer_allocation(sizes, density, allocation,
                                  shapes=[jnp.shape(leaves[i]) for i in idx], fixed=fixed,
                                  capacity=room, names=names)
        kept_units = [_topk_flat(u, k, None if cunits is None else cunits[j])
                      for j, (u, k) in enumerate(zip(units, counts))]
    out = [jnp.ones(jnp.shape(s), bool) for s in leaves]
    for j, i in enumerate(idx):
        out[i] = _unit_expand(kept_units[j], jnp.shape(leaves[i]), granularity)
    empty = [paths[i] for j, i in enumerate(idx) if not bool(jnp.any(kept_units[j]))]
    if empty and on_empty_layer != "ignore":
        msg = f"density {density} ({scope}) prunes every unit of {empty}: the network is cut"
        if on_empty_layer == "error":
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=2)
    return jax.tree.unflatten(treedef, out)


def regrow_mask(
    mask: PyTree,
    scores: PyTree,
    fraction: float,
    prunable: PyTree,
    scope: str = "global",
    *,
    granularity: str = "weight",
    allow_dense_filters: bool = False,
) -> PyTree:
    """Revives the ``fraction`` of currently pruned units with the highest scores.

    Exactly ``round(fraction · |P|)`` units are revived, P being the pruned prunable units (entries
    or whole output filters; globally or per leaf, as ``scope`` says); ties go to the lower index.
    A filter's score is the mean of its entries' scores, as in :func:`topk_mask`. Kept units stay
    kept.
    """
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"regrow fraction must be in [0, 1], got {fraction!r}")
    if scope not in ("global", "per_layer"):
        raise ValueError(f"scope must be 'global' or 'per_layer', got {scope!r}")
    check_mask(scores, mask)
    m_leaves, treedef = jax.tree.flatten(mask)
    s_leaves = jax.tree.leaves(scores)
    paths = leaf_paths(mask)
    flags = jax.tree.leaves(prunable)
    out = list(m_leaves)
    idx = [i for i, f in enumerate(flags) if f]
    view = lambda leaf, i: _unit_view(leaf, paths[i], granularity, allow_dense_filters)
    groups = [idx] if scope == "global" else [[i] for i in idx]
    for group in groups:
        m = jnp.concatenate([view(m_leaves[i], i) for i in group])
        s = jnp.concatenate([view(s_leaves[i], i).astype(jnp.float32) for i in group])
        k = int(round(float(fraction) * int(jnp.sum(~m))))
        grown = m | _topk_flat(s, k, candidates=~m) if k > 0 else m
        start = 0
        for i in group:
            n = int(view(m_leaves[i], i).size)
            unit = grown[start:start + n]
            start += n
            # weights of a kept filter keep their own (unstructured) mask entries
            out[i] = m_leaves[i] | _unit_expand(unit & ~view(m_leaves[i], i),
                                                jnp.shape(m_leaves[i]), granularity)
    return jax.tree.unflatten(treedef, out)


# --- similarity -------------------------------------------------------------------------------


def _flat(mask: PyTree, prunable: PyTree | None) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(m)) for m in _prunable_pairs(mask, prunable)])


def similarity(a: PyTree, b: PyTree, prunable: PyTree | None = None) -> dict[str, float]:
    """Similarity of two masks' kept sets A and B over the prunable entries.

    Returns:
        ``jaccard`` |A∩B|/|A∪B| (1.0 when both are empty), ``hamming`` |A△B|/n,
        ``only_a`` |A∖B| and ``only_b`` |B∖A| (flip counts), and ``n``.
    """
    check_mask(a, b)
    fa, fb = _flat(a, prunable), _flat(b, prunable)
    inter, union = int(np.sum(fa & fb)), int(np.sum(fa | fb))
    return {
        "jaccard": inter / union if union else 1.0,
        "hamming": float(np.mean(fa != fb)),
        "only_a": int(np.sum(fa & ~fb)),
        "only_b": int(np.sum(~fa & fb)),
        "n": int(fa.size),
    }


def jaccard(a: PyTree, b: PyTree, prunable: PyTree | None = None) -> float:
    """IoU of the kept sets of two masks over the prunable entries."""
    return similarity(a, b, prunable)["jaccard"]


def hamming(a: PyTree, b: PyTree, prunable: PyTree | None = None) -> float:
    """Fraction of prunable entries on which two masks disagree."""
    return similarity(a, b, prunable)["hamming"]


def delta_jaccard(candidate: PyTree, original: PyTree, gold: PyTree, prunable=None) -> float:
    """Un-pruning gain ΔJ = J(candidate, gold) − J(original, gold)."""
    return jaccard(candidate, gold, prunable) - jaccard(original, gold, prunable)
