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

Everything here is a pure function over pytrees and runs under ``jit`` (the eigen-solvers are one
``lax.while_loop`` / ``fori_loop``), except :func:`verification_error`, a host-side float64
metric like the rest of ``metrics``.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from .. import losses
from .. import masks as masks_lib
from .masks import weight_distance

PyTree = Any
LossFn = Callable[[PyTree], jax.Array]

SIGMAS = ("eig", "sqrt")

__all__ = [
    "tree_vdot", "tree_norm", "hvp", "masked_hvp", "masked_operator", "power_iteration",
    "top_eigenvalue", "lanczos", "lanczos_topk", "loss_on_batch", "unlearning_error_proxy",
    "verification_error", "unrolled_sgd_check",
]


# --- pytree vector algebra ------------------------------------------------------------------------


def tree_vdot(a: PyTree, b: PyTree) -> jax.Array:
    """Σ over leaves of ⟨a, b⟩ (real): the inner product of two pytrees as flat vectors."""
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def tree_norm(a: PyTree) -> jax.Array:
    """‖a‖₂ of a pytree as one flat vector."""
    return jnp.sqrt(tree_vdot(a, a))


def _scale(c, tree: PyTree) -> PyTree:
    return jax.tree.map(lambda a: c * a, tree)


def _axpy(alpha, x: PyTree, y: PyTree) -> PyTree:
    return jax.tree.map(lambda a, b: alpha * a + b, x, y)


# --- Hessian-vector products ----------------------------------------------------------------------


def hvp(loss_fn: LossFn, params: PyTree, v: PyTree) -> PyTree:
    """Hessian-vector product ∇²loss(params)·v, forward-over-reverse (``jvp`` of ``grad``).

    Costs about two gradient evaluations and never forms the Hessian.

    Args:
        loss_fn: scalar function of a params-shaped pytree.
        params: the point the Hessian is taken at.
        v: a pytree shaped like ``params``.

    Returns:
        H·v, shaped like ``params``.
    """
    return jax.jvp(jax.grad(loss_fn), (params,), (v,))[1]


def masked_hvp(loss_fn: LossFn, params: PyTree, mask: PyTree, v: PyTree) -> PyTree:
    """M ⊙ H(M ⊙ v), H the Hessian of ``loss_fn`` at M ⊙ params.

    The loss is evaluated at the masked weights (the sparse network), so this is the principal
    sub-matrix H_MM acting on the kept coordinates, with zeros at pruned ones; the entries of
    ``v`` at pruned coordinates are ignored.

    Args:
        loss_fn: scalar function of a params-shaped pytree.
        params: the weights (pruned entries may hold anything: they are masked).
        mask: bool pytree shaped like ``params``.
        v: pytree shaped like ``params``.
    """
    masked_loss = lambda p: loss_fn(masks_lib.apply_mask(p, mask))
    hv = hvp(masked_loss, masks_lib.apply_mask(params, mask), masks_lib.apply_mask(v, mask))
    return masks_lib.apply_mask(hv, mask)


def masked_operator(loss_fn: LossFn, params: PyTree, mask: PyTree) -> Callable[[PyTree], PyTree]:
    """The linear map v ↦ M ⊙ H(M ⊙ v) at fixed (params, mask), for the eigen-solvers."""
    return lambda v: masked_hvp(loss_fn, params, mask, v)


# --- eigen-solvers --------------------------------------------------------------------------------


def power_iteration(
    matvec: Callable[[PyTree], PyTree],
    v0: PyTree,
    iters: int = 100,
    tol: float = 0.0,
    shift: float = 0.0,
):
    """Power iteration for a symmetric operator A: the eigenvalue of largest magnitude of A + cI.

    Each step v ← (A + cI)v / ‖(A + cI)v‖ (c = ``shift``); the returned eigenvalue is the
    Rayleigh quotient vᵀAv of the last unit v (of A itself, the shift removed). Without a shift
    that is the eigenvalue of largest |λ| (Thudi's "largest singular value" of a symmetric H).
    With c ≥ −λ_min(A), A + cI is positive semi-definite and the iteration finds the largest
    *algebraic* eigenvalue instead. If the two extreme eigenvalues have (nearly) equal magnitude
    and opposite signs the plain iteration does not settle: use a shift or :func:`lanczos`.

    Stops after ``iters`` products, or once the Rayleigh quotient changes by at most
    ``tol``·|λ| between two steps (``tol=0`` runs all ``iters``). One ``lax.while_loop``; jittable.

    Args:
        matvec: v ↦ A v on pytrees (A symmetric).
        v0: the start vector (non-zero; it fixes the subspace explored, e.g. a masked draw).
        iters: the most products with A.
        tol: relative change of the eigenvalue estimate to stop at.
        shift: c above.

    Returns:
        ``(eigenvalue, vector)``: a scalar and the unit pytree whose Rayleigh quotient it is.
    """
    return _power(matvec, v0, iters, tol, shift)[:2]


def _power(matvec, v0, iters, tol, shift):
    """:func:`power_iteration` plus ``info``: iterations and the residual ‖Av − λv‖."""
    n0 = tree_norm(v0)
    v = _scale(1.0 / jnp.where(n0 > 0, n0, 1.0), v0)
    dtype = jnp.result_type(*jax.tree.leaves(v))
    inf = jnp.asarray(jnp.inf, dtype)

    def cond(c):
        i, _, _, lam, lam_prev = c
        moving = jnp.abs(lam - lam_prev) > tol * jnp.abs(lam)
        return (i < iters) & ((i < 2) | moving)

    def body(c):
        i, v, _, lam, _ = c
        av = matvec(v)
        lam_new = tree_vdot(v, av)
        return i + 1, v, av, lam_new, lam

    def step(c):
        # Advance v to the normalised (A + cI)v of the previous step before the next product.
        i, v, av, lam, lam_prev = c
        w = _axpy(shift, v, av)
        n = tree_norm(w)
        return i, _scale(1.0 / jnp.where(n > 0, n, 1.0), w), av, lam, lam_prev

    zero = jax.tree.map(jnp.zeros_like, v)
    state = body((jnp.zeros((), jnp.int32), v, zero, inf, inf))
    state = jax.lax.while_loop(cond, lambda c: body(step(c)), state)
    i, v, av, lam, _ = state
    residual = tree_norm(_axpy(-lam, v, av))
    return lam, v, {"iterations": i, "residual": residual}


def _masked_normal(key: jax.Array, params: PyTree, mask: PyTree) -> PyTree:
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    draws = [jax.random.normal(k, jnp.shape(p), jnp.result_type(p)) for k, p in zip(keys, leaves)]
    return masks_lib.apply_mask(jax.tree.unflatten(treedef, draws), mask)


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
    a shift c ≥ −λ_min it is the largest algebraic eigenvalue (see :func:`power_iteration`).
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
    lam, v, info = _power(matvec, v0, iters, tol, 0.0 if shift is None else shift)
    return lam, v, info


def lanczos(matvec: Callable[[jax.Array], jax.Array], v0: jax.Array, steps: int,
            restarts: jax.Array | None = None):
    """Ritz values of a symmetric A from ``steps`` Lanczos steps with full reorthogonalisation.

    Builds the orthonormal Krylov basis q₀..q_{m−1} of (A, v0) and the tridiagonal T = QᵀAQ; the
    eigenvalues of T (Ritz values) approximate the extreme eigenvalues of A, the outermost first,
    and are exact once m reaches the dimension of the space explored. Each new vector is
    orthogonalised twice against all earlier ones ("twice is enough"), so there are no ghost
    copies. On breakdown (an invariant subspace was found, β ≈ 0) the next vector is the next row
    of ``restarts`` orthogonalised against the basis, with β = 0: T becomes block-diagonal and its
    eigenvalues stay eigenvalues of A. One ``fori_loop``; memory m·n.

    Args:
        matvec: flat v ↦ A v, shape (n,) → (n,).
        v0: (n,) start vector, non-zero.
        steps: m ≥ 1; at most the dimension of the space (e.g. the number of kept coordinates).
        restarts: (m, n) vectors for breakdowns in the same space as ``v0`` (e.g. masked draws);
            None: no restart (after a breakdown the remaining Ritz values are spurious zeros).

    Returns:
        ``(ritz, info)``: the m Ritz values in descending order, and ``info`` with the
        tridiagonal's ``alpha`` (m,) and ``beta`` (m−1,).
    """
    n = v0.shape[0]
    dtype = v0.dtype
    restarts = jnp.zeros((steps, n), dtype) if restarts is None else restarts
    eps = jnp.finfo(dtype).eps

    def orthogonalise(w, q):
        for _ in range(2):
            w = w - q.T @ (q @ w)
        return w

    def body(j, c):
        q, alpha, beta, scale = c
        w = matvec(q[j])
        a = jnp.vdot(q[j], w)
        w = orthogonalise(w, q)  # rows beyond j are still zero, so this is against q₀..q_j
        b = jnp.linalg.norm(w)
        scale = jnp.maximum(scale, jnp.abs(a) + b)
        broke = b <= 100 * eps * scale
        r = orthogonalise(restarts[j], q)
        r_norm = jnp.linalg.norm(r)
        nxt = jnp.where(broke, r / jnp.where(r_norm > 0, r_norm, 1.0), w / jnp.where(b > 0, b, 1.0))
        q = jnp.where(j + 1 < steps, q.at[jnp.minimum(j + 1, steps - 1)].set(nxt), q)
        return q, alpha.at[j].set(a), beta.at[j].set(jnp.where(broke, 0.0, b)), scale

    q = jnp.zeros((steps, n), dtype).at[0].set(v0 / jnp.linalg.norm(v0))
    init = (q, jnp.zeros(steps, dtype), jnp.zeros(steps, dtype), jnp.zeros((), dtype))
    _, alpha, beta, _ = jax.lax.fori_loop(0, steps, body, init)
    t = jnp.diag(alpha) + jnp.diag(beta[:-1], 1) + jnp.diag(beta[:-1], -1)
    ritz = jnp.linalg.eigvalsh(t)[::-1]
    return ritz, {"alpha": alpha, "beta": beta[:-1]}


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
        ``(eigenvalues, info)``: (k,) array, descending by ``by``; info as :func:`lanczos`'s plus
        ``ritz`` (all m Ritz values, descending).

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
    drift = tree_norm(masks_lib.apply_mask(jax.tree.map(jnp.subtract, params_t, params_0), mask))
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
        return masks_lib.apply_mask(_axpy(-eta, g, w), mask)

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
    w_u = _axpy(eta, g_f, w_t)
    diff = lambda a, b: tree_norm(jax.tree.map(jnp.subtract, a, b))
    return {
        "params_t": w_t,
        "params_retrain": w_r,
        "params_unlearned": w_u,
        "verification_error": diff(w_u, w_r),
        "no_unlearning_error": diff(w_t, w_r),
        "drift": diff(w_t, w0),
    }
