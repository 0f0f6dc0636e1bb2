"""Masks: exact top-k against a numpy reference, regrowth, errors, similarity by hand."""

import jax.numpy as jnp
import numpy as np
import pytest

from unprune_jax import masks


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
