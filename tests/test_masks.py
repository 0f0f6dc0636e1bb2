"""Masks: exact top-k against a numpy reference, regrowth, errors, similarity by hand."""

import jax.numpy as jnp
import numpy as np
import pytest

from unprune_jax import masks
from unprune_jax import scores as uj_scores


def tree(seed=0, dup=False):
    rng = np.random.default_rng(seed)
    t = {
        "conv": {"kernel": rng.normal(size=(3, 3, 2, 4)).astype(np.float32),
                 "bias": rng.normal(size=(4,)).astype(np.float32)},
        "fc": {"kernel": rng.normal(size=(36, 5)).astype(np.float32),
               "bias": rng.normal(size=(5,)).astype(np.float32)},
        "head": {"kernel": rng.normal(size=(5, 3)).astype(np.float32),
                 "bias": np.zeros(3, np.float32)},
    }
    if dup:  # many exact ties
        t["conv"]["kernel"] = np.round(t["conv"]["kernel"], 0)
        t["fc"]["kernel"] = np.round(t["fc"]["kernel"], 0)
    return t


def numpy_global_topk(t, density):
    """Reference: concatenate prunable kernels (leaf order: conv, fc), stable sort by −|θ|."""
    leaves = [np.abs(t["conv"]["kernel"]).ravel(), np.abs(t["fc"]["kernel"]).ravel()]
    flat = np.concatenate(leaves)
    k = int(round(density * flat.size))
    keep = np.zeros(flat.size, bool)
    keep[np.argsort(-flat, kind="stable")[:k]] = True
    return keep[: leaves[0].size].reshape(3, 3, 2, 4), keep[leaves[0].size:].reshape(36, 5)


def test_prunable_default_excludes_head_and_biases():
    flags = masks.prunable_leaves(tree())
    assert flags == {"conv": {"kernel": True, "bias": False},
                     "fc": {"kernel": True, "bias": False},
                     "head": {"kernel": False, "bias": False}}
    flags = masks.prunable_leaves(tree(), exclude=())
    assert flags["head"]["kernel"] is True
    with pytest.raises(ValueError, match="nothing_matches"):
        masks.prunable_leaves(tree(), include=("nothing_matches",))


@pytest.mark.parametrize("density", [0.05, 0.1, 0.333, 0.5, 1.0])
@pytest.mark.parametrize("dup", [False, True])
def test_global_topk_matches_numpy(density, dup):
    t = tree(dup=dup)
    flags = masks.prunable_leaves(t)
    m = masks.topk_mask(masks.jax.tree.map(jnp.abs, t), density, flags, "global")
    ref_conv, ref_fc = numpy_global_topk(t, density)
    np.testing.assert_array_equal(m["conv"]["kernel"], ref_conv)
    np.testing.assert_array_equal(m["fc"]["kernel"], ref_fc)
    assert m["head"]["kernel"].all() and m["conv"]["bias"].all()
    kept, total = masks.count(m, flags)
    assert total == 72 + 180 and kept == int(round(density * total))


def test_per_layer_topk_exact_in_each_layer():
    t = tree(dup=True)
    flags = masks.prunable_leaves(t)
    m = masks.topk_mask(masks.jax.tree.map(jnp.abs, t), 0.25, flags, "per_layer")
    assert int(m["conv"]["kernel"].sum()) == 18 and int(m["fc"]["kernel"].sum()) == 45
    flat = np.abs(t["fc"]["kernel"]).ravel()
    ref = np.zeros(180, bool)
    ref[np.argsort(-flat, kind="stable")[:45]] = True
    np.testing.assert_array_equal(np.ravel(m["fc"]["kernel"]), ref)


def test_hand_computed_ties_go_to_lower_index():
    scores = {"a": {"kernel": jnp.array([[1.0, 2.0], [2.0, 1.0]])}}
    flags = {"a": {"kernel": True}}
    m = masks.topk_mask(scores, 0.75, flags)  # keep 3 of 4: both 2s and the first 1
    np.testing.assert_array_equal(m["a"]["kernel"], [[True, True], [True, False]])


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan"), "x"])
def test_density_outside_range_is_rejected(bad):
    t = tree()
    with pytest.raises(ValueError, match="density"):
        masks.topk_mask(t, bad, masks.prunable_leaves(t))


def test_density_keeping_nothing_is_rejected():
    t = tree()
    with pytest.raises(ValueError, match="keeps no entry"):
        masks.topk_mask(t, 1e-4, masks.prunable_leaves(t), "per_layer")


def test_mask_structure_mismatch_names_the_leaf():
    t = tree()
    m = masks.full_mask(t)
    del m["fc"]
    with pytest.raises(ValueError, match="fc"):
        masks.check_mask(t, m)
    m = masks.full_mask(t)
    m["fc"]["kernel"] = jnp.ones((36, 4), bool)
    with pytest.raises(ValueError, match="fc/kernel"):
        masks.check_mask(t, m)


def test_apply_mask_zeroes_pruned_entries_even_inf():
    p = {"w": jnp.array([1.0, jnp.inf, jnp.nan, 4.0])}
    out = masks.apply_mask(p, {"w": jnp.array([True, False, False, True])})
    np.testing.assert_array_equal(out["w"], [1.0, 0.0, 0.0, 4.0])


def test_regrow_revives_exact_count_by_score():
    flags = {"w": True}
    mask = {"w": jnp.array([True, False, False, False, False, True])}
    score = {"w": jnp.array([9.0, 1.0, 5.0, 5.0, 0.5, 0.0])}
    grown = masks.regrow_mask(mask, score, 0.5, flags)  # 4 pruned → revive 2: the two 5s
    np.testing.assert_array_equal(grown["w"], [True, False, True, True, False, True])
    same = masks.regrow_mask(mask, score, 0.0, flags)
    np.testing.assert_array_equal(same["w"], mask["w"])


def test_similarity_by_hand():
    a = {"w": jnp.array([1, 1, 0, 0, 1], bool)}
    b = {"w": jnp.array([1, 0, 1, 0, 1], bool)}
    s = masks.similarity(a, b)
    assert s["jaccard"] == pytest.approx(2 / 4)
    assert s["hamming"] == pytest.approx(2 / 5)
    assert (s["only_a"], s["only_b"], s["n"]) == (1, 1, 5)
    o = {"w": jnp.array([0, 1, 1, 1, 0], bool)}  # J(o, b) = 1/5
    assert masks.delta_jaccard(a, o, b) == pytest.approx(0.5 - 0.2)


# --- structured selection, allocation, iterative candidates ------------------------------------


def test_layer_allocation_is_exact_and_uniform():
    counts = masks.layer_allocation([10, 10, 10], 0.3)  # 9 to keep: 3 each
    assert counts == [3, 3, 3]
    counts = masks.layer_allocation([10, 10, 10], 0.25)  # round(7.5) = 8: 2.5 each → 3, 3, 2
    assert counts == [3, 3, 2] and sum(counts) == round(0.25 * 30)
    assert masks.layer_allocation([72, 180], 0.1) == [7, 18]


def test_erk_allocation_by_hand():
    # ERK weight Σdims/Πdims: (4,4) → 8/16 = 0.5, (2,8) → 10/16 = 0.625; keep 8 of 32
    # ε·(0.5·16 + 0.625·16) = 8 → ε = 4/9: densities 0.222, 0.278 → 3.56, 4.44 → 4, 4
    assert masks.layer_allocation([16, 16], 0.25, "erk", shapes=[(4, 4), (2, 8)]) == [4, 4]
    # a small layer that ERK would push past 1 is capped at 1, the rest is rescaled
    counts = masks.layer_allocation([4, 400], 0.2, "erk", shapes=[(2, 2), (20, 20)])
    assert counts[0] == 4 and sum(counts) == round(0.2 * 404)


def test_explicit_layer_densities_and_the_rest_share_the_budget():
    t = tree()
    flags = masks.prunable_leaves(t)
    m = masks.topk_mask(masks.jax.tree.map(jnp.abs, t), 0.5, flags, "per_layer",
                        layer_density={"conv": 1.0})
    assert int(m["conv"]["kernel"].sum()) == 72
    assert int(m["fc"]["kernel"].sum()) == round(0.5 * 252) - 72
    with pytest.raises(ValueError, match="matches no prunable leaf"):
        masks.topk_mask(t, 0.5, flags, "per_layer", layer_density={"nope": 0.5})


def test_filter_granularity_keeps_whole_filters_by_summed_score():
    k = np.zeros((2, 2, 1, 4), np.float32)
    k[..., 0], k[..., 1], k[..., 2], k[..., 3] = 1.0, 3.0, 2.0, 0.5
    t = {"conv": {"kernel": k}}
    m = masks.topk_mask(t, 0.5, {"conv": {"kernel": True}}, "per_layer", granularity="filter")
    np.testing.assert_array_equal(m["conv"]["kernel"][0, 0, 0], [False, True, True, False])
    assert m["conv"]["kernel"].all(axis=(0, 1, 2)).sum() == 2  # whole filters


def test_filter_granularity_on_a_dense_kernel_needs_permission():
    t = tree()
    flags = masks.prunable_leaves(t)
    with pytest.raises(ValueError, match="dense kernel 'fc/kernel'"):
        masks.topk_mask(t, 0.5, flags, granularity="filter")
    m = masks.topk_mask(masks.jax.tree.map(jnp.abs, t), 0.5, flags, "per_layer",
                        granularity="filter", allow_dense_filters=True)
    assert np.all(m["fc"]["kernel"].all(0) | ~m["fc"]["kernel"].any(0))  # whole neurons


def test_candidates_restrict_selection_for_iterative_pruning():
    scores = {"w": {"kernel": jnp.arange(10.0).reshape(2, 5)}}
    flags = {"w": {"kernel": True}}
    first = masks.topk_mask(scores, 0.6, flags)  # keeps 4..9
    rev = {"w": {"kernel": -scores["w"]["kernel"]}}  # now prefers the small ones
    second = masks.topk_mask(rev, 0.3, flags, candidates=first)  # 3 of the survivors: 4, 5, 6
    np.testing.assert_array_equal(np.ravel(second["w"]["kernel"]),
                                  [0, 0, 0, 0, 1, 1, 1, 0, 0, 0])


def test_emptied_layer_is_reported():
    scores = {"a": {"kernel": jnp.ones((2, 2))}, "b": {"kernel": jnp.full((2, 8), 5.0)}}
    flags = {"a": {"kernel": True}, "b": {"kernel": True}}
    with pytest.warns(UserWarning, match=r"\['a/kernel'\]"):
        masks.topk_mask(scores, 0.5, flags)
    with pytest.raises(ValueError, match="a/kernel"):
        masks.topk_mask(scores, 0.5, flags, on_empty_layer="error")


def test_regrow_whole_filters():
    mask = {"c": {"kernel": jnp.array([[True, False, False, True]] * 3)}}
    score = {"c": {"kernel": jnp.array([[0.0, 1.0, 5.0, 0.0]] * 3)}}
    grown = masks.regrow_mask(mask, score, 0.5, {"c": {"kernel": True}}, granularity="filter",
                              allow_dense_filters=True)
    np.testing.assert_array_equal(grown["c"]["kernel"], [[True, False, True, True]] * 3)


# --- issue 12: filter scores, infeasible pins, candidates, malformed masks ----------------------


def two_convs(entries0, entries1):
    """conv0 (1, 1, 2, 2): fan-in 2; conv1 (3, 3, 4, 4): fan-in 36; entries set per filter."""
    k0 = np.broadcast_to(np.asarray(entries0, np.float32)[:, None], (1, 1, 2, 2))
    k1 = np.broadcast_to(np.float32(entries1), (3, 3, 4, 4))
    t = {"conv0": {"kernel": jnp.asarray(k0)}, "conv1": {"kernel": jnp.asarray(k1)}}
    return t, {"conv0": {"kernel": True}, "conv1": {"kernel": True}}


def kept_filters(m, name):
    return np.asarray(m[name]["kernel"]).any(axis=(0, 1, 2)).tolist()


def test_global_filter_selection_ranks_a_broadcast_filter_score_by_its_value():
    # filter L2 norms 1.0 (conv0: entries 0.6, 0.8) and 0.5 (conv1: 36 entries of 0.5/6); the
    # score is the norm on every entry of the filter. Keep 3 of 6 filters: conv0's two (the
    # larger norm), then the first of conv1's four equal ones. Summing over the fan-in would rank
    # conv1's filters 18 against conv0's 2 and keep three conv1 filters.
    t, flags = two_convs([0.6, 0.8], 0.5 / 6)
    s = uj_scores.filter_l2(t)
    np.testing.assert_allclose(np.asarray(s["conv0"]["kernel"]).max(), 1.0, rtol=1e-6)
    m = masks.topk_mask(s, 0.5, flags, granularity="filter")
    assert kept_filters(m, "conv0") == [True, True]
    assert kept_filters(m, "conv1") == [True, False, False, False]


def test_filter_score_is_the_mean_of_its_entries():
    # per-entry scores: conv0's filters have mean |θ| 0.3 and 0.2; conv1's 36 entries 0.25 each.
    # The mean ranks 0.3 > 0.25 (four conv1 filters, first wins the tie) > 0.2; the sum over the
    # fan-in would rank conv1 (9.0) far above conv0 (0.6, 0.4).
    k0 = jnp.array([[[[0.1, 0.3], [0.5, 0.1]]]])  # (1, 1, 2, 2): filter 0 = [0.1, 0.5]
    t = {"conv0": {"kernel": k0}, "conv1": {"kernel": jnp.full((3, 3, 4, 4), 0.25)}}
    flags = {"conv0": {"kernel": True}, "conv1": {"kernel": True}}
    m = masks.topk_mask(t, 2 / 6, flags, granularity="filter")
    assert kept_filters(m, "conv0") == [True, False]
    assert kept_filters(m, "conv1") == [True, False, False, False]
    # regrowth ranks pruned filters by the same rule
    pruned = {"conv0": {"kernel": jnp.zeros((1, 1, 2, 2), bool)},
              "conv1": {"kernel": jnp.zeros((3, 3, 4, 4), bool)}}
    grown = masks.regrow_mask(pruned, t, 1 / 6, flags, granularity="filter")
    assert kept_filters(grown, "conv0") == [True, False] and not any(kept_filters(grown, "conv1"))


def test_infeasible_layer_density_pin_is_rejected():
    s = {"a": {"kernel": jnp.arange(100.0).reshape(10, 10)},
         "b": {"kernel": jnp.arange(100.0).reshape(10, 10)}}
    flags = {"a": {"kernel": True}, "b": {"kernel": True}}
    # 0.9 of 200 = 180 to keep; the pin keeps 10 of a, b would need 170 of its 100
    named = r"a/kernel \(layer_density '\^a' = 0.1\): 10\), leaving 170 .*b/kernel.*0 to 100"
    with pytest.raises(ValueError, match=named):
        masks.topk_mask(s, 0.9, flags, "per_layer", layer_density={"^a": 0.1})
    m = masks.topk_mask(s, 0.5, flags, "per_layer", layer_density={"^a": 0.1})  # feasible
    assert (int(m["a"]["kernel"].sum()), int(m["b"]["kernel"].sum())) == (10, 90)
    with pytest.raises(ValueError, match=r"keeps 20 .* pins keep 50 .*leaving -30"):
        masks.topk_mask(s, 0.1, flags, "per_layer", layer_density={"^a": 0.5})  # 50 > 20


def test_candidates_never_admit_a_non_candidate():
    scores = {"w": {"kernel": jnp.arange(10.0).reshape(2, 5)}}
    flags = {"w": {"kernel": True}}
    two = {"w": {"kernel": jnp.zeros((2, 5), bool).at[0, :2].set(True)}}
    with pytest.raises(ValueError, match=r"candidates keep 2 of the 10 .* 5"):
        masks.topk_mask(scores, 0.5, flags, candidates=two)
    with pytest.raises(ValueError, match=r"candidates keep 2 of the 10"):
        masks.topk_mask(scores, 0.5, flags, "per_layer", candidates=two)
    # a candidate scoring -inf still ranks above every non-candidate
    s = {"w": {"kernel": jnp.array([[-jnp.inf, -jnp.inf, -jnp.inf, 3.0, 4.0]])}}
    cand = {"w": {"kernel": jnp.array([[False, True, True, False, False]])}}
    m = masks.topk_mask(s, 0.4, {"w": {"kernel": True}}, candidates=cand)
    np.testing.assert_array_equal(m["w"]["kernel"], cand["w"]["kernel"])


def test_per_layer_candidates_move_the_surplus_to_layers_with_room():
    # uniform 0.5 of two 10-entry layers is 5 + 5, but a has only 3 candidates: a keeps its 3,
    # b keeps 7, the total stays round(0.5 · 20), and no pruned entry comes back.
    s = {"a": {"kernel": jnp.arange(10.0).reshape(2, 5)},
         "b": {"kernel": jnp.arange(10.0).reshape(2, 5)}}
    flags = {"a": {"kernel": True}, "b": {"kernel": True}}
    cand = {"a": {"kernel": jnp.zeros((2, 5), bool).at[0, :3].set(True)},
            "b": {"kernel": jnp.ones((2, 5), bool)}}
    m = masks.topk_mask(s, 0.5, flags, "per_layer", candidates=cand)
    np.testing.assert_array_equal(m["a"]["kernel"], cand["a"]["kernel"])
    assert int(m["b"]["kernel"].sum()) == 7
    assert masks.layer_allocation([10, 10], 0.5, capacity=[3, 10]) == [3, 7]


def test_iterative_per_layer_schedule_stays_inside_the_previous_mask():
    # SynFlow's 100-round schedule, per layer, rounds 48 → 49: the rounded share of the 19-entry
    # layer grows from 8 to 9 while the density falls. It keeps its 8; the others take the 1.
    sizes, d = [145, 178, 19], 0.1917416944203537
    d48, d49 = d ** 0.48, d ** 0.49
    assert masks.layer_allocation(sizes, d48) == [66, 81, 8]
    assert masks.layer_allocation(sizes, d49) == [64, 79, 9]
    rng = np.random.default_rng(0)
    s = {f"l{i}": {"kernel": jnp.asarray(rng.random((k, 1)))} for i, k in enumerate(sizes)}
    flags = {f"l{i}": {"kernel": True} for i in range(3)}
    before = masks.topk_mask(s, d48, flags, "per_layer")
    after = masks.topk_mask(s, d49, flags, "per_layer", candidates=before)
    for a, b in zip(masks.jax.tree.leaves(after), masks.jax.tree.leaves(before)):
        assert not np.any(np.asarray(a) & ~np.asarray(b))
    assert [int(after[f"l{i}"]["kernel"].sum()) for i in range(3)] == [65, 79, 8]
    assert masks.count(after, flags)[0] == round(d49 * sum(sizes))


def test_malformed_masks_are_refused_by_apply_mask_and_density():
    params = {"c": {"kernel": jnp.ones((3, 3, 32, 64)), "bias": jnp.zeros(64)}}
    flags = {"c": {"kernel": True, "bias": False}}
    good = masks.full_mask(params)
    short = {"c": {"kernel": jnp.ones(64, bool), "bias": good["c"]["bias"]}}
    with pytest.raises(ValueError, match=r"c/kernel.*\(64,\).*\(3, 3, 32, 64\)"):
        masks.apply_mask(params, short)
    floats = {"c": {"kernel": jnp.full((3, 3, 32, 64), 0.5), "bias": good["c"]["bias"]}}
    with pytest.raises(ValueError, match="c/kernel.*float32.*bool"):
        masks.apply_mask(params, floats)
    with pytest.raises(ValueError, match="c/kernel.*float32.*bool"):
        masks.density(floats, flags)
    with pytest.raises(ValueError, match="mask.*c/kernel"):
        masks.density({"c": {"kernel": good["c"]["kernel"]}}, flags)
    assert masks.density(good, flags) == 1.0
