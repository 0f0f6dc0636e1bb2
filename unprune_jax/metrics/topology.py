"""Forgetting in the topology, judged by distributions of masks over seeds, with controls.

A model unlearned from D_f should be indistinguishable from models trained without D_f, across
the randomness of training. So the topology is judged on *sets* of masks: S masks trained on D
(the original side, seeds 0..S−1), S trained on D_r (the gold side, the same seeds: pair s shares
θ_0 and the data order), and every candidate as S masks, candidate s derived from original s.
One mask against one gold mask (IoU) drowns in seed noise, and a single mask's per-weight LLR
moves with any change of the mask, random ones included. Everything here works on bool units
(entries, or whole output filters with ``granularity='filter'``) and on one table of kept units
in common per layer (:func:`layer_gram`, a population count on packed bits), so the whole report
for S = 8 LeNet-300-100 masks takes well under a second (``benchmarks/bench_topology.py``).

* **Two-sample test** (:func:`two_sample_test`): the energy statistic between two sets, from one
  distance matrix, with a p-value from swapping the side labels within seed pairs (all
  2^(S−1) = 128 splits at S = 8, exactly; a seeded Monte Carlo sample with the +1 correction
  above ``permutations``) and the null's central interval. Same-seed pairs are left out of the
  cross term, so the statistic is unbiased however alike a seed's masks are and its null is
  centred at 0. :func:`lopo_auc` is the second statistic: the leave-one-pair-out AUC of the
  per-unit Bernoulli LLR classifier, each permuted split refitting the whole leave-one-pair-out
  fit (fast because the n units collapse to their distinct columns of 2S bits).
* **Distance travelled** (:func:`distance_travelled`): where a candidate set sits between the
  original side (0) and the gold side (1), per pair and as a ratio of means with a delta-method
  Student-t interval over the S pairs. Features f(M) = (⟨M, e_O⟩, ⟨M, e_G⟩) against the sides'
  keep frequencies without the candidate's pair, centred per layer (so f of the uniform mask is
  0 and a mask's layer densities do not enter), are written in the basis of the sides' own mean
  features: f̄_C = x·f̄_O + y·f̄_G, t = y / (x + y). Random swaps dilute a mask toward the
  uniform one, scaling x and y alike, so t stays; a mixture taking a fraction α of its entries
  from the gold side has t ≈ α; the basis is made of masks, not of estimated probabilities, so
  the sides' own masks sit at 0 and 1 whatever their dispersion.
* **Matched random control** (:func:`matched_controls`): original mask s with as many kept units
  turned off and pruned units turned on, per layer, as candidate s, chosen at random (whole
  filters for filter masks); :func:`beyond_control` is the candidate's distance travelled minus
  its control's, paired over the seeds, with its interval.
* **Data-quantity side** (:func:`quantity_comparison`): masks trained on D minus another subset
  of D_f's size; Δ = E(original, gold) − E(original, quantity side) with a null from swapping gold
  and quantity masks within seeds, and where the quantity side sits between the sides.
* :func:`topology_report` computes all of it in one pass; :func:`format_topology_table` prints it.

The default statistic is the energy statistic with the Hamming distance: (2/n)·mean_{s≠s'}
⟨X_s − Y_s, X_s' − Y_s'⟩, an unbiased estimate of twice the mean squared difference of the two
sets' keep probabilities, in the same currency as the distance travelled. Its validation on
synthetic masks with known truth (power, false positives, the distance travelled of swapped
masks, mixtures and sides of unequal dispersion; ``benchmarks/bench_topology.py --validate``) and
how to read a report are in ``docs/metrics.md``; ``tests/test_topology.py`` checks each property.
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special, stats

from ..masks import GRANULARITIES, _flat, _prunable_pairs, _unit_view, check_mask, leaf_paths
from ..registry import Registry

PyTree = Any

__all__ = [
    "DISTANCES", "flatten_masks", "layer_gram", "two_sample_test", "lopo_auc",
    "distance_travelled", "matched_controls", "beyond_control", "quantity_comparison",
    "topology_report", "format_topology_table", "synthetic_sides",
]

# --- masks as bits -------------------------------------------------------------------------------


def flatten_masks(masks, prunable: PyTree | None = None, *, granularity: str = "weight",
                  layers: Sequence[int] | None = None, allow_dense_filters: bool = False
                  ) -> tuple[np.ndarray, tuple[int, ...]]:
    """S masks as one bool array over their prunable units, and the units of each layer.

    Args:
        masks: a sequence of S mask pytrees (bool leaves, one structure), or an already flattened
            bool array of shape (S, n).
        prunable: the flags of the leaves compared (pytrees only; None: every leaf).
        granularity: ``'weight'`` (a unit is an entry) or ``'filter'`` (a unit is an output
            channel, the last axis of a kernel, kept if any of its entries is kept; as in
            ``masks.topk_mask``). A flat array is taken as units already.
        layers: for a flat array, the units per layer, summing to n (default: one layer). Mask
            pytrees give their own (one layer per prunable leaf).
        allow_dense_filters: with ``'filter'``, let dense kernels count output neurons as units.

    Returns:
        ``(bits, layers)``: bool (S, n) and a tuple of units per layer.

    Raises:
        ValueError: naming the mask and leaf that do not fit, a non-bool array, or layer sizes
            that do not add up to n.
    """
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
    if isinstance(masks, (np.ndarray, jax.Array)) and np.ndim(masks) == 2:
        bits = np.asarray(masks)
        if bits.dtype != np.bool_:
            raise ValueError(f"flattened masks must be a bool array (S, n), got dtype {bits.dtype}")
        layers = (bits.shape[1],) if layers is None else tuple(int(x) for x in layers)
        if sum(layers) != bits.shape[1] or min(layers) < 1:
            raise ValueError(f"layers {list(layers)} must be positive and add up to the "
                             f"{bits.shape[1]} units of the masks")
        return bits, layers
    if layers is not None:
        raise ValueError("layers is only for flattened arrays: mask pytrees give one layer per "
                         "prunable leaf")
    masks = list(masks)
    if not masks:
        raise ValueError("no masks given")
    ref = masks[0]
    check_mask(ref, ref)
    for i, m in enumerate(masks[1:], start=1):
        try:
            check_mask(ref, m)
        except ValueError as err:
            raise ValueError(f"mask {i} does not fit mask 0: {err}") from None
    leaves = _prunable_pairs(ref, prunable)
    if not leaves:
        raise ValueError(f"no prunable leaf among {leaf_paths(ref)}")
    if granularity == "weight":
        return (np.stack([_flat(m, prunable) for m in masks]).astype(bool),
                tuple(int(np.size(x)) for x in leaves))
    flags = [True] * len(jax.tree.leaves(ref)) if prunable is None else jax.tree.leaves(prunable)
    paths = [p for p, f in zip(leaf_paths(ref), flags) if f]

    def units(mask):
        return np.concatenate([np.asarray(_unit_view(leaf, p, "filter", allow_dense_filters))
                               for leaf, p in zip(_prunable_pairs(mask, prunable), paths)])

    return (np.stack([units(m) for m in masks]).astype(bool),
            tuple(int(np.shape(x)[-1]) for x in leaves))


def _unflatten(row: np.ndarray, template: PyTree, prunable: PyTree | None,
               granularity: str) -> PyTree:
    """The inverse of :func:`flatten_masks` for one mask: non-prunable leaves from ``template``,
    whole output channels for ``'filter'``."""
    leaves, treedef = jax.tree.flatten(template)
    flags = [True] * len(leaves) if prunable is None else jax.tree.leaves(prunable)
    out, start = [], 0
    for leaf, flag in zip(leaves, flags):
        if not flag:
            out.append(jnp.asarray(leaf))
            continue
        shape = np.shape(leaf)
        size = shape[-1] if granularity == "filter" else int(np.prod(shape))
        unit = row[start:start + size]
        start += size
        out.append(jnp.asarray(np.broadcast_to(unit, shape) if granularity == "filter"
                               else unit.reshape(shape)))
    return jax.tree.unflatten(treedef, out)


def _pack(bits: np.ndarray) -> np.ndarray:
    """(m, n) bool → (m, ⌈n/64⌉) uint64 bit rows (zero padded)."""
    packed = np.packbits(bits, axis=1)
    packed = np.pad(packed, ((0, 0), (0, -packed.shape[1] % 8)))
    return np.ascontiguousarray(packed).view(np.uint64)


_BYTE_BITS = np.array([bin(i).count("1") for i in range(256)], np.int64)


def _popcount(words: np.ndarray) -> np.ndarray:
    """Set bits per row of a uint64 array (..., W) → int64 (...)."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2
        return np.bitwise_count(words).sum(-1, dtype=np.int64)
    return _BYTE_BITS[words.view(np.uint8)].sum(-1)


def layer_gram(bits: np.ndarray, layers: Sequence[int]) -> np.ndarray:
    """Kept units in common, per layer, of every two masks: |M_i,l ∩ M_j,l|.

    Args:
        bits: bool (m, n) masks.
        layers: units per layer (summing to n).

    Returns:
        int64 (L, m, m); the diagonal holds each mask's kept units per layer. Computed on packed
        bits with a population count (64 units per machine word), so m = 100 LeNet-300-100 masks
        take tens of milliseconds.
    """
    m = bits.shape[0]
    gram = np.empty((len(layers), m, m), np.int64)
    bounds = np.cumsum([0, *layers])
    for layer, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        words = _pack(bits[:, a:b])
        for i in range(m):
            gram[layer, i, i:] = _popcount(words[i] & words[i:])
            gram[layer, i:, i] = gram[layer, i, i:]
    return gram


# --- distances and the energy statistic ----------------------------------------------------------

DISTANCES: Registry = Registry("mask distance")


def _union(inter):
    c = np.diag(inter)
    return c[:, None] + c[None, :] - inter


DISTANCES.register("hamming", "fraction of units where two masks differ; energy distance with "
                   "it tests the mean keep probabilities only",
                   lambda inter, n: (_union(inter) - inter) / n)
DISTANCES.register("jaccard", "1 − IoU of the kept sets (0 when both are empty)",
                   lambda inter, n: 1.0 - np.divide(inter, _union(inter), where=_union(inter) > 0,
                                                    out=np.ones(inter.shape)))
DISTANCES.register("euclidean", "√(fraction of units that differ): the classic energy distance, "
                   "sensitive to the whole distribution",
                   lambda inter, n: np.sqrt((_union(inter) - inter) / n))


def _energy(d: np.ndarray, za: np.ndarray, zb: np.ndarray, paired: bool) -> np.ndarray:
    """Energy statistic 2·E d(A, B) − E d(A, A') − E d(B, B') for each row of side indicators.

    ``za``, ``zb`` (P, m) are 0/1 indicators of two disjoint sides of at least two masks each;
    means within a side skip a mask with itself (U-statistics). ``paired``: the sides hold one
    mask per seed each and ``d`` has zeros between masks of one seed (:func:`_across_seeds`), so
    the cross mean skips same-seed pairs too: then every term compares independent masks and the
    statistic is unbiased for the energy distance of the two distributions, however alike the
    masks of one seed are.
    """
    na, nb = za.sum(1), zb.sum(1)
    da, db = za @ d, zb @ d
    cross = na * nb - (na if paired else 0)
    return (2 * (da * zb).sum(1) / cross - (da * za).sum(1) / (na * (na - 1))
            - (db * zb).sum(1) / (nb * (nb - 1)))


def _across_seeds(d: np.ndarray, s: int) -> np.ndarray:
    """``d`` with zeros between masks of one seed (rows come in blocks of the S seeds)."""
    seed = np.arange(len(d)) % s
    return np.where(seed[:, None] == seed[None, :], 0.0, d)


def _swaps(s: int, permutations: int, rng: np.random.Generator, symmetric: bool
           ) -> tuple[np.ndarray, bool]:
    """Within-pair swap patterns (P, s) bool; row 0 is the identity when exact.

    All 2^s patterns (2^(s−1) for a statistic unchanged by swapping every pair) when that many
    are at most ``permutations``, else ``permutations`` random ones.
    """
    k = s - 1 if symmetric else s
    if 2 ** k <= permutations:
        pat = (np.arange(2 ** k)[:, None] >> np.arange(k)) & 1
        if symmetric:
            pat = np.concatenate([np.zeros((len(pat), 1), pat.dtype), pat], axis=1)
        return pat.astype(bool), True
    return rng.random((permutations, s)) < 0.5, False


def _null_summary(observed: float, null: np.ndarray, exact: bool, confidence: float) -> dict:
    """One-sided p-value (large = extreme) and the central null interval of a permutation test.

    Exact enumeration counts the observed split itself; a Monte Carlo null adds it once
    ((hits + 1) / (draws + 1)), so p is never 0.
    """
    hits = int(np.sum(null >= observed - 1e-9 * max(1.0, abs(observed))))
    p = hits / len(null) if exact else (hits + 1) / (len(null) + 1)
    lo, hi = np.quantile(null, [(1 - confidence) / 2, (1 + confidence) / 2])
    return {"p_value": float(p), "null_interval": [float(lo), float(hi)],
            "null_mean": float(np.mean(null)), "null_sd": float(np.std(null)),
            "splits": int(len(null)), "exact": bool(exact)}


def _rng(seed, label: str) -> np.random.Generator:
    """One generator per (seed, label), so adding a test or a candidate changes no other one."""
    seed = list(seed) if isinstance(seed, (tuple, list)) else [int(seed)]
    return np.random.default_rng([*seed, zlib.crc32(label.encode())])


def _energy_test(d: np.ndarray, ix: np.ndarray, iy: np.ndarray, *, paired: bool,
                 permutations: int, rng: np.random.Generator, confidence: float) -> dict:
    """Energy two-sample test of rows ``ix`` vs ``iy`` of the distance matrix ``d``."""
    idx = np.concatenate([ix, iy])
    sub = d[np.ix_(idx, idx)]
    nx, m = len(ix), len(idx)
    obs_a = np.zeros((1, m))
    obs_a[0, :nx] = 1
    if paired:
        sub = _across_seeds(sub, nx)
    observed = float(_energy(sub, obs_a, 1 - obs_a, paired)[0])
    if paired:
        sw, exact = _swaps(nx, permutations, rng, symmetric=True)
        za = np.concatenate([~sw, sw], axis=1).astype(float)
    else:
        exact = math.comb(m, nx) <= permutations
        if exact:
            combos = np.array(list(itertools.combinations(range(m), nx)))
        else:
            combos = np.argsort(rng.random((permutations, m)), axis=1)[:, :nx]
        za = np.zeros((len(combos), m))
        np.put_along_axis(za, combos, 1.0, axis=1)
    null = _energy(sub, za, 1 - za, paired)
    return {"value": observed, "paired": paired, **_null_summary(observed, null, exact,
                                                                  confidence)}


def _check_sets(name_x: str, x: np.ndarray, name_y: str, y: np.ndarray, paired: bool) -> None:
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"{name_x} masks have {x.shape[1]} units, {name_y} masks "
                         f"{y.shape[1]}")
    if paired and len(x) != len(y):
        raise ValueError(f"paired sets need one mask per seed on each side: {len(x)} {name_x} "
                         f"masks, {len(y)} {name_y} masks")
    if min(len(x), len(y)) < 2:
        raise ValueError(f"a test between sets of masks needs at least 2 masks a side, got "
                         f"{len(x)} {name_x} and {len(y)} {name_y}")


def two_sample_test(x, y, prunable: PyTree | None = None, *, distance: str = "hamming",
                    paired: bool = True, granularity: str = "weight", permutations: int = 10_000,
                    seed: int = 0, confidence: float = 0.95, layers: Sequence[int] | None = None,
                    allow_dense_filters: bool = False) -> dict:
    """Energy-distance test: are two sets of masks drawn from the same distribution?

    The statistic is E = 2·mean d(X_i, Y_j) − mean_{i≠j} d(X_i, X_j) − mean_{i≠j} d(Y_i, Y_j),
    with d a :data:`DISTANCES` entry, computed from one distance matrix of all masks; its null
    distribution comes from permuting the side labels. ``paired``: X_s and Y_s share a seed
    (θ_0 and data order), so labels are swapped within pairs only (2^(S−1) distinct splits,
    enumerated exactly up to ``permutations``, else a seeded Monte Carlo sample); otherwise any
    relabelling of the pooled masks.

    ``paired`` also leaves same-seed pairs out of the cross mean, so every term compares masks of
    different seeds: E is then unbiased for the energy distance of the two distributions however
    alike the masks of one seed are, and its null is centred at 0. With ``'hamming'`` (d = the
    squared Euclidean distance of 0/1 vectors over n), the paired E = (2/n)·mean_{s≠s'}
    ⟨X_s − Y_s, X_s' − Y_s'⟩, an unbiased estimate of 2‖p_X − p_Y‖²/n, twice the mean squared
    difference of the two sides' keep probabilities, blind to any other difference (unpaired:
    E = 2(‖x̄ − ȳ‖² − tr Σ̂_X/S_X − tr Σ̂_Y/S_Y)/n, the same estimand).

    Args:
        x, y: masks (see :func:`flatten_masks`): S pytrees each, or bool arrays (S, n).
        prunable, granularity, layers, allow_dense_filters: as in :func:`flatten_masks`.
        distance: ``'hamming'``, ``'jaccard'`` or ``'euclidean'``.
        paired: swap labels within seed pairs only.
        permutations: most splits enumerated exactly; above it, that many random splits.
        seed: the Monte Carlo splits' seed.
        confidence: coverage of the null interval.

    Returns:
        ``{'value', 'p_value', 'null_interval', 'null_mean', 'null_sd', 'splits', 'exact',
        'paired', 'distance'}``. ``p_value`` is one-sided (large E = different); with exact
        enumeration it is at least 1/splits (1/128 at S = 8 pairs, 1/4 at S = 3).
    """
    bx, _ = flatten_masks(x, prunable, granularity=granularity, layers=layers,
                           allow_dense_filters=allow_dense_filters)
    by, _ = flatten_masks(y, prunable, granularity=granularity, layers=layers,
                          allow_dense_filters=allow_dense_filters)
    _check_sets("first", bx, "second", by, paired)
    bits = np.concatenate([bx, by])
    d = DISTANCES.get(distance)(layer_gram(bits, (bits.shape[1],))[0], bits.shape[1])
    ix, iy = np.arange(len(bx)), len(bx) + np.arange(len(by))
    out = _energy_test(d, ix, iy, paired=paired, permutations=permutations,
                       rng=_rng(seed, "two_sample_test"), confidence=confidence)
    return {**out, "distance": distance}


# --- the leave-one-pair-out LLR classifier ------------------------------------------------------


def _patterns(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct columns of ``bits`` (r, n) and how often each occurs: (r, U) bool, (U,).

    Every leave-one-pair-out score, under every relabelling, depends on an entry only through
    its column of r = 2S bits, so the n entries collapse to U ≤ min(n, 2^r) patterns.
    """
    r, n = bits.shape
    packed = np.packbits(bits, axis=0)  # (⌈r/8⌉, n)
    if len(packed) <= 8:
        codes = np.zeros(n, np.uint64)
        for i, row in enumerate(packed):
            codes |= row.astype(np.uint64) << np.uint64(8 * i)
        uniq, counts = np.unique(codes, return_counts=True)
        ubytes = np.stack([(uniq >> np.uint64(8 * i)).astype(np.uint8)
                           for i in range(len(packed))])
    else:
        uniq, counts = np.unique(packed.T, axis=0, return_counts=True)
        ubytes = uniq.T
    return np.unpackbits(ubytes, axis=0, count=r).astype(bool), counts


def _lopo_llr_scores(pat: np.ndarray, weight: np.ndarray, swaps: np.ndarray, smoothing: float
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-pair-out LLR scores of both sides under each within-pair swap pattern.

    ``pat`` (2S, U): rows 0..S−1 side X, S..2S−1 side Y, over U column patterns occurring
    ``weight`` times. For swap pattern σ, side A_s = Y_s if σ_s else X_s, B_s the other. Pair s
    is scored with keep probabilities (k + a) / (S − 1 + 2a) from the other S − 1 pairs:
    LLR(M) = Σ_j M_j log(p_B/p_A) + (1 − M_j) log((1 − p_B)/(1 − p_A)).

    Returns:
        ``(score_a, score_b)``, each (P, S): the scores of A_s and of B_s.
    """
    s = pat.shape[0] // 2
    x, y = pat[:s].astype(np.int16), pat[s:].astype(np.int16)
    rest = (x.sum(0) + y.sum(0))[None] - x - y  # both sides' counts without pair s
    k = np.arange(s)
    log_keep, log_drop = np.log(k + smoothing), np.log(s - 1 - k + smoothing)
    score_a, score_b = [], []
    step = max(1, 2 ** 21 // max(1, s * pat.shape[1]))
    for lo in range(0, len(swaps), step):
        sw = swaps[lo:lo + step, :, None]
        a = np.where(sw, y, x)
        b = (x + y) - a
        ka = a.sum(1, keepdims=True) - a
        kb = rest[None] - ka
        d_keep = log_keep[kb] - log_keep[ka]
        d_drop = log_drop[kb] - log_drop[ka]
        base = d_drop @ weight
        gain = (d_keep - d_drop) * weight
        score_a.append(base + (a * gain).sum(-1))
        score_b.append(base + (b * gain).sum(-1))
    return np.concatenate(score_a), np.concatenate(score_b)


def _auc_rows(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """Per row: P(pos > neg) + ½ P(pos = neg) over all pairs, (P, S) × (P, S) → (P,).

    Scores within 1e-9 (relative) of each other tie: sums over the same entries in another
    order must not break a tie one way or the other (the AUC stays symmetric in the sides).
    """
    p, n = pos[:, :, None], neg[:, None, :]
    tol = 1e-9 * np.maximum(1.0, np.maximum(np.abs(p), np.abs(n)))
    return ((p > n + tol) + 0.5 * (np.abs(p - n) <= tol)).mean((1, 2))


def lopo_auc(x, y, prunable: PyTree | None = None, *, smoothing: float = 1.0,
             granularity: str = "weight", permutations: int = 1000, seed: int = 0,
             confidence: float = 0.95, layers: Sequence[int] | None = None,
             allow_dense_filters: bool = False) -> dict:
    """Leave-one-pair-out AUC of the per-unit LLR classifier, with its permutation null.

    Pair s (X_s, Y_s) is scored by the Bernoulli log-likelihood ratio, Y side over X side, of
    keep probabilities estimated from the other S − 1 pairs (Laplace-smoothed with
    ``smoothing``); the AUC is P(score of a Y mask > score of an X mask). Its null distribution
    comes from swapping the labels within pairs (all 2^(S−1) distinct splits up to
    ``permutations``; the AUC is unchanged by swapping every pair), each split re-running the
    whole leave-one-pair-out fit.

    Args:
        x, y: S masks a side, pair s at position s (see :func:`flatten_masks`).
        smoothing: pseudo-count a of the keep probabilities (k + a) / (S − 1 + 2a).
        permutations: most splits enumerated exactly (S ≤ 10 pairs), else that many random
            ones; each split costs a full leave-one-pair-out fit, hence the lower default.
        seed, confidence, prunable, granularity, layers, allow_dense_filters: as in
            :func:`two_sample_test`.

    Returns:
        ``{'auc', 'p_value', 'null_interval', 'null_mean', 'null_sd', 'splits', 'exact',
        'x_scores', 'y_scores'}``; ``p_value`` is one-sided (AUC at least this high by chance).
    """
    if smoothing <= 0:
        raise ValueError(f"smoothing must be > 0 (log of a zero probability), got {smoothing!r}")
    bx, _ = flatten_masks(x, prunable, granularity=granularity, layers=layers,
                          allow_dense_filters=allow_dense_filters)
    by, _ = flatten_masks(y, prunable, granularity=granularity, layers=layers,
                          allow_dense_filters=allow_dense_filters)
    _check_sets("first", bx, "second", by, paired=True)
    return _lopo_auc_bits(bx, by, smoothing, permutations, _rng(seed, "lopo_auc"), confidence)


def _lopo_auc_bits(bx, by, smoothing, permutations, rng, confidence) -> dict:
    s = len(bx)
    pat, weight = _patterns(np.concatenate([bx, by]))
    weight = weight.astype(np.float64)
    identity = np.zeros((1, s), bool)
    obs_a, obs_b = _lopo_llr_scores(pat, weight, identity, smoothing)
    observed = float(_auc_rows(obs_b, obs_a)[0])
    sw, exact = _swaps(s, permutations, rng, symmetric=True)
    score_a, score_b = _lopo_llr_scores(pat, weight, sw, smoothing)
    null = _auc_rows(score_b, score_a)
    return {"auc": observed, **_null_summary(observed, null, exact, confidence),
            "x_scores": obs_a[0].tolist(), "y_scores": obs_b[0].tolist()}


# --- distance travelled ---------------------------------------------------------------------------


def _side_features(gram: np.ndarray, sizes: np.ndarray, io: np.ndarray, ig: np.ndarray,
                   rows: np.ndarray) -> np.ndarray:
    """f(M_s; s) = (⟨M_s, e_O^s⟩, ⟨M_s, e_G^s⟩) for the masks ``rows`` (S,), → (S, 2).

    e_X^s is side X's keep frequency over the pairs other than s, centred per layer (its layer
    mean subtracted), so a mask's density per layer does not enter: f(uniform mask) = 0.
    """
    s = len(io)
    counts = np.einsum("lii->li", gram)  # (L, m) kept units per layer
    out = []
    for side in (io, ig):
        g = gram[:, rows][:, :, side]  # (L, S, S): ⟨M_s, X_s'⟩ per layer
        dots = (g.sum(2) - np.einsum("lss->ls", g)) / (s - 1)
        c = counts[:, side]
        means = (c.sum(1, keepdims=True) - c) / ((s - 1) * sizes[:, None])
        out.append((dots - counts[:, rows] * means).sum(0))
    return np.stack(out, axis=1)


class _Sides:
    """The features of both sides' own masks, f(O_s; s) and f(G_s; s), from a layer Gram."""

    def __init__(self, gram: np.ndarray, layers: Sequence[int], io: np.ndarray, ig: np.ndarray):
        self.gram, self.sizes, self.io, self.ig = gram, np.asarray(layers, float), io, ig
        self.f_o, self.f_g = self.features(io), self.features(ig)

    def features(self, rows: np.ndarray) -> np.ndarray:
        return _side_features(self.gram, self.sizes, self.io, self.ig, rows)


def _position(sides: _Sides, f_c: np.ndarray) -> dict:
    """Ratio-of-means position of the masks with features ``f_c`` and its per-pair influence.

    With the calibration C = [f̄_O f̄_G], (x̂, ŷ) = C⁻¹ f̄_C and t̂ = ŷ / (x̂ + ŷ). t̂ is a smooth
    function of the means over pairs of (f_O, f_G, f_C), so its delta-method influence value of
    pair s is ∇t̂ · (its deviation): δ(x, y)_s = C⁻¹[(f_C,s − f̄_C) − x̂ (f_O,s − f̄_O) −
    ŷ (f_G,s − f̄_G)], ψ_s = (x̂ δy_s − ŷ δx_s) / (x̂ + ŷ)². The calibration's own noise is
    thereby in the interval (an unchanged original has ψ = 0: it sits at 0 exactly).
    """
    cal = np.stack([sides.f_o.mean(0), sides.f_g.mean(0)], axis=1)
    s = len(f_c)
    if not np.all(np.isfinite(cal)) or abs(np.linalg.det(cal)) == 0:
        nan = np.full(s, np.nan)
        return {"t": math.nan, "per_pair": nan, "psi_t": nan, "structure": math.nan,
                "psi_structure": nan}
    inv = np.linalg.inv(cal)
    x, y = inv @ f_c.mean(0)
    dev = ((f_c - f_c.mean(0)) - x * (sides.f_o - sides.f_o.mean(0))
           - y * (sides.f_g - sides.f_g.mean(0))) @ inv.T
    xy = f_c @ inv.T
    with np.errstate(divide="ignore", invalid="ignore"):
        per_pair = xy[:, 1] / xy.sum(1)
    return {"t": float(y / (x + y)), "per_pair": per_pair,
            "psi_t": (x * dev[:, 1] - y * dev[:, 0]) / (x + y) ** 2,
            "structure": float(x + y), "psi_structure": dev.sum(1)}


def _t_interval(estimate: float, influence: np.ndarray, confidence: float) -> list[float]:
    """estimate ± t_{S−1} · sd(influence) / √S: a linearised Student-t interval over S pairs."""
    s = len(influence)
    if s < 2 or not math.isfinite(estimate) or not np.all(np.isfinite(influence)):
        return [math.nan, math.nan]
    half = stats.t.ppf((1 + confidence) / 2, s - 1) * np.std(influence, ddof=1) / math.sqrt(s)
    return [float(estimate - half), float(estimate + half)]


def _travelled(sides: _Sides, rows: np.ndarray, confidence: float) -> dict:
    pos = _position(sides, sides.features(rows))
    return {"mean": pos["t"], "ci": _t_interval(pos["t"], pos["psi_t"], confidence),
            "per_pair": [float(v) for v in pos["per_pair"]],
            "structure": pos["structure"],
            "structure_ci": _t_interval(pos["structure"], pos["psi_structure"], confidence)}


def _beyond(sides: _Sides, rows_c: np.ndarray, rows_k: np.ndarray, confidence: float) -> dict:
    c = _position(sides, sides.features(rows_c))
    k = _position(sides, sides.features(rows_k))
    est = c["t"] - k["t"]
    return {"mean": est, "ci": _t_interval(est, c["psi_t"] - k["psi_t"], confidence),
            "per_pair": [float(v) for v in c["per_pair"] - k["per_pair"]]}


def _flatten_sets(named: dict, prunable, granularity, layers, allow_dense_filters
                  ) -> tuple[dict, tuple[int, ...]]:
    """``{label: masks}`` → ``{label: bool (S, n)}`` and the layers, checked as seed-paired sets
    (the first entry is the reference)."""
    flat, lay = {}, None
    for label, masks in named.items():
        flat[label], lay_m = flatten_masks(masks, prunable, granularity=granularity,
                                           layers=layers, allow_dense_filters=allow_dense_filters)
        lay = lay or lay_m
        first = next(iter(flat))
        _check_sets(first, flat[first], label, flat[label], paired=True)
    return flat, lay


def _stack(flat: dict, layers) -> tuple[dict, np.ndarray]:
    """Stacks S-mask sets in order: ``{label: rows}`` and their layer Gram (L, m, m)."""
    s = len(next(iter(flat.values())))
    rows = {label: i * s + np.arange(s) for i, label in enumerate(flat)}
    return rows, layer_gram(np.concatenate(list(flat.values())), layers)


def distance_travelled(original, gold, candidate, prunable: PyTree | None = None, *,
                       granularity: str = "weight", confidence: float = 0.95,
                       layers: Sequence[int] | None = None,
                       allow_dense_filters: bool = False) -> dict:
    """Where a candidate set sits between the original side (0) and the gold side (1).

    Candidate s must come from original mask s. For each pair s, the two sides' keep
    frequencies over the *other* S − 1 pairs, centred per layer, give two directions e_O^s and
    e_G^s; a mask's features are f(M) = (⟨M, e_O^s⟩, ⟨M, e_G^s⟩). Because the mask scored is
    independent of the frequencies, E f(M) depends on E M only, and is linear in it. The
    candidate's features are written in the basis of the sides' own mean features,
    f̄_C = x·f̄_O + y·f̄_G, and the position is t = y / (x + y):

    * swapping entries at random (kept ↔ pruned, counts per layer fixed) shrinks E C − d
      toward the uniform mask: x and y shrink alike, the position stays (0 for an original);
    * a mixture taking a fraction α of its entries from the gold side has x ≈ 1 − α, y ≈ α;
    * the sides' own masks sit at 0 and 1 on average, whatever their dispersion (the
      calibration uses the masks, not the estimated probabilities, so estimation noise in the
      frequencies does not bias it).

    x + y (``structure``) is how much of the sides' structure the candidate keeps: 1 for a mask
    like the sides', 0 for a uniform random one (then the position is undefined and its
    interval wide).

    Args:
        original, gold, candidate: S masks each, pair s at position s (see
            :func:`flatten_masks`).
        confidence: coverage of the intervals.

    Returns:
        ``{'mean', 'ci', 'per_pair', 'structure', 'structure_ci'}``: ``mean`` is the
        ratio-of-means position Σy / Σ(x + y) (more stable than the mean of per-pair ratios when
        a pair keeps little structure); ``ci`` its linearised (delta-method) Student-t interval
        over the S pairs, counting the noise of the candidate's and of both sides' features;
        ``per_pair`` y_s / (x_s + y_s).
    """
    flat, lay = _flatten_sets({"original": original, "gold": gold, "candidate": candidate},
                              prunable, granularity, layers, allow_dense_filters)
    rows, gram = _stack(flat, lay)
    return _travelled(_Sides(gram, lay, rows["original"], rows["gold"]), rows["candidate"],
                      confidence)


def beyond_control(original, gold, candidate, control, prunable: PyTree | None = None, *,
                   granularity: str = "weight", confidence: float = 0.95,
                   layers: Sequence[int] | None = None,
                   allow_dense_filters: bool = False) -> dict:
    """A candidate's distance travelled minus its control's, paired over the S seeds.

    Args:
        original, gold, candidate, control: S masks each, pair s at position s; candidate s and
            control s both derived from original s (see :func:`matched_controls`).

    Returns:
        ``{'mean', 'ci', 'per_pair'}``: the difference of the two :func:`distance_travelled`
        positions; its linearised (delta-method) Student-t interval over the S pairs, from the
        per-pair differences of the two influence values (the pairing and the shared
        calibration cancel where they can); the per-pair differences of y / (x + y).
    """
    flat, lay = _flatten_sets({"original": original, "gold": gold, "candidate": candidate,
                               "control": control}, prunable, granularity, layers,
                              allow_dense_filters)
    rows, gram = _stack(flat, lay)
    return _beyond(_Sides(gram, lay, rows["original"], rows["gold"]), rows["candidate"],
                   rows["control"], confidence)


# --- matched random controls ---------------------------------------------------------------------


def _control_bits(candidate: np.ndarray, original: np.ndarray, layers: Sequence[int],
                  rng: np.random.Generator) -> np.ndarray:
    """``original`` with as many units turned off and on per layer as ``candidate`` has, at
    random."""
    out = original.copy()
    start = 0
    for size in layers:
        o, c = original[start:start + size], candidate[start:start + size]
        kept, pruned = np.flatnonzero(o) + start, np.flatnonzero(~o) + start
        out[rng.choice(kept, int(np.sum(o & ~c)), replace=False)] = False
        out[rng.choice(pruned, int(np.sum(~o & c)), replace=False)] = True
        start += size
    return out


def matched_controls(candidates, originals, prunable: PyTree | None = None, *,
                     granularity: str = "weight", seed: int | Sequence[int] = 0,
                     layers: Sequence[int] | None = None, allow_dense_filters: bool = False):
    """A random control for each candidate: the same change of its original, at random.

    For pair s and each layer, the control starts from original mask s and turns off as many
    of its kept units, and turns on as many of its pruned units, as candidate s did, chosen
    uniformly at random (whole output filters with ``granularity='filter'``). Densities per layer
    and the amount of change match the candidate's exactly; only the choice is random.

    Args:
        candidates, originals: S masks each, candidate s derived from original s (pytrees or
            bool arrays (S, n), see :func:`flatten_masks`).
        seed: an int or a sequence of ints; pair s draws from ``default_rng([*seed, s])``.

    Returns:
        S control mask pytrees shaped like the originals (non-prunable leaves copied from them),
        or a bool array (S, n) when the inputs were arrays.
    """
    bc, lay = flatten_masks(candidates, prunable, granularity=granularity, layers=layers,
                            allow_dense_filters=allow_dense_filters)
    bo, _ = flatten_masks(originals, prunable, granularity=granularity, layers=layers,
                          allow_dense_filters=allow_dense_filters)
    _check_sets("candidate", bc, "original", bo, paired=True)
    ctrl = _controls(bc, bo, lay, seed)
    if isinstance(originals, (np.ndarray, jax.Array)) and np.ndim(originals) == 2:
        return ctrl
    return [_unflatten(row, tmpl, prunable, granularity) for row, tmpl in zip(ctrl, originals)]


def _controls(bc, bo, layers, seed) -> np.ndarray:
    seed = list(seed) if isinstance(seed, (tuple, list)) else [int(seed)]
    return np.stack([_control_bits(c, o, layers, np.random.default_rng([*seed, s]))
                     for s, (c, o) in enumerate(zip(bc, bo))])


# --- the data-quantity control side ---------------------------------------------------------------


def _quantity_test(d, io, ig, iq, permutations, rng, confidence) -> dict:
    """Δ = E(O, G) − E(O, Q) (paired energies), null by swapping G_s ↔ Q_s within seeds."""
    s = len(io)
    d = _across_seeds(d[np.ix_(*[np.concatenate([io, ig, iq])] * 2)], s)
    io, ig, iq = np.arange(s), s + np.arange(s), 2 * s + np.arange(s)
    m = d.shape[0]

    def delta(sw):
        zo, zg, zq = (np.zeros((len(sw), m)) for _ in range(3))
        zo[:, io] = 1
        zg[:, ig], zg[:, iq] = ~sw, sw
        zq[:, iq], zq[:, ig] = ~sw, sw
        return _energy(d, zo, zg, True), _energy(d, zo, zq, True)

    e_og, e_oq = delta(np.zeros((1, len(io)), bool))
    observed = float(e_og[0] - e_oq[0])
    sw, exact = _swaps(len(io), permutations, rng, symmetric=False)
    a, b = delta(sw)
    return {"original_vs_gold": float(e_og[0]), "original_vs_quantity": float(e_oq[0]),
            "difference": observed, **_null_summary(observed, a - b, exact, confidence)}


def quantity_comparison(original, gold, quantity, prunable: PyTree | None = None, *,
                        distance: str = "hamming", granularity: str = "weight",
                        permutations: int = 10_000, seed: int = 0, confidence: float = 0.95,
                        layers: Sequence[int] | None = None,
                        allow_dense_filters: bool = False) -> dict:
    """Does the gold side differ from the original more than a side that only saw less data?

    The quantity side Q is trained on D minus a different random subset of D_f's size, seed s
    at position s like the other sides. Δ = E(O, G) − E(O, Q) (energy statistics of
    :func:`two_sample_test`); its null, "G and Q are exchangeable", swaps G_s and Q_s within
    each seed (all 2^S patterns up to ``permutations``, else a seeded sample). Δ > 0 with a small
    p: removing D_f moved the masks more than removing as much other data.

    Returns:
        ``{'original_vs_gold', 'original_vs_quantity', 'difference', 'p_value',
        'null_interval', 'null_mean', 'null_sd', 'splits', 'exact', 'quantity_position'}``;
        ``quantity_position`` is :func:`distance_travelled` of Q (0: like the original side,
        1: as far as gold).
    """
    flat, lay = _flatten_sets({"original": original, "gold": gold, "quantity side": quantity},
                              prunable, granularity, layers, allow_dense_filters)
    rows, gram = _stack(flat, lay)
    d = DISTANCES.get(distance)(gram.sum(0), sum(lay))
    return _quantity(d, rows, _Sides(gram, lay, rows["original"], rows["gold"]), permutations,
                     _rng(seed, "quantity"), confidence)


def _quantity(d, rows, sides, permutations, rng, confidence) -> dict:
    out = _quantity_test(d, rows["original"], rows["gold"], rows["quantity side"], permutations,
                         rng, confidence)
    return {**out, "quantity_position": _travelled(sides, rows["quantity side"], confidence)}


# --- the report ---------------------------------------------------------------------------------


def topology_report(original_masks, gold_masks, prunable: PyTree | None = None,
                    candidates: dict | None = None, controls: dict | None = None,
                    quantity_side=None, *, granularity: str = "weight",
                    distance: str = "hamming", seed: int = 0, permutations: int = 10_000,
                    auc_permutations: int = 1000, confidence: float = 0.95, smoothing: float = 1.0,
                    layers: Sequence[int] | None = None,
                    allow_dense_filters: bool = False) -> dict:
    """The whole topology test: the sides, every candidate, its matched control, the quantity side.

    Args:
        original_masks: S masks trained on D (seed s at position s): pytrees or a bool (S, n).
        gold_masks: S masks trained on D_r, the same seeds in the same order.
        prunable: flags of the leaves compared (pytrees; None: every leaf).
        candidates: ``{name: S masks}``, candidate s derived from original mask s.
        controls: ``{name: S masks}`` to use as a candidate's control; a candidate without one
            gets :func:`matched_controls` (seeded by ``seed`` and its name).
        quantity_side: S masks trained on D minus another subset of D_f's size, or None.
        granularity, layers, allow_dense_filters: see :func:`flatten_masks`.
        distance: the energy test's distance (:data:`DISTANCES`).
        seed: seeds the controls and any Monte Carlo permutations.
        permutations: most label splits enumerated exactly (S = 8 pairs: 128 or 256 splits).
        auc_permutations: the same for the LOPO LLR AUC (see :func:`lopo_auc`).
        confidence: coverage of every interval.
        smoothing: pseudo-count of the LOPO LLR classifier.

    Returns:
        A JSON-serialisable dict (read in ``docs/metrics.md``): ``seeds``, ``units``,
        ``layers`` and the settings; ``sides``: ``{'test'`` (original vs gold: the keys of
        :func:`two_sample_test`), ``'auc'`` (:func:`lopo_auc`, the sides' scores included),
        ``'quantity'`` (:func:`quantity_comparison`, or None)``}``; ``candidates``:
        ``{name: {'vs_gold', 'vs_original'`` (tests),
        ``'changed'`` (mean fraction of units that differ from the original mask of the same
        seed), ``'travelled'`` (:func:`distance_travelled`), ``'control': {'source'`` ('given' or
        'matched random swaps'), ``'vs_gold', 'vs_original', 'changed', 'travelled'}``,
        ``'beyond_control'`` (:func:`beyond_control`)``}}``.
    """
    candidates, controls = dict(candidates or {}), dict(controls or {})
    unknown = sorted(set(controls) - set(candidates))
    if unknown:
        raise ValueError(f"controls {unknown} name no candidate; candidates: "
                         f"{sorted(candidates)}")
    named = {"original": original_masks, "gold": gold_masks}
    for name, masks in candidates.items():
        named[f"candidate {name!r}"] = masks
        if name in controls:
            named[f"control of {name!r}"] = controls[name]
    if quantity_side is not None:
        named["quantity side"] = quantity_side
    flat, lay = _flatten_sets(named, prunable, granularity, layers, allow_dense_filters)
    sources = {}
    for name in candidates:
        key = f"control of {name!r}"
        sources[name] = "given" if key in flat else "matched random swaps"
        if key not in flat:
            flat[key] = _controls(flat[f"candidate {name!r}"], flat["original"], lay,
                                  (seed, zlib.crc32(name.encode())))
    rows, gram = _stack(flat, lay)
    sides = _Sides(gram, lay, rows["original"], rows["gold"])
    inter = gram.sum(0)
    n = int(sum(lay))
    d = DISTANCES.get(distance)(inter, n)
    io, ig = rows["original"], rows["gold"]

    def test(ix, iy, label):
        return _energy_test(d, ix, iy, paired=True, permutations=permutations,
                            rng=_rng(seed, label), confidence=confidence)

    def changed(rc):
        return float(np.mean((inter[rc, rc] + inter[io, io] - 2 * inter[rc, io]) / n))

    out_sides = {
        "test": test(io, ig, "sides"),
        "auc": _lopo_auc_bits(flat["original"], flat["gold"], smoothing, auc_permutations,
                              _rng(seed, "lopo_auc"), confidence),
        "quantity": None if quantity_side is None else
        _quantity(d, rows, sides, permutations, _rng(seed, "quantity"), confidence),
    }
    out = {}
    for name in candidates:
        ic, ik = rows[f"candidate {name!r}"], rows[f"control of {name!r}"]
        out[name] = {
            "vs_gold": test(ic, ig, f"{name}/gold"),
            "vs_original": test(io, ic, f"{name}/original"),
            "changed": changed(ic),
            "travelled": _travelled(sides, ic, confidence),
            "control": {"source": sources[name],
                        "vs_gold": test(ik, ig, f"{name}/control/gold"),
                        "vs_original": test(io, ik, f"{name}/control/original"),
                        "changed": changed(ik),
                        "travelled": _travelled(sides, ik, confidence)},
            "beyond_control": _beyond(sides, ic, ik, confidence),
        }
    return {"seeds": len(io), "units": n, "layers": [int(x) for x in lay],
            "granularity": granularity, "distance": distance, "permutations": permutations,
            "confidence": confidence, "seed": seed, "sides": out_sides, "candidates": out}


def _num(v: float, digits: int = 3) -> str:
    return "—" if v is None or not math.isfinite(v) else f"{v:+.{digits}f}"


def _ci(entry: dict, digits: int = 2) -> str:
    lo, hi = entry["ci"]
    return f"{_num(entry['mean'], digits)} [{_num(lo, digits)}, {_num(hi, digits)}]"


def _test(t: dict) -> str:
    lo, hi = t["null_interval"]
    return f"{t['value']:.2e} (p {t['p_value']:.3f}; null {lo:.1e}…{hi:.1e})"


def format_topology_table(report: dict) -> str:
    """A markdown summary of :func:`topology_report`: the sides' lines, then one row per candidate.

    Columns: how far the candidate set is from the gold set and from the original set (energy
    statistic, p-value, central null interval), the fraction of units it changed, the distance it
    travelled from the original side (0) to the gold side (1) with its interval, the same for its
    random control, and the difference.
    """
    s, sides = report["seeds"], report["sides"]
    pct = int(round(100 * report["confidence"]))
    t, a = sides["test"], sides["auc"]
    lines = [
        f"Topology test over {s} seed pairs ({report['units']:,} {report['granularity']} units, "
        f"energy distance with the {report['distance']} distance; p-values from "
        f"{t['splits']} {'' if t['exact'] else 'random '}splits of the side labels within "
        f"pairs; intervals {pct}%).",
        "",
        f"- original vs gold side: energy {_test(t)}",
        f"- leave-one-pair-out LLR classifier: AUC {a['auc']:.2f} (p {a['p_value']:.3f}; "
        f"null {a['null_interval'][0]:.2f}…{a['null_interval'][1]:.2f})",
    ]
    q = sides.get("quantity")
    if q:
        lines.append(
            f"- gold differs from original more than the data-quantity side does: "
            f"{q['original_vs_gold']:.2e} vs {q['original_vs_quantity']:.2e}, difference "
            f"{q['difference']:+.2e} (p {q['p_value']:.3f}; null {q['null_interval'][0]:+.1e}"
            f"…{q['null_interval'][1]:+.1e}); the quantity side sits at "
            f"{_ci(q['quantity_position'])} between original (0) and gold (1)")
    if t["exact"] and 1 / t["splits"] > 1 - report["confidence"]:
        lines.append(f"- with {s} seed pairs the smallest possible p-value is 1/{t['splits']}: "
                     f"no difference can be significant; run more seeds (8 give 1/128)")
    if t["p_value"] > 1 - report["confidence"]:
        lines.append("- the sides are not told apart at this level: distances travelled "
                     "between them are not meaningful")
    if not report["candidates"]:
        return "\n".join(lines)
    lines += [
        "",
        "| model | distance to gold set: energy (p; null) | distance to original set: energy "
        "(p; null) | units changed | distance travelled, original 0 → gold 1 "
        f"[{pct}% CI] | its random control [{pct}% CI] | beyond its control [{pct}% CI] |",
        "|---|---|---|---:|---|---|---|",
    ]
    for name, c in report["candidates"].items():
        lines.append(
            f"| {name} | {_test(c['vs_gold'])} | {_test(c['vs_original'])} | "
            f"{c['changed']:.3f} | {_ci(c['travelled'])} | {_ci(c['control']['travelled'])} | "
            f"{_ci(c['beyond_control'])} |")
    return "\n".join(lines)


# --- synthetic masks with known truth -------------------------------------------------------------


def _calibrated(logits: np.ndarray, density: float) -> np.ndarray:
    """sigmoid(c + logits) with c found by bisection so that the mean is ``density``."""
    lo, hi = -40.0, 40.0
    for _ in range(80):
        c = (lo + hi) / 2
        lo, hi = (lo, c) if special.expit(c + logits).mean() > density else (c, hi)
    return special.expit((lo + hi) / 2 + logits)


def synthetic_sides(n: int, seeds: int, density: float = 0.1, *, shift: float = 0.0,
                    sharpness: tuple[float, float] = (2.0, 2.0), pair_coupling: float = 0.5,
                    exact_density: bool = False, seed: int = 0) -> dict:
    """Two sides of Bernoulli masks with known keep probabilities, for validating the tests.

    A shared structure z ~ N(0, 1)^n (what D teaches) and a D_f direction w ~ N(0, 1)^n give
    keep probabilities p_O = σ(c_O + β_O z) and p_G = σ(c_G + β_G (z + shift·w)/√(1 + shift²)),
    each calibrated to mean ``density``: ``shift`` moves the gold side, ``sharpness`` (β_O, β_G)
    sets how concentrated each side is (larger: closer to 0/1, less diverse masks). Mask s of
    each side thresholds uniforms U_s; a fraction ``pair_coupling`` of the entries share one
    uniform across the pair, as masks of one seed (θ_0, data order) are alike.

    Args:
        n: units per mask. seeds: S masks a side. density: mean keep probability.
        exact_density: keep exactly round(density·n) units per mask (the top units of
            logit p − logit U) instead of thresholding.
        seed: the generator's seed.

    Returns:
        ``{'original', 'gold'}``: bool (S, n); ``{'p_original', 'p_gold'}``: float (n,).
    """
    rng = np.random.default_rng(seed)
    z, w = rng.standard_normal((2, n))
    p_o = _calibrated(sharpness[0] * z, density)
    p_g = _calibrated(sharpness[1] * (z + shift * w) / math.sqrt(1 + shift ** 2), density)
    u, v = rng.random((2, seeds, n))
    u_g = np.where(rng.random((seeds, n)) < pair_coupling, u, v)
    if exact_density:
        k = int(round(density * n))

        def draw(p, uni):
            score = special.logit(p) - special.logit(uni)
            out = np.zeros(uni.shape, bool)
            np.put_along_axis(out, np.argsort(-score, axis=1)[:, :k], True, axis=1)
            return out
    else:
        draw = lambda p, uni: uni < p
    return {"original": draw(p_o, u), "gold": draw(p_g, u_g), "p_original": p_o, "p_gold": p_g}
