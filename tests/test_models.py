"""Models: shapes, batch-norm state, prunable leaves, registry errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unprune_jax import losses, masks, optim
from unprune_jax.models import get_model, init_model, make_apply_fn
from unprune_jax.train import TrainState, make_train_step


def test_resnet18_cifar_variant_trains_with_batch_norm_state():
    model = get_model("resnet18", width=8)  # the real topology, narrow for the test
    x = jnp.ones((2, 32, 32, 3))
    params, state = init_model(model, jax.random.PRNGKey(0), x)
    flags = masks.prunable_leaves(params)
    kernels = [p for p, f in zip(masks.leaf_paths(params), jax.tree.leaves(flags)) if f]
    assert len(kernels) == 1 + 16 + 3  # stem, 8 blocks × 2 convs, 3 shortcuts; head excluded
    assert "head/kernel" not in kernels and "stem/kernel" in kernels
    assert params["stem"]["kernel"].shape == (3, 3, 3, 8)  # 3×3 stem, no max-pool
    apply_fn = make_apply_fn(model)
    logits, new_state = apply_fn(params, state, x, True)
    assert logits.shape == (2, 10)
    mean0 = state["batch_stats"]["stem_bn"]["mean"]
    assert not np.allclose(new_state["batch_stats"]["stem_bn"]["mean"], mean0)
    tx = optim.sgd()
    mask = masks.topk_mask(jax.tree.map(jnp.abs, params), 0.2, flags)
    st = TrainState.create(params, state, tx, mask)
    st, m = make_train_step(apply_fn, tx, losses.cross_entropy)(
        st, np.random.rand(2, 32, 32, 3).astype(np.float32), np.array([1, 2]), np.ones(2))
    assert np.isfinite(float(m["loss"]))
    assert masks.density(st.mask, flags) == pytest.approx(0.2, abs=1e-4)


@pytest.mark.parametrize("pool", ["stride", "max"])
def test_small_cnn_shapes(pool):
    model = get_model("small_cnn", pool=pool)
    params, state = init_model(model, jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1)))
    assert state == {} and params["fc"]["kernel"].shape == (7 * 7 * 64, 128)
    logits, _ = make_apply_fn(model)(params, state, jnp.zeros((3, 28, 28, 1)), False)
    assert logits.shape == (3, 10)


def test_unknown_model_suggests_the_closest():
    with pytest.raises(ValueError, match="Did you mean 'resnet18'"):
        get_model("resnet-18")


# ------------------------------------------------------------- AlexNet and ViT

from unprune_jax.models import MODELS, default_prunable  # noqa: E402
from unprune_jax.models.cnn import max_pool_2x2  # noqa: E402


def _n_params(params):
    return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def _dense(n_in, n_out):  # kernel + bias
    return n_in * n_out + n_out


def _conv(k, c_in, c_out):
    return k * k * c_in * c_out + c_out


def _shapes(model, shape):
    """Params (as shapes) and logits shape of ``model`` on a batch of 2, without computing."""
    x = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), x)
    return variables["params"], jax.eval_shape(model.apply, variables, x)


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_alexnet_shapes_and_parameter_count(shape):
    params, out = _shapes(get_model("alexnet"), shape)
    c = shape[-1]
    # 5×5, 5×5, 3×3, 3×3, 3×3 convs; both input sizes end at 4×4×256 after three pools.
    convs = (_conv(5, c, 64) + _conv(5, 64, 192) + _conv(3, 192, 384) + _conv(3, 384, 256)
             + _conv(3, 256, 256))
    dense = _dense(4 * 4 * 256, 1024) + _dense(1024, 1024) + _dense(1024, 10)
    assert _n_params(params) == convs + dense  # 7,706,442 for CIFAR
    assert params["fc0"]["kernel"].shape == (4096, 1024)
    assert out.shape == (2, 10) and out.dtype == jnp.float32
    # The same topology, narrow, really runs on both sizes.
    model = get_model("alexnet", widths=(4, 4, 8, 8, 8), hidden=(16, 16))
    p, state = init_model(model, jax.random.PRNGKey(0), jnp.zeros((1, *shape)))
    assert p["fc0"]["kernel"].shape == (4 * 4 * 8, 16) and state == {}
    assert make_apply_fn(model)(p, state, jnp.ones((2, *shape)), False)[0].shape == (2, 10)


@pytest.mark.parametrize("shape, tokens", [((32, 32, 3), 65), ((28, 28, 1), 50)])
def test_vit_small_shapes_and_parameter_count(shape, tokens):
    params, out = _shapes(get_model("vit_small"), shape)
    d, m = 192, 768
    block = 2 * 2 * d + 4 * _dense(d, d) + _dense(d, m) + _dense(m, d)  # 2 LNs, q/k/v/out, MLP
    embed = _conv(4, shape[-1], d) + d + tokens * d  # patches, class token, positions
    assert _n_params(params) == embed + 6 * block + 2 * d + _dense(d, 10)  # 2,693,578 at 32×32
    assert params["pos_embed"].shape == (1, tokens, d)
    assert params["block0"]["attn"]["query"]["kernel"].shape == (d, 3, 64)
    assert out.shape == (2, 10) and out.dtype == jnp.float32
    model = get_model("vit_small", depth=1, dim=16, heads=2, mlp_dim=32)
    p, state = init_model(model, jax.random.PRNGKey(0), jnp.zeros((1, *shape)))
    assert p["pos_embed"].shape == (1, tokens, 16)
    assert make_apply_fn(model)(p, state, jnp.ones((2, *shape)), False)[0].shape == (2, 10)


def test_vit_gap_pool_has_no_class_token():
    params, out = _shapes(get_model("vit_small", depth=1, pool="gap"), (32, 32, 3))
    assert "cls" not in params and params["pos_embed"].shape == (1, 64, 192)
    assert out.shape == (2, 10)


def test_vit_b16_shapes_without_running():
    params, out = _shapes(get_model("vit_b16", num_classes=1000), (224, 224, 3))
    assert _n_params(params) == 86_567_656  # ViT-B/16 with a 1000-way head
    assert params["pos_embed"].shape == (1, 197, 768) and len(
        [k for k in params if k.startswith("block")]) == 12
    assert out.shape == (2, 1000) and out.dtype == jnp.float32


def test_resnet18_imagenet_stem_shapes_without_running():
    params, out = _shapes(get_model("resnet18", num_classes=1000, stem="imagenet"), (224, 224, 3))
    assert params["stem"]["kernel"].shape == (7, 7, 3, 64)
    assert _n_params(params) == 11_689_512  # torchvision's ResNet-18
    assert out.shape == (2, 1000)


def test_max_pool_2x2_matches_numpy_with_ceil_mode():
    x = np.random.default_rng(0).normal(size=(2, 7, 6, 3)).astype(np.float32)
    out = np.asarray(max_pool_2x2(jnp.asarray(x), ceil=True))
    assert out.shape == (2, 4, 3, 3)
    for i in range(4):
        for j in range(3):
            np.testing.assert_array_equal(
                out[:, i, j], x[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2].max(axis=(1, 2)))


def _kept_paths(name, params):
    flags = masks.prunable_leaves(params, *default_prunable(name))
    return {p for p, f in zip(masks.leaf_paths(params), jax.tree.leaves(flags)) if f}


def test_default_prunable_selects_exactly_the_intended_leaves():
    p, _ = _shapes(get_model("vit_small", depth=2), (32, 32, 3))
    assert _kept_paths("vit_small", p) == {
        f"block{b}/{leaf}/kernel" for b in range(2)
        for leaf in ("attn/query", "attn/key", "attn/value", "attn/out", "fc1", "fc2")}
    p, _ = _shapes(get_model("alexnet"), (28, 28, 1))
    assert _kept_paths("alexnet", p) == {f"conv{i}/kernel" for i in range(5)} | {
        "fc0/kernel", "fc1/kernel"}
    assert default_prunable("vit_b16") == default_prunable("vit_small")
    assert all(len(default_prunable(n)) == 2 for n in MODELS)  # every model has a predicate
    with pytest.raises(ValueError, match="Did you mean 'vit_b16'"):
        default_prunable("vit-b16")


@pytest.mark.parametrize("name, kw, shape", [
    ("alexnet", dict(widths=(8, 8, 8, 8, 8), hidden=(16, 16)), (28, 28, 1)),
    ("vit_small", dict(depth=1, dim=16, heads=2, mlp_dim=32), (32, 32, 3)),
])
def test_a_pruned_kernel_contributes_nothing(name, kw, shape):
    """Pruning a whole prunable kernel equals zeroing it; the masked step keeps it at zero."""
    model = get_model(name, **kw)
    params, state = init_model(model, jax.random.PRNGKey(1), jnp.zeros((1, *shape)))
    flags = masks.prunable_leaves(params, *default_prunable(name))
    target = sorted(_kept_paths(name, params))[-1]  # alexnet: fc1/kernel; vit: block0/fc2/kernel
    mask = jax.tree_util.tree_map_with_path(
        lambda path, p: jnp.full(p.shape, masks.path_str(path) != target), params)
    apply_fn = make_apply_fn(model)
    x = np.random.default_rng(0).random((3, *shape), np.float32)
    masked = masks.apply_mask(params, mask)
    zeroed = jax.tree_util.tree_map_with_path(
        lambda path, p: p * 0 if masks.path_str(path) == target else p, params)
    np.testing.assert_allclose(apply_fn(masked, state, x, False)[0],
                               apply_fn(zeroed, state, x, False)[0], rtol=1e-6)
    changed = jax.tree_util.tree_map_with_path(  # a pruned entry's value must not matter
        lambda path, p: p + 3.0 if masks.path_str(path) == target else p, params)
    np.testing.assert_allclose(apply_fn(masks.apply_mask(changed, mask), state, x, False)[0],
                               apply_fn(zeroed, state, x, False)[0], rtol=1e-6)
    tx = optim.sgd()
    st = TrainState.create(params, state, tx, mask)
    st, m = make_train_step(apply_fn, tx, losses.cross_entropy)(st, x, np.array([0, 1, 2]),
                                                              np.ones(3))
    leaf = dict(zip(masks.leaf_paths(st.params), jax.tree.leaves(st.params)))[target]
    assert np.isfinite(float(m["loss"])) and not np.any(np.asarray(leaf))
    assert masks.density(st.mask, flags) < 1.0


@pytest.mark.parametrize("name, kw, shape", [
    ("small_cnn", {}, (28, 28, 1)),
    ("mlp", {}, (28, 28, 1)),
    ("resnet18", dict(width=4, blocks=(1, 1)), (32, 32, 3)),
    ("alexnet", dict(widths=(16, 16, 16, 16, 16), hidden=(32, 32)), (32, 32, 3)),
    ("vit_small", dict(depth=1, dim=32, heads=2, mlp_dim=64), (32, 32, 3)),
])
def test_bf16_compute_is_close_to_float32(name, kw, shape):
    f32, b16 = get_model(name, **kw), get_model(name, dtype="bfloat16", **kw)
    x = jnp.asarray(np.random.default_rng(0).random((4, *shape), np.float32))
    params, state = init_model(f32, jax.random.PRNGKey(0), x[:1])
    p16, _ = init_model(b16, jax.random.PRNGKey(0), x[:1])
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(p16))  # params stay float32
    ref, _ = make_apply_fn(f32)(params, state, x, False)
    out, _ = make_apply_fn(b16)(params, state, x, False)
    assert out.dtype == jnp.float32 and ref.dtype == jnp.float32
    scale = float(jnp.max(jnp.abs(ref)))
    err = float(jnp.max(jnp.abs(out - ref)))
    assert 0 < err < 0.05 * scale + 1e-2  # bf16 really ran (err > 0), and stayed close


def test_dropout_without_rng_is_refused():
    with pytest.raises(ValueError, match="dropout=0.1.*set dropout=0"):
        make_apply_fn(get_model("vit_small", dropout=0.1))


def test_unknown_model_hint_for_new_names():
    with pytest.raises(ValueError, match="Did you mean 'alexnet'"):
        get_model("AlexNet")
