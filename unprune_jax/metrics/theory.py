"""The theory's quantities: masked Hessian spectra, the unlearning-error proxy, verification error.

Thudi et al. ("Unrolling SGD", EuroS&P 2022) expand t steps of SGD around the starting weights
θ_0 and bound the error of *single-gradient unlearning* (add back η·∇L(θ_0; B*) for the deleted
batch B*) by the second-order terms of that expansion. Their proxy for the verification error
‖θ_u − θ_retrain‖ is::

    e = (η²/2) · t · ‖θ_t − θ_0‖₂ · σ,

σ a measure of the Hessian's size. Jia et al. (NeurIPS 2023) and the un-pruning paper (Eq. 13)
restrict it to a mask M::

    e(M) = (η²/2) · t · ‖M ⊙ (θ_t − θ_0)‖₂ · λ(M),

with λ(M) "the largest eigenvalue among the dimensions left in the subnetwork". The well-posed
reading (ours, reference §1.3) is the top |eigenvalue| of the principal sub-matrix H_MM of the
Hessian on the kept coordinates, i.e. of the operator v ↦ M ⊙ H(M ⊙ v). By Cauchy interlacing
λ(M) ≤ λ(all) and λ is monotone along nested masks.

σ vs sqrt(σ): the paper's formula (and ours by default, ``sigma='eig'``) multiplies by the
eigenvalue itself. Thudi et al.'s released code multiplies by the *square root* of PyHessian's top
eigenvalue; ``sigma='sqrt'`` reproduces that. Only the default has the units the expansion gives:
the second-order term is η·H·(accumulated η·gradients), so e scales with H, not √H.

The algebra (Hessian-vector products, power iteration, Lanczos) is :mod:`unprune_jax.linalg`;
this module applies it to the masked Hessian. Everything here is a pure function over pytrees and
runs under ``jit``, except :func:`verification_error`, a host-side float64 metric like the rest
of ``metrics``.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from .. import losses
from .. import masks as masks_lib
from ..linalg import lanczos, masked_operator, power_iteration_info
from .masks import weight_distance

PyTree = Any
LossFn = Callable[[PyTree], jax.Array]

SIGMAS = ("eig", "sqrt")

__all__ = [
    "top_eigenvalue", "lanczos_topk", "loss_on_batch", "unlearning_error_proxy",
    "verification_error", "unrolled_sgd_check",
]


# --- λ(M): the masked Hessian's spectrum ---------------------------------------------------------


def _masked_normal(key: jax.Array, params: PyTree, mask: PyTree) -> PyTree:
    """M ⊙ N(0, I) shaped like ``params``: the start vectors of the eigen-solvers."""
    return masks_lib.apply_mask(optax.tree.random_like(key, params), mask)


def top_eigenvalue(
    loss_fn: LossFn,
    params: PyTree,
    mask: PyTree,
    key: jax.Array,
    *,
    iters: int = 100,
    tol: float = 1e-4,
    shift: float | None = None,
):
    """λ(M): the top eigenvalue of the masked Hessian M ⊙ H(M ⊙ ·) at M ⊙ params.

    Power iteration on forward-over-reverse HVPs from v₀ = M ⊙ N(0, I) (``key``). With
    ``shift=None`` it is the eigenvalue of largest magnitude (possibly negative at a saddle); with
    a shift c ≥ −λ_min it is the largest algebraic eigenvalue (see
    :func:`unprune_jax.linalg.power_iteration`).
    Pruned coordinates never enter: the operator is H_MM, so changing H outside M changes nothing.
    H is taken at M ⊙ params (the sparse network). Interlacing (λ(M₁) ≤ λ(M₂) for M₁ ⊆ M₂) compares
    masks at one Hessian, so it holds when ``params`` is zero outside the smallest mask; a pruned
    model's own λ(M) at its own weights is a different Hessian for each mask.
    Jittable (``loss_fn`` closes over the batch; jit the caller to compile it once).

    Args:
        loss_fn: scalar loss of a params pytree, e.g. from :func:`loss_on_batch`.
        params: the weights.
        mask: bool pytree shaped like ``params``; ``masks.full_mask`` for the dense λ.
        key: PRNG key of the start vector.
        iters: the most HVPs.
        tol: stop once the estimate changes by at most ``tol`` relative between two steps.
        shift: see above.

    Returns:
        ``(eigenvalue, vector, info)``: the eigenvalue (scalar, in loss units per squared weight
        unit), the unit eigenvector pytree (zero at pruned entries), and ``info`` with
        ``iterations`` (HVPs taken) and ``residual`` ‖H_MM v − λv‖ (small when converged).
    """
    matvec = masked_operator(loss_fn, params, mask)
    v0 = _masked_normal(key, params, mask)
    return power_iteration_info(matvec, v0, iters, tol, 0.0 if shift is None else shift)


def _kept(mask: PyTree) -> int | None:
    """The number of kept entries if the mask is concrete, else None (under a trace)."""
    try:
        return int(sum(np.asarray(m).sum() for m in jax.tree.leaves(mask)))
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        return None


def lanczos_topk(
    loss_fn: LossFn,
    params: PyTree,
    mask: PyTree,
    key: jax.Array,
    *,
    k: int = 5,
    steps: int = 30,
    by: str = "algebraic",
):
    """The top-k eigenvalues of the masked Hessian M ⊙ H(M ⊙ ·) from ``steps`` Lanczos steps.

    Works on the flattened parameter vector (``ravel_pytree``): the Krylov basis costs
    ``steps`` × n memory, so keep ``steps`` small (20–50) for networks. The outermost Ritz values
    converge first; the k-th is reliable when ``steps`` is a few times k.

    Args:
        loss_fn, params, mask, key: as :func:`top_eigenvalue`.
        k: how many eigenvalues, 1 ≤ k ≤ steps.
        steps: Lanczos steps m, at most the number of kept entries.
        by: ``'algebraic'`` (the k largest λ) or ``'magnitude'`` (the k largest |λ|, returned
            with their signs).

    Returns:
        ``(eigenvalues, info)``: (k,) array, descending by ``by``; info as
        :func:`unprune_jax.linalg.lanczos`'s plus ``ritz`` (all m Ritz values, descending).

    Raises:
        ValueError: if ``k`` or ``steps`` is out of range (naming it) or ``by`` is unknown.
    """
    if by not in ("algebraic", "magnitude"):
        raise ValueError(f"lanczos_topk by must be 'algebraic' or 'magnitude', got {by!r}")
    if not 1 <= k <= steps:
        raise ValueError(f"lanczos_topk needs 1 ≤ k ≤ steps, got k={k}, steps={steps}")
    kept = _kept(mask)
    if kept is not None and steps > kept:
        raise ValueError(f"lanczos_topk steps={steps} exceeds the {kept} kept coordinates "
                         "(the Krylov space cannot be larger)")
    flat, unravel = ravel_pytree(params)
    flat_mask = ravel_pytree(mask)[0].astype(flat.dtype)
    op = masked_operator(loss_fn, params, mask)
    matvec = lambda v: ravel_pytree(op(unravel(v)))[0]
    draws = jax.random.normal(key, (steps + 1, flat.shape[0]), flat.dtype) * flat_mask
    ritz, info = lanczos(matvec, draws[0], steps, draws[1:])
    order = jnp.argsort(-jnp.abs(ritz)) if by == "magnitude" else jnp.arange(steps)
    return ritz[order][:k], {**info, "ritz": ritz}


# --- the loss closure -----------------------------------------------------------------------------


def loss_on_batch(apply_fn, model_state: PyTree, x, y, w=None) -> LossFn:
    """params ↦ the (weighted) mean cross-entropy of the model on one batch, in eval mode.

    Eval mode keeps batch norm on its running statistics, so the loss is a fixed function of the
    parameters (train-mode BN would make every example's loss depend on the batch).

    Args:
        apply_fn: ``(params, model_state, x, train) -> (logits, model_state)``.
        model_state: e.g. ``{'batch_stats': ...}``; ``{}`` if none.
        x: (B, ...) inputs. y: (B,) integer labels. w: (B,) example weights (None: all 1).

    Raises:
        ValueError: if x, y (and w) disagree on B.
    """
    b = np.shape(x)[0]
    if np.shape(y) != (b,) or (w is not None and np.shape(w) != (b,)):
        raise ValueError(f"loss_on_batch: x has {b} examples but y has shape {np.shape(y)}"
                         + ("" if w is None else f" and w {np.shape(w)}"))
    w = jnp.ones((b,), jnp.float32) if w is None else w

    def loss(params):
        return losses.cross_entropy(apply_fn(params, model_state, x, False)[0], y, w)

    return loss


# --- the proxy and the verification error ---------------------------------------------------------


def unlearning_error_proxy(
    eta,
    t,
    params_t: PyTree,
    params_0: PyTree,
    mask: PyTree,
    lam,
    sigma: str = "eig",
) -> jax.Array:
    """e(M) = (η²/2) · t · ‖M ⊙ (θ_t − θ_0)‖₂ · σ(λ(M)).

    ``sigma='eig'`` (default, the paper's Eq. 13 and Jia et al.'s Prop. 2): σ = |λ(M)|.
    ``sigma='sqrt'``: σ = √|λ(M)|, what Thudi et al.'s code computes from PyHessian's eigenvalue.
    |λ| because a largest-magnitude eigenvalue may be negative; it is the top singular value of
    the symmetric H_MM. The mask covers every leaf (unprunable ones are all-True), so the norm
    is over all kept parameters. A proxy whose ranking, not its value, is meant to follow the
    verification error (Thudi et al. validate it by correlation).

    Args:
        eta: the SGD learning rate η (> 0).
        t: the number of SGD steps (≥ 0).
        params_t: θ_t, the weights after the t steps.
        params_0: θ_0, the weights the expansion starts from.
        mask: bool pytree M.
        lam: λ(M), e.g. from :func:`top_eigenvalue`.
        sigma: ``'eig'`` or ``'sqrt'``.

    Returns:
        A scalar (units: weight units × η² × t × λ).

    Raises:
        ValueError: for an unknown ``sigma``, or a concrete η ≤ 0 or t < 0 (naming the value).
    """
    if sigma not in SIGMAS:
        raise ValueError(f"sigma must be one of {SIGMAS}, got {sigma!r}")
    if isinstance(eta, numbers.Real) and not eta > 0:
        raise ValueError(f"learning rate eta must be > 0, got {eta}")
    if isinstance(t, numbers.Real) and not t >= 0:
        raise ValueError(f"step count t must be ≥ 0, got {t}")
    masks_lib.check_mask(params_t, mask)
    drift = optax.tree.norm(masks_lib.apply_mask(optax.tree.sub(params_t, params_0), mask))
    s = jnp.abs(lam)
    s = jnp.sqrt(s) if sigma == "sqrt" else s
    return 0.5 * eta**2 * t * drift * s


def verification_error(
    params: PyTree,
    params_gold: PyTree,
    mask: PyTree | None = None,
    mask_gold: PyTree | None = None,
) -> float:
    """VE = ‖θ ⊙ M − θ_gold ⊙ M_gold‖₂ over all parameters (Thudi et al.'s definition).

    The compared weights are the effective ones of each sparse model. This is exactly
    :func:`unprune_jax.metrics.masks.weight_distance` with every leaf counted: that function
    sums over the union of the supports, and an entry pruned in both models is 0 − 0 there, so
    the union restriction drops only zero terms. Biases, norms and the classifier count as
    Thudi counts them (they are kept in every mask). Accumulated in float64 on the host.

    Args:
        params: θ, e.g. the unlearned or un-pruned model's weights.
        params_gold: θ_gold, the reference (retrain, or retrain + re-prune), same structure.
        mask: M (None: dense). mask_gold: M_gold (None: dense).

    Returns:
        The distance, a Python float.

    Raises:
        ValueError: naming the leaf, if the pytrees do not match.
    """
    mask = masks_lib.full_mask(params) if mask is None else mask
    mask_gold = masks_lib.full_mask(params_gold) if mask_gold is None else mask_gold
    return weight_distance(params, params_gold, mask, mask_gold, prunable=None)


# --- the unrolled-SGD check (reference §1.4 (d)) --------------------------------------------------


def unrolled_sgd_check(
    batch_loss: Callable[[PyTree, jax.Array, jax.Array], jax.Array],
    params_0: PyTree,
    mask: PyTree,
    xs: jax.Array,
    ys: jax.Array,
    eta,
    forget_step: int = 0,
) -> dict:
    """t masked SGD steps, the same run with one batch removed, and single-gradient unlearning.

    With batches B_0..B_{t−1} (``xs[k]``, ``ys[k]``) and w_0 = M ⊙ θ_0:

    * training: w_{k+1} = w_k − η M ⊙ ∇L_{B_k}(w_k), k < t, giving w_t;
    * retraining without B* = B_{forget_step}: the same replay with that step skipped, w'_t
      (t − 1 updates, the others in the same order);
    * single-gradient unlearning (Thudi et al.): w_u = w_t + η M ⊙ ∇L_{B*}(w_0).

    Plain SGD (no momentum, no weight decay): the setting of Thudi et al.'s expansion. For a
    quadratic loss the expansion is exact, and w_u − w'_t is the sum of its Hessian terms.

    Args:
        batch_loss: ``(params, x, y) -> scalar`` mean loss of a batch.
        params_0: θ_0. mask: bool pytree M.
        xs: (t, B, ...) the batches' inputs. ys: (t, B) their labels / targets.
        eta: learning rate η.
        forget_step: the index of B* in 0..t−1 (may be traced).

    Returns:
        A dict: ``params_t`` (w_t), ``params_retrain`` (w'_t), ``params_unlearned`` (w_u),
        ``verification_error`` ‖w_u − w'_t‖, ``no_unlearning_error`` ‖w_t − w'_t‖ (doing
        nothing), ``drift`` ‖M ⊙ (w_t − w_0)‖.
    """
    w0 = masks_lib.apply_mask(params_0, mask)
    grad = jax.grad(batch_loss)

    def step(w, x, y):
        g = masks_lib.apply_mask(grad(w, x, y), mask)
        return masks_lib.apply_mask(optax.tree.add_scale(w, -eta, g), mask)

    def body(carry, batch):
        w, w_r, k = carry
        x, y = batch
        w = step(w, x, y)
        stepped = step(w_r, x, y)
        w_r = jax.tree.map(lambda a, b: jnp.where(k == forget_step, b, a), stepped, w_r)
        return (w, w_r, k + 1), None

    (w_t, w_r, _), _ = jax.lax.scan(body, (w0, w0, jnp.zeros((), jnp.int32)), (xs, ys))
    x_f = jax.tree.map(lambda a: a[forget_step], xs)
    y_f = jax.tree.map(lambda a: a[forget_step], ys)
    g_f = masks_lib.apply_mask(grad(w0, x_f, y_f), mask)
    w_u = optax.tree.add_scale(w_t, eta, g_f)

    def diff(a, b):
        return optax.tree.norm(optax.tree.sub(a, b))

    return {
        "params_t": w_t,
        "params_retrain": w_r,
        "params_unlearned": w_u,
        "verification_error": diff(w_u, w_r),
        "no_unlearning_error": diff(w_t, w_r),
        "drift": diff(w_t, w0),
    }
