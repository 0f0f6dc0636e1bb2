"""Boolean mask pytrees: which parameters are prunable, exact top-k selection, mask similarity.

A mask is a pytree of ``bool`` arrays with exactly the structure and shapes of the parameters it
masks. Leaves that are never pruned (biases, norms, by default the classifier) are all-True, never
``None``, so masks stack along a leading axis and pass through ``jax.vmap`` like any other state.

Which leaves are prunable is a separate pytree of Python ``bool`` (one per leaf), computed once from
parameter paths by :func:`prunable_leaves` and recorded in the run config.
"""

from __future__ import annotations

import re
from typing import Any, Iterable, Sequence

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
            f"no prunable parameters: include={list(include)} exclude={list(exclude)} match none of "
            f"{leaf_paths(params)}"
        )
    return flags


def full_mask(params: PyTree) -> PyTree:
    """An all-True mask shaped like ``params`` (the dense model)."""
    return jax.tree.map(lambda p: jnp.ones(jnp.shape(p), bool), params)


def check_mask(params: PyTree, mask: PyTree) -> None:
    """Raises ``ValueError`` naming the first leaf where ``mask`` does not fit ``params``."""
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
    """``params ⊙ mask``: pruned entries become exactly zero (also for inf/nan entries)."""
    return jax.tree.map(lambda p, m: jnp.where(m, p, jnp.zeros_like(p)), params, mask)


def _prunable_pairs(tree: PyTree, prunable: PyTree | None) -> list:
    leaves = jax.tree.leaves(tree)
    flags = [True] * len(leaves) if prunable is None else jax.tree.leaves(prunable)
    if len(flags) != len(leaves):
        raise ValueError(f"prunable flags have {len(flags)} leaves, the tree has {len(leaves)}")
    return [leaf for leaf, f in zip(leaves, flags) if f]


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
    return {
        path: float(jnp.mean(m))
        for path, m, f in zip(leaf_paths(mask), jax.tree.leaves(mask), jax.tree.leaves(prunable))
        if f
    }


def validate_density(density: float) -> float:
    """Returns ``density`` as a float or raises ``ValueError`` naming it when outside (0, 1]."""
    try:
        d = float(density)
    except (TypeError, ValueError):
        raise ValueError(f"density must be a number in (0, 1], got {density!r}") from None
    if not 0.0 < d <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density!r}")
    return d


def _topk_flat(scores: jax.Array, k: int, candidates: jax.Array | None = None) -> jax.Array:
    """Bool vector keeping the ``k`` largest scores; ties go to the lower index, always."""
    if candidates is not None:
        scores = jnp.where(candidates, scores, -jnp.inf)
    # A stable descending sort keeps equal scores in index order: deterministic tie-breaking.
    order = jnp.argsort(scores, descending=True, stable=True)
    return jnp.zeros(scores.shape, bool).at[order[:k]].set(True)


def _keep_count(density: float, n: int, where: str) -> int:
    k = int(round(density * n))
    if k < 1:
        raise ValueError(f"density {density} keeps no entry of the {n} in {where}")
    return k


def topk_mask(
    scores: PyTree,
    density: float,
    prunable: PyTree,
    scope: str = "global",
) -> PyTree:
    """Keeps the highest-scoring ``density`` fraction of the prunable entries.

    Exactly ``round(density · n)`` entries are kept: over all prunable leaves together (``global``)
    or in each prunable leaf separately (``per_layer``). Ties go to the entry that comes first in
    leaf order and then in row-major order. Non-prunable leaves are all-True.

    Args:
        scores: float pytree shaped like the params (higher = more important).
        density: kept fraction, in (0, 1].
        prunable: pytree of Python bools from :func:`prunable_leaves`.
        scope: ``'global'`` or ``'per_layer'``.
    """
    density = validate_density(density)
    leaves, treedef = jax.tree.flatten(scores)
    flags = jax.tree.leaves(prunable)
    if len(flags) != len(leaves):
        raise ValueError(f"prunable flags have {len(flags)} leaves, scores have {len(leaves)}")
    out = [jnp.ones(jnp.shape(s), bool) for s in leaves]
    idx = [i for i, f in enumerate(flags) if f]
    if scope == "global":
        flat = jnp.concatenate([jnp.ravel(leaves[i]).astype(jnp.float32) for i in idx])
        keep = _topk_flat(flat, _keep_count(density, flat.size, "the prunable leaves"))
        _scatter_back(keep, idx, leaves, out)
    elif scope == "per_layer":
        paths = leaf_paths(scores)
        for i in idx:
            flat = jnp.ravel(leaves[i]).astype(jnp.float32)
            keep = _topk_flat(flat, _keep_count(density, flat.size, paths[i]))
            out[i] = keep.reshape(jnp.shape(leaves[i]))
    else:
        raise ValueError(f"scope must be 'global' or 'per_layer', got {scope!r}")
    return jax.tree.unflatten(treedef, out)


def _scatter_back(keep: jax.Array, idx: Iterable[int], leaves: list, out: list) -> None:
    start = 0
    for i in idx:
        size = int(np.prod(jnp.shape(leaves[i])))
        out[i] = keep[start : start + size].reshape(jnp.shape(leaves[i]))
        start += size


def regrow_mask(
    mask: PyTree,
    scores: PyTree,
    fraction: float,
    prunable: PyTree,
    scope: str = "global",
) -> PyTree:
    """Revives the ``fraction`` of currently pruned entries with the highest scores.

    Exactly ``round(fraction · |P|)`` entries are revived, P being the pruned prunable entries
    (globally or per leaf, as ``scope`` says); ties go to the lower index. Kept entries stay kept.
    """
    if not 0.0 <= float(fraction) <= 1.0:
        raise ValueError(f"regrow fraction must be in [0, 1], got {fraction!r}")
    check_mask(scores, mask)
    m_leaves, treedef = jax.tree.flatten(mask)
    s_leaves = jax.tree.leaves(scores)
    flags = jax.tree.leaves(prunable)
    out = list(m_leaves)
    idx = [i for i, f in enumerate(flags) if f]
    if scope not in ("global", "per_layer"):
        raise ValueError(f"scope must be 'global' or 'per_layer', got {scope!r}")
    groups = [idx] if scope == "global" else [[i] for i in idx]
    for group in groups:
        m = jnp.concatenate([jnp.ravel(m_leaves[i]) for i in group])
        s = jnp.concatenate([jnp.ravel(s_leaves[i]).astype(jnp.float32) for i in group])
        k = int(round(float(fraction) * int(jnp.sum(~m))))
        grown = m | _topk_flat(s, k, candidates=~m) if k > 0 else m
        _scatter_back(grown, group, m_leaves, out)
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
