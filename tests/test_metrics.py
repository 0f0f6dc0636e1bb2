"""Mask metrics, filter metrics, noise floor, weight distance and JS/KL, against hand values."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from unprune_jax import masks as masks_lib
from unprune_jax.metrics import (
    filter_metrics,
    js_divergence,
    kl_divergence,
    mask_metrics,
    mean_js,
    noise_floor,
    weight_distance,
)

approx = pytest.approx


def bits(n, kept, shape=None):
    """A bool array of n entries (row-major) with the entries in ``kept`` True."""
    a = np.zeros(n, bool)
    a[list(kept)] = True
    return a.reshape(shape or (n,))


def one_leaf(kept, bias=True):
    """A (2, 5) kernel (n = 10, flat indices 0..9) plus a non-prunable bias leaf."""
    return {"w": {"kernel": bits(10, kept, (2, 5)), "bias": np.full(3, bias)}}


PRUNE1 = {"w": {"kernel": True, "bias": False}}


def jnp_tree(t):
    return {k: jnp.asarray(v) for k, v in t.items()}


# --- mask_metrics: one leaf ---------------------------------------------------------------------


def test_mask_metrics_by_hand():
    # n = 10. A = {0,1,2,3}, B = {2,3,4,5}: |A∩B| = 2, |A∪B| = 6 → J = 2/6 = 1/3.
    # d_A = d_B = .4 → J_rand = .16 / (.8 − .16) = .16/.64 = .25; J* = (1/3 − 1/4)/(3/4) = 1/9.
    # A△B = {0,1,4,5} → H = 4/10; |A∖B| = 2, |B∖A| = 2. R = P = 2/4 = .5 (= J·(2−R)... J = R/(2−R)).
    # Same density → layer allocation distance 0.
    # The candidate's bias differs (all False) but is not prunable: it must not count.
    a, b = one_leaf({0, 1, 2, 3}, bias=False), one_leaf({2, 3, 4, 5})
    m = mask_metrics(a, b, PRUNE1)
    assert m["jaccard"] == approx(1 / 3)
    assert m["jaccard_chance"] == approx(0.25)
    assert m["jaccard_corrected"] == approx(1 / 9)
    assert m["hamming"] == approx(0.4)
    assert (m["only_candidate"], m["only_gold"], m["n"]) == (2, 2, 10)
    assert m["recall"] == approx(0.5) and m["precision"] == approx(0.5)
    assert m["jaccard"] == approx(m["recall"] / (2 - m["recall"]))
    assert m["layer_allocation_distance"] == 0.0
    assert m["density_candidate"] == approx(0.4) and m["density_gold"] == approx(0.4)
    assert "delta_jaccard" not in m
    assert list(m["per_layer"]) == ["w/kernel"]
    assert m["per_layer"]["w/kernel"]["jaccard"] == approx(1 / 3)
    assert "per_layer" not in mask_metrics(a, b, PRUNE1, per_layer=False)


def test_mask_metrics_with_original_by_hand():
    # A = {0,1,2,3}, B = {2,3,4,5}, O = {0,1,4,6,7} (n = 10).
    # O∩B = {4}, O∪B = {0..7} → J(O,B) = 1/8; ΔJ = 1/3 − 1/8 = 5/24.
    # O△B = {0,1,2,3,5,6,7} (7), A△B = {0,1,4,5}.
    # (O△B)∖(A△B) = {2,3,6,7} → CF = 4/7; (A△B)∖(O△B) = {4} → introduced = 1/7.
    # Check: |A△B| = 7 − 4 + 1 = 4.
    a, b, o = one_leaf({0, 1, 2, 3}), one_leaf({2, 3, 4, 5}), one_leaf({0, 1, 4, 6, 7})
    m = mask_metrics(a, b, PRUNE1, original=o)
    assert m["jaccard_original"] == approx(1 / 8)
    assert m["delta_jaccard"] == approx(5 / 24)
    assert m["delta_jaccard"] == approx(masks_lib.delta_jaccard(a, o, b, PRUNE1))
    assert m["corrected_fraction"] == approx(4 / 7)
    assert m["introduced_fraction"] == approx(1 / 7)
    assert (m["corrected"], m["introduced"], m["original_diff"]) == (4, 1, 7)
    assert m["density_original"] == approx(0.5)
    assert m["per_layer"]["w/kernel"]["corrected_fraction"] == approx(4 / 7)


def test_mask_metrics_two_layers_by_hand():
    # conv/kernel (1,1,2,3), n1 = 6: A1 = {0,1,2}, B1 = {0}: ∩ 1, ∪ 3 → J1 = 1/3.
    #   J_rand1 = ab/(n(a+b) − ab) = 3/(24 − 3) = 1/7; J*1 = (1/3 − 1/7)/(6/7) = 2/9.
    #   H1 = 2/6; |A∖B| = 2, |B∖A| = 0; R1 = 1, P1 = 1/3; LD1 = |3/6 − 1/6| = 1/3.
    # fc/kernel (2,2), n2 = 4: A2 = {0}, B2 = {0,1,2}: J2 = 1/3, J_rand2 = 3/(16 − 3) = 3/13,
    #   H2 = 2/4; R2 = 1/3, P2 = 1; LD2 = |1/4 − 3/4| = 1/2.
    # Global (n = 10): |A| = |B| = 4, ∩ 2, ∪ 6 → J = 1/3, J_rand = .25, H = 4/10,
    #   LD = (6/10)(1/3) + (4/10)(1/2) = .4 although the global densities are equal.
    a = {"conv": {"kernel": bits(6, {0, 1, 2}, (1, 1, 2, 3))},
         "fc": {"kernel": bits(4, {0}, (2, 2)), "bias": np.ones(2, bool)}}
    b = {"conv": {"kernel": bits(6, {0}, (1, 1, 2, 3))},
         "fc": {"kernel": bits(4, {0, 1, 2}, (2, 2)), "bias": np.ones(2, bool)}}
    prunable = {"conv": {"kernel": True}, "fc": {"kernel": True, "bias": False}}
    m = mask_metrics(a, b, prunable)
    pl = m["per_layer"]
    assert list(pl) == ["conv/kernel", "fc/kernel"]
    c, f = pl["conv/kernel"], pl["fc/kernel"]
    assert c["jaccard"] == approx(1 / 3) and c["jaccard_chance"] == approx(1 / 7)
    assert c["jaccard_corrected"] == approx(2 / 9)
    assert c["hamming"] == approx(1 / 3) and (c["only_candidate"], c["only_gold"]) == (2, 0)
    assert c["recall"] == approx(1.0) and c["precision"] == approx(1 / 3)
    assert c["layer_allocation_distance"] == approx(1 / 3) and c["n"] == 6
    assert f["jaccard"] == approx(1 / 3) and f["jaccard_chance"] == approx(3 / 13)
    assert f["hamming"] == approx(0.5)
    assert f["recall"] == approx(1 / 3) and f["precision"] == approx(1.0)
    assert f["layer_allocation_distance"] == approx(0.5) and f["n"] == 4
    assert m["jaccard"] == approx(1 / 3) and m["jaccard_chance"] == approx(0.25)
    assert m["hamming"] == approx(0.4)
    assert m["layer_allocation_distance"] == approx(0.4)
    # additive metrics are the n_l-weighted means of the per-layer ones
    assert m["hamming"] == approx(0.6 * c["hamming"] + 0.4 * f["hamming"])


def test_mask_metrics_edge_cases():
    # both empty: J = 1 (like masks.similarity), J_rand = 0/0 → nan, J* nan, R and P nan
    e = mask_metrics(one_leaf(set()), one_leaf(set()), PRUNE1, per_layer=False)
    assert e["jaccard"] == 1.0 and math.isnan(e["jaccard_chance"])
    assert math.isnan(e["jaccard_corrected"]) and math.isnan(e["recall"])
    # both full: J_rand = 1 → J* = 0/0 → nan
    full = one_leaf(range(10))
    f = mask_metrics(full, full, PRUNE1, per_layer=False)
    assert f["jaccard"] == 1.0 and f["jaccard_chance"] == 1.0
    assert math.isnan(f["jaccard_corrected"])
    # one empty, one not: J = 0 = J_rand → J* = 0; precision of the empty candidate is nan
    g = mask_metrics(one_leaf(set()), one_leaf({1, 2}), PRUNE1, per_layer=False)
    assert g["jaccard"] == 0.0 and g["jaccard_corrected"] == 0.0 and math.isnan(g["precision"])
    # O == B: |O△B| = 0 → CF and introduced fraction are nan, the counts are still defined
    b = one_leaf({2, 3})
    h = mask_metrics(one_leaf({2, 4}), b, PRUNE1, original=b, per_layer=False)
    assert math.isnan(h["corrected_fraction"]) and math.isnan(h["introduced_fraction"])
    assert (h["corrected"], h["introduced"], h["original_diff"]) == (0, 2, 0)
    # identical masks: J* = 1
    assert mask_metrics(b, b, PRUNE1)["jaccard_corrected"] == approx(1.0)


def test_mask_metrics_agrees_with_similarity_on_random_masks():
    rng = np.random.default_rng(0)
    shapes = {"c": (3, 3, 2, 4), "d": (8, 5)}
    mk = lambda: {k: rng.random(s) < 0.3 for k, s in shapes.items()}
    a, b = mk(), mk()
    prunable = {"c": True, "d": True}
    m = mask_metrics(jnp_tree(a), b, prunable)  # JAX and numpy leaves mix
    s = masks_lib.similarity(a, b, prunable)
    assert m["jaccard"] == approx(s["jaccard"]) and m["hamming"] == approx(s["hamming"])
    assert (m["only_candidate"], m["only_gold"], m["n"]) == (s["only_a"], s["only_b"], s["n"])
    fa = np.concatenate([a["c"].ravel(), a["d"].ravel()])
    fb = np.concatenate([b["c"].ravel(), b["d"].ravel()])
    assert m["recall"] == approx(np.sum(fa & fb) / np.sum(fb))
    da, db = fa.mean(), fb.mean()
    assert m["jaccard_chance"] == approx(da * db / (da + db - da * db))


def test_mask_metrics_validation_names_the_leaf():
    a, b = one_leaf({1}), one_leaf({2})
    bad_shape = {"w": {"kernel": np.zeros((5, 2), bool), "bias": np.ones(3, bool)}}
    with pytest.raises(ValueError, match="w/kernel"):
        mask_metrics(bad_shape, b, PRUNE1)
    bad_dtype = {"w": {"kernel": np.zeros((2, 5), np.float32), "bias": np.ones(3, bool)}}
    with pytest.raises(ValueError, match="w/kernel"):
        mask_metrics(a, bad_dtype, PRUNE1)
    missing = {"w": {"kernel": np.zeros((2, 5), bool)}}
    with pytest.raises(ValueError, match="w/bias"):
        mask_metrics(a, b, PRUNE1, original=missing)
    with pytest.raises(ValueError, match="no prunable"):
        mask_metrics(a, b, {"w": {"kernel": False, "bias": False}})
    with pytest.raises(ValueError, match="prunable"):
        mask_metrics(a, b, {"w": {"kernel": True}})


# --- filter_metrics -----------------------------------------------------------------------------


def test_filter_metrics_by_hand():
    # conv kernel (1,1,2,4): filter o = kernel[..., o].
    #   candidate keeps [0,0,0,0] (filter 0), [0,0,1,1] and [0,0,0,1] (filter 1) → F_A = {0,1}
    #   gold keeps [0,0,1,1] (filter 1), [0,0,1,2] (filter 2)                     → F_B = {1,2}
    #   IoU = |{1}| / |{0,1,2}| = 1/3; H = |{0,2}| / 4 = .5.
    # dense kernel (3,2): candidate keeps [2,1] → {1}; gold keeps [0,1], [1,1] → {1}: IoU 1, H 0.
    # Global over 6 filters: ∩ = 2, ∪ = 4 → IoU .5; H = 2/6.
    ca, ga = np.zeros((1, 1, 2, 4), bool), np.zeros((1, 1, 2, 4), bool)
    ca[0, 0, 0, 0] = ca[0, 0, 1, 1] = ca[0, 0, 0, 1] = True
    ga[0, 0, 1, 1] = ga[0, 0, 1, 2] = True
    cd, gd = np.zeros((3, 2), bool), np.zeros((3, 2), bool)
    cd[2, 1] = True
    gd[0, 1] = gd[1, 1] = True
    a = {"conv": {"kernel": ca, "bias": np.ones(4, bool)}, "fc": {"kernel": cd}}
    b = {"conv": {"kernel": ga, "bias": np.ones(4, bool)}, "fc": {"kernel": gd}}
    prunable = {"conv": {"kernel": True, "bias": False}, "fc": {"kernel": True}}
    m = filter_metrics(a, b, prunable)
    c = m["per_layer"]["conv/kernel"]
    assert c["jaccard"] == approx(1 / 3) and c["hamming"] == approx(0.5)
    assert (c["only_candidate"], c["only_gold"], c["kept_candidate"], c["kept_gold"],
            c["n_filters"]) == (1, 1, 2, 2, 4)
    d = m["per_layer"]["fc/kernel"]
    assert d["jaccard"] == 1.0 and d["hamming"] == 0.0 and d["n_filters"] == 2
    assert m["jaccard"] == approx(0.5) and m["hamming"] == approx(1 / 3) and m["n_filters"] == 6
    with pytest.raises(ValueError, match="conv/bias"):
        filter_metrics(a, b, {"conv": {"kernel": True, "bias": True}, "fc": {"kernel": True}})


# --- noise_floor --------------------------------------------------------------------------------


def test_noise_floor_by_hand():
    # n = 6: M1 = {0,1,2}, M2 = {0,1,3}, M3 = {3,4,5}.
    # J(1,2) = 2/4 = .5, J(1,3) = 0/6 = 0, J(2,3) = |{3}| / |{0,1,3,4,5}| = .2.
    # mean = .7/3 = 7/30; E[J²] = (.25 + 0 + .04)/3 = 87/900 → var = (87 − 49)/900, std = √38/30.
    # All densities .5 → J_rand = .25/.75 = 1/3 → J* = 1.5 J − .5 = .25, −.5, −.2 (mean −.15).
    ms = [{"k": bits(6, s)} for s in ({0, 1, 2}, {0, 1, 3}, {3, 4, 5})]
    nf = noise_floor(ms, {"k": True})
    assert nf["pairs"] == 3
    j = nf["jaccard"]
    assert j["values"] == approx([0.5, 0.0, 0.2])
    assert j["mean"] == approx(7 / 30) and j["std"] == approx(math.sqrt(38) / 30)
    assert (j["min"], j["max"]) == (approx(0.0), approx(0.5))
    jc = nf["jaccard_corrected"]
    assert jc["values"] == approx([0.25, -0.5, -0.2])
    assert jc["mean"] == approx(-0.15) and jc["min"] == approx(-0.5) and jc["max"] == approx(0.25)
    with pytest.raises(ValueError, match="got 1"):
        noise_floor(ms[:1], {"k": True})
    with pytest.raises(ValueError, match="'k'"):
        noise_floor([ms[0], {"k": bits(5, {0})}], {"k": True})


# --- weight_distance ----------------------------------------------------------------------------


def test_weight_distance_by_hand():
    # kernel: θ_a = [1,2,3,4], M_a = [T,T,F,F]; θ_b = [1,5,7,9], M_b = [F,T,T,F].
    # Union {0,1,2}; effective weights a = [1,2,0], b = [0,5,7] → diffs 1, −3, −7 → √59.
    # (Entry 2's stored θ_a = 3 is pruned, so it counts as 0; entry 3 is pruned in both.)
    # bias (not prunable, all-True): 10 vs 13 → with prunable=None, √(59 + 9) = √68.
    pa = {"k": np.array([1.0, 2, 3, 4], np.float32), "b": np.array([10.0], np.float32)}
    pb = {"k": jnp.array([1.0, 5, 7, 9]), "b": jnp.array([13.0])}
    ma = {"k": np.array([True, True, False, False]), "b": np.ones(1, bool)}
    mb = {"k": np.array([False, True, True, False]), "b": np.ones(1, bool)}
    assert weight_distance(pa, pb, ma, mb, {"k": True, "b": False}) == approx(math.sqrt(59))
    assert weight_distance(pa, pb, ma, mb) == approx(math.sqrt(68))
    assert weight_distance(pa, pa, ma, ma) == 0.0
    with pytest.raises(ValueError, match="'k'"):
        weight_distance(pa, pb, ma, {"k": np.ones(3, bool), "b": np.ones(1, bool)})


# --- js / kl ------------------------------------------------------------------------------------


def softmax_np(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_js_properties_and_reference():
    rng = np.random.default_rng(1)
    p, q = rng.normal(size=(16, 10)) * 3, rng.normal(size=(16, 10)) * 3
    js = js_divergence(p, q)
    assert js.shape == (16,)
    assert np.allclose(js_divergence(p, p), 0.0, atol=1e-12)
    assert np.allclose(js_divergence(p, p + 5.0), 0.0, atol=1e-12)  # softmax is shift invariant
    assert np.allclose(js, js_divergence(q, p), atol=1e-12)
    assert np.all(js >= 0) and np.all(js <= math.log(2))
    P, Q = softmax_np(p), softmax_np(q)
    M = (P + Q) / 2
    ref = 0.5 * np.sum(P * np.log(P / M), -1) + 0.5 * np.sum(Q * np.log(Q / M), -1)
    assert np.allclose(js, ref, atol=1e-10)
    assert mean_js(jnp.asarray(p), q) == approx(float(ref.mean()), abs=1e-6)
    # disjoint supports in the limit → ln 2, without overflow or nan
    far = js_divergence(np.array([[1000.0, -1000.0]]), np.array([[-1000.0, 1000.0]]))
    assert far[0] == approx(math.log(2)) and np.isfinite(far).all()
    # -inf logits (masked classes) are fine
    assert np.isfinite(js_divergence(np.array([0.0, -np.inf]), np.array([0.0, 1.0])))
    with pytest.raises(ValueError, match="shapes"):
        js_divergence(p, q[:, :5])


def test_kl_matches_numpy():
    rng = np.random.default_rng(2)
    p, q = rng.normal(size=(8, 5)), rng.normal(size=(8, 5))
    P, Q = softmax_np(p), softmax_np(q)
    assert np.allclose(kl_divergence(p, q), np.sum(P * np.log(P / Q), -1), atol=1e-12)
    assert np.allclose(kl_divergence(p, p), 0.0, atol=1e-12)
    assert not np.allclose(kl_divergence(p, q), kl_divergence(q, p))  # not symmetric
