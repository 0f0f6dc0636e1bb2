"""Pruning and regrow scores: ``f(params, ...) -> score pytree`` shaped like the params.

Higher = more important. Every score is a pure function; data-driven scores take the batch they
are computed on, so the retained data can drive them (for un-pruning and the gold standard).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from . import losses as losses_lib
from . import masks as masks_lib
from .registry import Registry


def magnitude(params):
    """|θ|: the lowest-weight-magnitude (LWM) score."""
    return jax.tree.map(jnp.abs, params)


def random(params, key):
    """Uniform random scores in [0, 1): a random-pruning control."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef, [jax.random.uniform(k, jnp.shape(p)) for k, p in zip(keys, leaves)]
    )


def _loss_grad(params, model_state, apply_fn, x, y, w, mask):
    if mask is not None:
        params = masks_lib.apply_mask(params, mask)
    w = jnp.ones(y.shape, jnp.float32) if w is None else w

    def loss(p):
        return losses_lib.cross_entropy(apply_fn(p, model_state, x, False)[0], y, w)

    grads = jax.grad(loss)(params)
    return grads if mask is None else masks_lib.apply_mask(grads, mask)


def snip(params, model_state, apply_fn, x, y, *, weights=None, mask=None, grad_only=False):
    """SNIP connection sensitivity |θ ⊙ ∇_θ L(θ; x, y)| (Lee et al., 2019).

    The loss is the (weighted) mean cross-entropy in eval mode. ``grad_only=True`` drops the θ
    factor, |∇_θ L|, which is what Unlearn-Sparse's ``snip_importance_score`` computes.
    With ``mask``, the loss is evaluated at θ ⊙ M and pruned entries score 0.
    """
    grads = _loss_grad(params, model_state, apply_fn, x, y, weights, mask)
    if grad_only:
        return jax.tree.map(jnp.abs, grads)
    return jax.tree.map(lambda p, g: jnp.abs(p * g), params, grads)


def fisher(params, model_state, apply_fn, x, y, *, mask=None, chunk: int = 64):
    """Optimal Brain Damage saliency ½·F_ii·θ_i² (LeCun et al., 1990), the Hessian diagonal
    approximated by the empirical Fisher diagonal F_ii = mean_n (∂ℓ_n/∂θ_i)² of the per-example
    cross-entropies ℓ_n on ``(x, y)`` in eval mode (Theis et al., 2018, "Faster gaze prediction
    with dense networks and Fisher pruning"). Examples go through in chunks of ``chunk``
    (per-example gradients are ``chunk`` × the parameters). With ``mask``, the loss is evaluated
    at θ ⊙ M and pruned entries score 0. (SFR-on's "Fisher", ``unlearn.sfron.fisher_diagonal``,
    is another estimator: squared *batch-mean* gradients, as its authors define it.)
    """
    x, y = jnp.asarray(x), jnp.asarray(y)
    n = y.shape[0]
    if n == 0:
        raise ValueError("scores.fisher: no examples")
    chunk = min(chunk, n)
    pad = -n % chunk
    w = jnp.concatenate([jnp.ones((n,), jnp.float32), jnp.zeros((pad,), jnp.float32)])
    x = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)]).reshape(
        -1, chunk, *x.shape[1:])
    y = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)]).reshape(-1, chunk)
    at = params if mask is None else masks_lib.apply_mask(params, mask)
    diag = _fisher_diagonal(at, model_state, apply_fn, x, y, w.reshape(-1, chunk))
    out = jax.tree.map(lambda f, p: 0.5 * f * jnp.square(p), diag, at)
    return out if mask is None else masks_lib.apply_mask(out, mask)


@functools.partial(jax.jit, static_argnums=(2,))
def _fisher_diagonal(params, model_state, apply_fn, x, y, w):
    def one(xi, yi):
        def loss(p):
            logits = apply_fn(p, model_state, xi[None], False)[0]
            return losses_lib.cross_entropy(logits, yi[None], jnp.ones((1,), jnp.float32))
        return jax.grad(loss)(params)

    def body(acc, batch):
        xb, yb, wb = batch
        g = jax.vmap(one)(xb, yb)
        return jax.tree.map(lambda a, gi: a + jnp.tensordot(wb, jnp.square(gi), axes=1), acc,
                            g), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    total, _ = jax.lax.scan(body, zeros, (x, y, w))
    return jax.tree.map(lambda t: t / jnp.sum(w), total)


def saliency(params, model_state, apply_fn, x, y, *, weights=None, mask=None):
    """Gradient saliency |∇_θ L| on the given (forget) data, as SalUn uses it."""
    return snip(params, model_state, apply_fn, x, y, weights=weights, mask=mask, grad_only=True)


def synflow(params, model_state, apply_fn: Callable, input_shape, *, mask=None,
            dtype=jnp.float32):
    """SynFlow (Tanaka et al., 2020): |θ ⊙ ∂R/∂θ| with R = Σ f_{|θ|}(𝟙), data-free.

    The network is linearised (every parameter and model-state entry replaced by its absolute
    value), fed one all-ones input of shape ``(1, *input_shape)`` in eval mode, and R is the sum
    of its outputs. ``dtype=jnp.float64`` computes in double precision (deep nets overflow in
    float32); the scores come back in float32 either way.
    """
    if mask is not None:
        params = masks_lib.apply_mask(params, mask)
    if jnp.dtype(dtype) == jnp.float64:
        with jax.enable_x64(True):
            return _synflow(params, model_state, apply_fn, tuple(input_shape), "float64")
    return _synflow(params, model_state, apply_fn, tuple(input_shape), "float32")


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _synflow(params, model_state, apply_fn, input_shape, dtype):
    cast = lambda t: jax.tree.map(lambda a: jnp.abs(jnp.asarray(a, dtype)), t)
    p, s = cast(params), cast(model_state)

    def r(p):
        return jnp.sum(apply_fn(p, s, jnp.ones((1, *input_shape), dtype), False)[0])

    grads = jax.grad(r)(p)
    return jax.tree.map(lambda a, g: (a * g).astype(jnp.float32), p, grads)


def filter_l2(params):
    """Each entry scored by the L2 norm of its output filter (conv) or output neuron (dense).

    Flax kernels keep output channels last (HWIO, or (in, out)): the norm is taken over all other
    axes and broadcast back, so every weight of a filter carries the filter's score. Vectors
    (biases) score by magnitude.
    """

    def norm(p):
        if jnp.ndim(p) < 2:
            return jnp.abs(p)
        axes = tuple(range(jnp.ndim(p) - 1))
        return jnp.broadcast_to(jnp.sqrt(jnp.sum(jnp.square(p), axis=axes, keepdims=True)),
                                jnp.shape(p))

    return jax.tree.map(norm, params)


#: Every score by name (``unprune-jax list scores``); :func:`get` looks one up.
SCORES: Registry[Callable] = Registry("score")
SCORES.register("magnitude", "|θ|, the weight magnitude (lowest-magnitude pruning, LWM)", magnitude)
SCORES.register("random", "uniform random (control)", random)
SCORES.register("snip", "|θ ⊙ ∇L| on a batch (grad_only: |∇L|)", snip)
SCORES.register("synflow", "|θ ⊙ ∂R/∂θ|, R = Σ f_|θ|(1), data-free", synflow)
SCORES.register("filter_l2", "L2 norm of each output filter / neuron", filter_l2)
SCORES.register("saliency", "|∇L| on the forget data (SalUn)", saliency)
SCORES.register("fisher", "½·F_ii·θ² with the empirical Fisher diagonal on a batch (Optimal Brain "
                "Damage)", fisher)


def get(name: str) -> Callable:
    """The score function registered as ``name``; unknown names get the closest valid one."""
    return SCORES.get(name)
