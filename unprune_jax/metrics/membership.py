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

- ``auc``: how well the LLR separates the two sides (1.0: D_f leaves an unmistakable trace in the
  topology; 0.5: no trace at all). Caveat, measured on FashionMNIST: when one side's masks are
  more diverse than the other's, its estimated probabilities are flatter and *every* mask,
  its own members included, scores as more likely under the more concentrated side; the AUC then
  falls below 0.5 (SFP, 8 seeds: 0.16, gold masks more diverse than original ones). A
  dispersion-robust statistic is future work; read the AUC as "distinguishable" whenever it is
  far from 0.5 in either direction, and the normalised LLR as unreliable then.
- for each candidate mask, its LLR on a normalised scale: 0 = the original side's mean, 1 = the
  gold side's mean. This is the headline measure of un-pruning success.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..masks import _flat, check_mask


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
                        smoothing: float = 1.0) -> dict:
    """The membership test over S seed pairs of original-side and gold-side masks (S ≥ 2).

    Args:
        original_masks: masks from pipelines trained on D, seed s at position s.
        gold_masks: masks from pipelines trained on D_r, the same seeds in the same order.
        prunable: flags of the entries compared.
        candidates: ``{name: mask}`` to score (un-pruned masks, baselines), all derived from the
            pair ``candidate_pair``, which is left out when scoring them.

    Returns:
        ``auc``, the leave-one-pair-out scores of both sides (``original_llr``, ``gold_llr``),
        their means, and ``candidates``: ``{name: {'llr', 'normalised'}}``.
    """
    if len(original_masks) != len(gold_masks) or len(original_masks) < 2:
        raise ValueError(f"the membership test needs at least 2 seed pairs, got "
                         f"{len(original_masks)} original and {len(gold_masks)} gold masks")
    for m in list(original_masks[1:]) + list(gold_masks):
        check_mask(original_masks[0], m)
    O = np.stack([_flat(m, prunable) for m in original_masks])  # noqa: E741  (O, G: original, gold)
    G = np.stack([_flat(m, prunable) for m in gold_masks])

    def without(i):
        return (keep_probabilities(np.delete(G, i, axis=0), smoothing),
                keep_probabilities(np.delete(O, i, axis=0), smoothing))

    orig_scores = [llr(O[i], *without(i)) for i in range(len(O))]
    gold_scores = [llr(G[i], *without(i)) for i in range(len(G))]
    lo, hi = float(np.mean(orig_scores)), float(np.mean(gold_scores))
    p_g, p_o = without(candidate_pair)
    out = {}
    for name, mask in (candidates or {}).items():
        score = llr(_flat(mask, prunable), p_g, p_o)
        out[name] = {"llr": score, "normalised": (score - lo) / (hi - lo) if hi != lo
                     else float("nan")}
    return {
        "auc": auc(gold_scores, orig_scores),
        "original_llr": orig_scores,
        "gold_llr": gold_scores,
        "original_mean": lo,
        "gold_mean": hi,
        "candidates": out,
        "seeds": len(O),
    }
