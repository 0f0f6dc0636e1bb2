"""Topology membership test: does a mask look trained with D_f or without it?

IoU to one gold mask is a weak yardstick: masks from the same θ_0 and data in another order
already differ about as much as deletion makes them differ. A per-weight test over seeds sees
more. Train S pipelines on D (the "original" side) and S on D_r (the "gold" side), each with its
own data-order seed; estimate every weight's keep probability on each side, p_O and p_G (Laplace
smoothed: (k + 1) / (S + 2)); score a mask M by the Bernoulli log-likelihood ratio

    LLR(M) = Σ_j M_j log(p_G,j / p_O,j) + (1 − M_j) log((1 − p_G,j) / (1 − p_O,j)),

positive when M looks like a gold mask. Masks come in pairs: the original and the gold run of one
seed share θ_0 and the data order. Every score is leave-one-pair-out: the masks of seed s, and
every mask derived from them (the un-pruned and baseline masks all descend from seed 0), are
scored with both sides estimated without pair s. Dropping only the scored mask would estimate its
own side from S − 1 masks and the other from S, and the smoothing alone would then push every
mask away from its own side. Reported:

- ``auc``: how well the LLR separates the two sides, with ``auc_null_interval``: the central
  95% of the AUC when the side labels are swapped at random within pairs (every split refits
  the whole leave-one-pair-out test; ``metrics.topology.lopo_auc``), and ``auc_p_value``
  (one-sided). Read the AUC against that interval, never against 0.5 alone. Measured on
  synthetic Bernoulli masks (``python benchmarks/bench_topology.py --validate --reps 500
  --coupling 0.0``: ``topology.synthetic_sides``, 4,000 units, density 0.1, seed pairs drawn
  independently, 500 repetitions): the AUC is exactly symmetric in the two sides (swapping
  original and gold gives the same AUC); equal-density sides of unequal dispersion (one side's
  keep probabilities near 0 and 1, the other's flatter) are separated perfectly (AUC 1.0 in
  every repetition), not pushed below 0.5; and with no difference at all the AUC has standard
  deviation 0.20 at S = 8 and 0.30 at S = 3 (0.15 and 0.25 when half of a pair's entries are
  drawn alike, ``--coupling 0.5``), falls at or below 0.33 in 19% and at or below 0.16 in 4% of
  draws at S = 8. So readings such as 0.33 (OMP, 8 seeds) or 0.16 (SFP) are within chance, not
  a sign that one side is "more diverse": that reading, once given here, does not hold.
- for each candidate mask, its LLR on a normalised scale: 0 = the original side's mean, 1 = the
  gold side's mean. It is *not* a distance travelled: any change of a mask moves it, random ones
  included (random swaps of an original mask's entries move it toward the middle, or toward the
  flatter side when the sides differ in dispersion). ``metrics.topology`` has the distance
  travelled that random changes do not move, and the matched random control to read it against.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..masks import _flat, check_mask
from .topology import lopo_auc


def keep_probabilities(flat_masks: np.ndarray, smoothing: float = 1.0) -> np.ndarray:
    """Per-entry keep probability from stacked flat masks (S, n), Laplace-smoothed."""
    s = flat_masks.shape[0]
    return (flat_masks.sum(0) + smoothing) / (s + 2 * smoothing)


def llr(flat_mask: np.ndarray, p_gold: np.ndarray, p_orig: np.ndarray) -> float:
    """The Bernoulli log-likelihood ratio of a flat mask, gold side over original side."""
    m = flat_mask.astype(bool)
    return float(np.sum(np.where(m, np.log(p_gold) - np.log(p_orig),
                                 np.log1p(-p_gold) - np.log1p(-p_orig))))


def auc(positive: Sequence[float], negative: Sequence[float]) -> float:
    """ROC AUC = P(score of a positive > score of a negative), ties counting one half."""
    pos, neg = np.asarray(positive, float)[:, None], np.asarray(negative, float)[None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def topology_membership(original_masks: Sequence, gold_masks: Sequence, prunable,
                        candidates: dict | None = None, *, candidate_pair: int = 0,
                        smoothing: float = 1.0, permutations: int = 1000, seed: int = 0,
                        confidence: float = 0.95) -> dict:
    """The membership test over S seed pairs of original-side and gold-side masks (S ≥ 2).

    Args:
        original_masks: masks from pipelines trained on D, seed s at position s.
        gold_masks: masks from pipelines trained on D_r, the same seeds in the same order.
        prunable: flags of the entries compared.
        candidates: ``{name: mask}`` to score (un-pruned masks, baselines), all derived from the
            pair ``candidate_pair``, which is left out when scoring them.
        smoothing: the Laplace pseudo-count of the keep probabilities.
        permutations, seed, confidence: the AUC's permutation null (all 2^(S−1) splits of the
            labels within pairs up to ``permutations``, else that many seeded random ones) and
            the coverage of its interval.

    Returns:
        ``auc`` with ``auc_null_interval``, ``auc_p_value``, ``auc_null_sd`` and ``auc_splits``;
        the leave-one-pair-out scores of both sides (``original_llr``, ``gold_llr``), their
        means, and ``candidates``: ``{name: {'llr', 'normalised'}}``.
    """
    if len(original_masks) != len(gold_masks) or len(original_masks) < 2:
        raise ValueError(f"the membership test needs at least 2 seed pairs, got "
                         f"{len(original_masks)} original and {len(gold_masks)} gold masks")
    for m in list(original_masks[1:]) + list(gold_masks):
        check_mask(original_masks[0], m)
    O = np.stack([_flat(m, prunable) for m in original_masks])  # noqa: E741  (O, G: original, gold)
    G = np.stack([_flat(m, prunable) for m in gold_masks])
    side = lopo_auc(O, G, smoothing=smoothing, permutations=permutations, seed=seed,
                    confidence=confidence)
    orig_scores, gold_scores = side["x_scores"], side["y_scores"]
    lo, hi = float(np.mean(orig_scores)), float(np.mean(gold_scores))
    keep = lambda x: keep_probabilities(np.delete(x, candidate_pair, axis=0), smoothing)
    p_g, p_o = keep(G), keep(O)
    out = {}
    for name, mask in (candidates or {}).items():
        score = llr(_flat(mask, prunable), p_g, p_o)
        out[name] = {"llr": score, "normalised": (score - lo) / (hi - lo) if hi != lo
                     else float("nan")}
    return {
        "auc": side["auc"],
        "auc_null_interval": side["null_interval"],
        "auc_p_value": side["p_value"],
        "auc_null_sd": side["null_sd"],
        "auc_splits": side["splits"],
        "original_llr": orig_scores,
        "gold_llr": gold_scores,
        "original_mean": lo,
        "gold_mean": hi,
        "candidates": out,
        "seeds": len(O),
    }
