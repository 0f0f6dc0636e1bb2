"""The topology membership test, by hand on two-entry masks."""

import numpy as np
import pytest

from unprune_jax.metrics import membership


def m(*bits):
    return {"w": np.array(bits, bool)}


def test_membership_by_hand():
    orig = [m(1, 0), m(1, 0), m(1, 1)]
    gold = [m(0, 1), m(0, 1), m(0, 1)]
    res = membership.topology_membership(orig, gold, None, {"cand": m(0, 1), "same": m(1, 0)})
    # leaving pair 0 out: O = {(1,0), (1,1)} → p_O = ((2+1)/4, (1+1)/4) = (.75, .5);
    # G = {(0,1), (0,1)} → p_G = (.25, .75)
    lo0 = np.log(.25 / .75) + np.log((1 - .75) / (1 - .5))  # O[0] = (1, 0)
    g0 = np.log(.75 / .25) + np.log(.75 / .5)  # G[0] = (0, 1)
    # leaving pair 2 out: O = {(1,0), (1,0)} → p_O = (.75, .25); p_G = (.25, .75)
    lo2 = np.log(.25 / .75) + np.log(.75 / .25)  # O[2] = (1, 1)
    g2 = 2 * np.log(3)
    assert res["original_llr"] == pytest.approx([lo0, lo0, lo2])
    assert res["gold_llr"] == pytest.approx([g0, g0, g2])
    assert res["auc"] == 1.0
    lo, hi = np.mean([lo0, lo0, lo2]), np.mean([g0, g0, g2])
    cand = res["candidates"]["cand"]  # scored with pair 0 left out, like G[0]
    assert cand["llr"] == pytest.approx(g0)
    assert cand["normalised"] == pytest.approx((g0 - lo) / (hi - lo))
    assert res["candidates"]["same"]["llr"] == pytest.approx(lo0)


def test_no_trace_gives_chance_auc():
    rng = np.random.default_rng(0)
    masks = [m(*(rng.random(400) < 0.3)) for _ in range(16)]  # one distribution for both sides
    res = membership.topology_membership(masks[:8], masks[8:], None)
    assert 0.2 <= res["auc"] <= 0.8
    assert membership.auc([1, 2], [0, 2]) == pytest.approx((1 + 1 + 0 + 0.5) / 4)


def test_too_few_masks_is_named():
    with pytest.raises(ValueError, match="at least 2 seed pairs, got 1 original"):
        membership.topology_membership([m(1, 0)], [m(0, 1), m(0, 1)], None)


def test_auc_comes_with_its_permutation_null():
    """Every AUC gets the interval it would fall in by chance (labels swapped within pairs)."""
    rng = np.random.default_rng(1)
    masks = [m(*(rng.random(300) < 0.3)) for _ in range(8)]  # no difference between the sides
    res = membership.topology_membership(masks[:4], masks[4:], None)
    assert res["auc_splits"] == 8  # 2^(4−1) distinct splits, enumerated exactly
    lo, hi = res["auc_null_interval"]
    assert 0.0 <= lo < hi <= 1.0 and 0.0 < res["auc_p_value"] <= 1.0
    assert res["auc_null_sd"] > 0
    # the AUC is exactly symmetric in the two sides
    assert membership.topology_membership(masks[4:], masks[:4], None)["auc"] == res["auc"]
