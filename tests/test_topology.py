"""The topology test between sets of masks: by hand, against plain loops, and on synthetic masks
with known truth (issue 14: dispersion, power, mixtures, random swaps, controls)."""

import itertools
import json

import jax.numpy as jnp
import numpy as np
import pytest

from unprune_jax.metrics import topology as T

# --- a plain numpy reference of the per-unit LLR, one mask at a time ----------------------------


def keep_probabilities(flat_masks, smoothing=1.0):
    return (flat_masks.sum(0) + smoothing) / (flat_masks.shape[0] + 2 * smoothing)


def llr(mask, p_gold, p_orig):
    """log P(mask | gold side) − log P(mask | original side), entries independent Bernoulli."""
    return float(np.sum(np.where(mask, np.log(p_gold / p_orig),
                                 np.log((1 - p_gold) / (1 - p_orig)))))


def auc(positive, negative):
    pos, neg = np.asarray(positive, float)[:, None], np.asarray(negative, float)[None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def mixture(original, p_gold, alpha, rng):
    fresh = rng.random(original.shape) < p_gold
    return np.where(rng.random(original.shape) < alpha, fresh, original)


def swapped(masks, fraction, rng):
    """Each mask with ``fraction`` of its kept entries swapped for pruned ones at random."""
    out = masks.copy()
    for m in out:
        kept, pruned = np.flatnonzero(m), np.flatnonzero(~m)
        k = int(round(fraction * len(kept)))
        m[rng.choice(kept, k, replace=False)] = False
        m[rng.choice(pruned, k, replace=False)] = True
    return out


# --- flattening and the Gram ----------------------------------------------------------------


def test_flatten_pytrees_weights_and_filters():
    conv = np.zeros((3, 3, 2, 4), bool)
    conv[..., 1] = True
    conv[0, 0, 0, 3] = True  # a filter with one kept entry counts as kept
    mask = {"conv": conv, "bias": np.ones(4, bool), "dense": np.eye(3, 2, dtype=bool)}
    prunable = {"conv": True, "bias": False, "dense": True}
    bits, layers = T.flatten_masks([mask, mask], prunable)
    # leaves in key order: bias (skipped), conv, dense
    assert layers == (72, 6) and bits.shape == (2, 78)
    assert bits[0, :72].sum() == 19 and bits[0, 72:].tolist() == np.eye(3, 2).ravel().tolist()
    fbits, flayers = T.flatten_masks([mask], {"conv": True, "bias": False, "dense": False},
                                     granularity="filter")
    assert flayers == (4,) and fbits[0].tolist() == [False, True, False, True]
    with pytest.raises(ValueError, match="dense kernel 'dense'"):
        T.flatten_masks([mask], prunable, granularity="filter")
    assert T.flatten_masks([mask], prunable, granularity="filter",
                           allow_dense_filters=True)[1] == (4, 2)


def test_flatten_refuses_bad_input():
    with pytest.raises(ValueError, match="bool array"):
        T.flatten_masks(np.zeros((2, 5), int))
    with pytest.raises(ValueError, match=r"layers \[2, 2\] must .* the 5 units"):
        T.flatten_masks(np.zeros((2, 5), bool), layers=(2, 2))
    with pytest.raises(ValueError, match="mask 1 does not fit mask 0"):
        T.flatten_masks([{"w": np.ones(3, bool)}, {"w": np.ones(4, bool)}])
    with pytest.raises(ValueError, match="granularity"):
        T.flatten_masks([{"w": np.ones((3, 2), bool)}], granularity="channel")
    with pytest.raises(ValueError, match="at least 2 masks a side"):
        T.two_sample_test(np.ones((1, 4), bool), np.ones((1, 4), bool))
    with pytest.raises(ValueError, match="one mask per seed on each side: 3 first masks, 2"):
        T.two_sample_test(np.ones((3, 4), bool), np.ones((2, 4), bool))
    with pytest.raises(ValueError, match="unknown mask distance 'hamm'.*'hamming'"):
        T.two_sample_test(np.ones((2, 4), bool), np.ones((2, 4), bool), distance="hamm")


def test_layer_gram_matches_matrix_products():
    rng = np.random.default_rng(0)
    bits = rng.random((5, 203)) < 0.3  # layer sizes not multiples of 64
    gram = T.layer_gram(bits, (130, 73))
    b = bits.astype(int)
    np.testing.assert_array_equal(gram[0], b[:, :130] @ b[:, :130].T)
    np.testing.assert_array_equal(gram[1], b[:, 130:] @ b[:, 130:].T)


# --- the energy test --------------------------------------------------------------------------


def energy_by_loops(x, y, paired):
    """Plain-loop reference: Hamming fractions, same-seed cross pairs skipped when paired."""
    h = lambda a, b: np.mean(a != b)
    s = len(x)
    cross = [h(x[i], y[j]) for i in range(s) for j in range(len(y)) if not (paired and i == j)]
    within = lambda z: np.mean([h(z[i], z[j]) for i in range(len(z)) for j in range(len(z))
                                if i != j])
    return 2 * np.mean(cross) - within(x) - within(y)


def test_energy_test_against_loops_and_exact_enumeration():
    rng = np.random.default_rng(1)
    x, y = rng.random((4, 50)) < 0.3, rng.random((4, 50)) < 0.5
    res = T.two_sample_test(x, y)
    assert res["value"] == pytest.approx(energy_by_loops(x, y, paired=True))
    # all 2^(4−1) = 8 distinct within-pair swaps, the identity among them
    null = [energy_by_loops(np.where(sw[:, None], y, x), np.where(sw[:, None], x, y), True)
            for sw in (np.array((0,) + c, bool) for c in itertools.product((0, 1), repeat=3))]
    assert res["splits"] == 8 and res["exact"]
    assert res["p_value"] == pytest.approx(np.mean(np.array(null) >= res["value"] - 1e-12))
    assert res["null_mean"] == pytest.approx(0.0, abs=1e-12)  # swaps flip the sign of each term
    # paired Hamming energy = 2 · mean over s ≠ s' of ⟨D_s, D_s'⟩ / n, D_s = x_s − y_s
    d = x.astype(int) - y.astype(int)
    inner = d @ d.T
    assert res["value"] == pytest.approx(2 * (inner.sum() - np.trace(inner)) / (4 * 3 * 50))

    unpaired = T.two_sample_test(x, y, paired=False)
    assert unpaired["value"] == pytest.approx(energy_by_loops(x, y, paired=False))
    assert unpaired["splits"] == 70 and unpaired["exact"]  # C(8, 4) relabellings


def test_energy_p_value_floor_and_monte_carlo():
    x, y = np.zeros((3, 20), bool), np.ones((3, 20), bool)
    exact = T.two_sample_test(x, y)
    assert exact["p_value"] == 0.25  # 4 splits: the observed one is the most extreme
    mc = T.two_sample_test(x, y, permutations=3, seed=5)
    assert not mc["exact"] and mc["splits"] == 3
    hits = round(mc["p_value"] * 4 - 1)
    assert mc["p_value"] == (hits + 1) / 4  # (hits + 1) / (draws + 1), never 0
    assert T.two_sample_test(x, y, permutations=3, seed=5) == mc  # seeded
    for distance in ("jaccard", "euclidean"):
        assert T.two_sample_test(x, y, distance=distance)["value"] > 0


def test_power_and_false_positives_at_8_seeds():
    """(b): a shifted gold side is detected at S = 8; with no shift the test rarely fires."""
    def rejections(shift, reps):
        return np.mean([T.two_sample_test(*(lambda d: (d["original"], d["gold"]))(
            T.synthetic_sides(3000, 8, 0.1, shift=shift, seed=100 + r)))["p_value"] < 0.05
            for r in range(reps)])

    assert rejections(0.3, 10) == 1.0
    assert rejections(0.0, 40) <= 0.15  # 6/128 ≈ 0.047 in expectation


# --- the leave-one-pair-out LLR AUC -----------------------------------------------------------


def test_lopo_auc_by_hand():
    orig = np.array([[1, 0], [1, 0], [1, 1]], bool)
    gold = np.array([[0, 1], [0, 1], [0, 1]], bool)
    res = T.lopo_auc(orig, gold)
    # leaving pair 0 out: O = {(1,0), (1,1)} → p_O = ((2+1)/4, (1+1)/4) = (.75, .5);
    # G = {(0,1), (0,1)} → p_G = (.25, .75)
    lo0 = np.log(.25 / .75) + np.log((1 - .75) / (1 - .5))  # O[0] = (1, 0)
    g0 = np.log(.75 / .25) + np.log(.75 / .5)  # G[0] = (0, 1)
    # leaving pair 2 out: O = {(1,0), (1,0)} → p_O = (.75, .25); p_G = (.25, .75)
    lo2 = np.log(.25 / .75) + np.log(.75 / .25)  # O[2] = (1, 1)
    g2 = 2 * np.log(3)
    assert res["x_scores"] == pytest.approx([lo0, lo0, lo2])
    assert res["y_scores"] == pytest.approx([g0, g0, g2])
    assert res["auc"] == 1.0 and res["splits"] == 4
    with pytest.raises(ValueError, match="2"):
        T.lopo_auc(orig[:1], gold[:1])


def test_lopo_auc_matches_the_per_mask_loop_under_every_split():
    rng = np.random.default_rng(2)
    x, y = rng.random((4, 300)) < 0.2, rng.random((4, 300)) < 0.3
    res = T.lopo_auc(x, y, smoothing=0.5)
    null = []
    for c in itertools.product((0, 1), repeat=3):
        sw = np.array((0,) + c, bool)[:, None]
        a, b = np.where(sw, y, x), np.where(sw, x, y)
        sa, sb = [], []
        for i in range(4):
            p_b = keep_probabilities(np.delete(b, i, 0), 0.5)
            p_a = keep_probabilities(np.delete(a, i, 0), 0.5)
            sa.append(llr(a[i], p_b, p_a))
            sb.append(llr(b[i], p_b, p_a))
        null.append(auc(sb, sa))
        if not c.count(1):
            assert res["x_scores"] == pytest.approx(sa) and res["y_scores"] == pytest.approx(sb)
    assert res["auc"] == null[0] and res["splits"] == 8
    assert res["null_interval"] == pytest.approx(list(np.quantile(null, [0.025, 0.975])))
    assert res["p_value"] == pytest.approx(np.mean(np.array(null) >= res["auc"]))
    swapped_sides = T.lopo_auc(y, x, smoothing=0.5)
    assert swapped_sides["auc"] == res["auc"]  # exactly symmetric in the two sides
    with pytest.raises(ValueError, match="smoothing must be > 0"):
        T.lopo_auc(x, y, smoothing=0.0)


def test_patterns_collapse_identical_columns():
    bits = np.array([[1, 0, 1, 1, 0], [0, 0, 0, 0, 1], [1, 1, 1, 1, 1]], bool)
    pat, counts = T._patterns(bits)
    assert counts.sum() == 5 and pat.shape == (3, 3)
    cols = {tuple(c): k for c, k in zip(pat.T.tolist(), counts)}
    assert cols == {(True, False, True): 3, (False, False, True): 1, (False, True, True): 1}
    wide = np.random.default_rng(0).random((70, 40)) < 0.5  # more than 64 rows
    pat, counts = T._patterns(wide)
    assert sorted(map(tuple, pat.T.tolist())) == sorted(set(map(tuple, wide.T.tolist())))


# --- distance travelled -----------------------------------------------------------------------


def test_the_sides_own_masks_sit_at_0_and_1():
    sd = T.synthetic_sides(3000, 6, 0.1, shift=0.5, seed=3)
    o, g = sd["original"], sd["gold"]
    assert T.distance_travelled(o, g, o)["mean"] == pytest.approx(0.0, abs=1e-12)
    assert T.distance_travelled(o, g, o)["ci"] == pytest.approx([0.0, 0.0], abs=1e-12)
    assert T.distance_travelled(o, g, g)["mean"] == pytest.approx(1.0)
    assert T.distance_travelled(o, g, g)["structure"] == pytest.approx(1.0)


def test_random_swaps_stay_at_0_and_mixtures_sit_at_alpha():
    """(c) and (d): monotone in α and close to it; random swaps travel nowhere."""
    rng = np.random.default_rng(4)
    sd = T.synthetic_sides(20000, 8, 0.1, shift=0.4, seed=4)
    o, g = sd["original"], sd["gold"]
    for fraction in (0.2, 0.5):
        t = T.distance_travelled(o, g, swapped(o, fraction, rng))
        assert abs(t["mean"]) < 0.1 and t["ci"][0] < 0 < t["ci"][1]
        assert t["structure"] < 1 - fraction / 2  # diluted toward the uniform mask
    pos = [T.distance_travelled(o, g, mixture(o, sd["p_gold"], a, rng))["mean"]
           for a in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert np.all(np.diff(pos) > 0)
    assert pos == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0], abs=0.08)


@pytest.mark.parametrize("sharpness", [(3.0, 1.0), (1.0, 3.0)])
def test_unequal_dispersion_does_not_pull_toward_the_flatter_side(sharpness):
    """(a): equal density, one side flatter, the same structure. The sets differ (the test says
    so), but an original with 30% of its kept entries swapped at random stays at 0 within its
    interval, where a single mask's LLR, normalised so that the sides' mean scores sit at 0 and 1,
    moves it toward the flatter side."""
    rng = np.random.default_rng(5)
    sd = T.synthetic_sides(40000, 8, 0.1, sharpness=sharpness, seed=5)
    o, g = sd["original"], sd["gold"]
    assert T.two_sample_test(o, g)["p_value"] < 0.05
    swapped_o = swapped(o, 0.3, rng)
    t = T.distance_travelled(o, g, swapped_o)
    assert abs(t["mean"]) < 0.2 and t["ci"][0] < 0 < t["ci"][1]
    fresh_o = T.distance_travelled(o, g, rng.random(o.shape) < sd["p_original"])
    fresh_g = T.distance_travelled(o, g, rng.random(o.shape) < sd["p_gold"])
    assert fresh_o["ci"][0] < 0 < fresh_o["ci"][1] and fresh_g["ci"][0] < 1 < fresh_g["ci"][1]
    sides = T.lopo_auc(o, g, permutations=1)
    lo, hi = np.mean(sides["x_scores"]), np.mean(sides["y_scores"])
    old = np.mean([(llr(swapped_o[i], keep_probabilities(np.delete(g, i, 0)),
                        keep_probabilities(np.delete(o, i, 0))) - lo) / (hi - lo)
                   for i in range(8)])
    toward_flatter = old if sharpness[1] < sharpness[0] else -old
    assert toward_flatter > 0.2


# --- controls, beyond control, quantity side ----------------------------------------------------


def test_matched_controls_change_as_much_per_layer_at_random():
    rng = np.random.default_rng(6)
    orig = rng.random((3, 120)) < 0.2
    cand = swapped(orig, 0.4, rng)
    cand[:, :20] = orig[:, :20]  # no change at all in the first layer
    ctrl = T.matched_controls(cand, orig, layers=(20, 100), seed=7)
    for c, k, o in zip(cand, ctrl, orig):
        for a, b in ((0, 20), (20, 120)):
            assert np.sum(o[a:b] & ~k[a:b]) == np.sum(o[a:b] & ~c[a:b])  # turned off
            assert np.sum(~o[a:b] & k[a:b]) == np.sum(~o[a:b] & c[a:b])  # turned on
        assert np.array_equal(k[:20], o[:20]) and not np.array_equal(k, c)
    np.testing.assert_array_equal(ctrl, T.matched_controls(cand, orig, layers=(20, 100), seed=7))
    assert not np.array_equal(ctrl, T.matched_controls(cand, orig, layers=(20, 100), seed=8))


def test_matched_controls_swap_whole_filters_in_pytrees():
    def conv_mask(filters):
        k = np.zeros((3, 3, 2, 6), bool)
        k[..., filters] = True
        return {"b": np.ones(6, bool), "k": k}

    prunable = {"b": False, "k": True}
    orig = [conv_mask([0, 1, 2]), conv_mask([1, 2, 3])]
    cand = [conv_mask([0, 1, 5]), conv_mask([1, 2, 3])]
    ctrl = T.matched_controls(cand, orig, prunable, granularity="filter", seed=0)
    for k in ctrl:
        kept = np.asarray(k["k"]).reshape(-1, 6)
        assert np.all(kept == kept[:1])  # whole filters
        assert kept[0].sum() == 3 and np.asarray(k["b"]).all()
    assert np.array_equal(np.asarray(ctrl[1]["k"]), np.asarray(orig[1]["k"]))
    assert np.sum(np.asarray(ctrl[0]["k"])[0, 0, 0] & ~np.asarray(orig[0]["k"])[0, 0, 0]) == 1


def test_beyond_control_is_the_paired_difference():
    """Beyond control is the difference of the two positions; a candidate against itself is
    exactly 0 with a zero-width interval (the influence values cancel pair by pair)."""
    rng = np.random.default_rng(8)
    sd = T.synthetic_sides(5000, 5, 0.1, shift=0.5, seed=8)
    o, g = sd["original"], sd["gold"]
    cand = mixture(o, sd["p_gold"], 0.5, rng)
    ctrl = T.matched_controls(cand, o, seed=1)
    res = T.beyond_control(o, g, cand, ctrl)
    tc, tk = T.distance_travelled(o, g, cand), T.distance_travelled(o, g, ctrl)
    assert res["mean"] == pytest.approx(tc["mean"] - tk["mean"])
    assert res["per_pair"] == pytest.approx(np.subtract(tc["per_pair"], tk["per_pair"]))
    assert res["ci"][0] < res["mean"] < res["ci"][1] and res["ci"][0] > 0.1
    # the same change, by a control of itself: zero, with a zero-width interval
    same = T.beyond_control(o, g, cand, cand)
    assert same["mean"] == 0 and same["ci"] == pytest.approx([0, 0])


def test_quantity_side():
    """A quantity side drawn like the original is exceeded by a shifted gold side; one drawn like
    gold is not."""
    rng = np.random.default_rng(9)
    sd = T.synthetic_sides(3000, 6, 0.1, shift=0.5, seed=9)
    o, g = sd["original"], sd["gold"]
    res = T.quantity_comparison(o, g, rng.random(o.shape) < sd["p_original"])
    assert res["p_value"] < 0.05 and res["difference"] > res["null_interval"][1]
    assert res["original_vs_gold"] > res["original_vs_quantity"]
    assert res["splits"] == 64 and res["exact"]  # all 2^6 swaps: Δ is not symmetric
    assert res["null_mean"] == pytest.approx(0.0, abs=1e-12)
    assert abs(res["quantity_position"]["mean"]) < 0.25
    res_gold = T.quantity_comparison(o, g, rng.random(o.shape) < sd["p_gold"])
    assert res_gold["p_value"] > 0.05
    assert res_gold["quantity_position"]["mean"] == pytest.approx(1.0, abs=0.25)


# --- the report -------------------------------------------------------------------------------


def test_report_on_pytrees_is_json_and_reads_as_a_table():
    rng = np.random.default_rng(10)
    sd = T.synthetic_sides(3000, 4, 0.1, shift=0.5, seed=10)
    prunable = {"a": True, "b": True, "head": False}

    def tree(bits):
        return {"a": jnp.asarray(bits[:2000].reshape(40, 50)),
                "b": jnp.asarray(bits[2000:].reshape(20, 50)), "head": jnp.ones(3, bool)}

    orig = [tree(m) for m in sd["original"]]
    gold = [tree(m) for m in sd["gold"]]
    half = [tree(m) for m in mixture(sd["original"], sd["p_gold"], 0.5, rng)]
    rand = [tree(m) for m in swapped(sd["original"], 0.3, rng)]
    rep = T.topology_report(orig, gold, prunable, {"half gold": half, "random": rand},
                            controls={"random": rand}, quantity_side=gold, seed=3)
    json.dumps(rep)
    assert rep["seeds"] == 4 and rep["units"] == 3000 and rep["layers"] == [2000, 1000]
    assert rep["sides"]["test"]["splits"] == 8 and rep["sides"]["auc"]["splits"] == 8
    half_rep, rand_rep = rep["candidates"]["half gold"], rep["candidates"]["random"]
    assert half_rep["control"]["source"] == "matched random swaps"
    assert half_rep["changed"] == pytest.approx(half_rep["control"]["changed"])
    assert 0.3 < half_rep["travelled"]["mean"] < 0.7
    assert abs(half_rep["control"]["travelled"]["mean"]) < 0.25
    assert rand_rep["control"]["source"] == "given"
    assert rand_rep["beyond_control"]["mean"] == 0.0  # its own control
    assert rep["sides"]["quantity"]["quantity_position"]["mean"] == pytest.approx(1.0)
    # the same seed gives the same controls and numbers
    assert T.topology_report(orig, gold, prunable, {"half gold": half}, seed=3)["candidates"][
        "half gold"] == half_rep
    table = T.format_topology_table(rep)
    assert "| half gold |" in table and "| random |" in table
    for words in ("distance to gold set", "distance travelled, original 0 → gold 1",
                  "its random control", "beyond its control", "leave-one-pair-out LLR",
                  "data-quantity side"):
        assert words in table
    assert "smallest possible p-value is 1/8: no difference can be significant" in table
    with pytest.raises(ValueError, match=r"controls \['other'\] name no candidate"):
        T.topology_report(orig, gold, prunable, {"random": rand}, controls={"other": rand})
    with pytest.raises(ValueError, match="4 original masks, 3 candidate 'short' masks"):
        T.topology_report(orig, gold, prunable, {"short": rand[:3]})
