"""Matrix-free linear algebra on pytrees: curvature-vector products, eigen- and linear solvers.

Everything takes a linear operator as a function ``matvec: v ↦ A v`` on params-shaped pytrees
(flat arrays for :func:`lanczos`), never a matrix, and runs in one ``lax.while_loop`` /
``fori_loop``, so it jits. The pytree algebra is ``optax.tree`` (``vdot``, ``norm``, ``add_scale``,
...). Used by the theory's metrics (``metrics.theory``: λ(M) by power iteration and Lanczos) and
by the unlearners that invert or probe a Hessian (``unlearn.iu``).

- :func:`hvp`, :func:`masked_hvp`, :func:`masked_operator`: Hessian-vector products by
  forward-over-reverse differentiation, and the masked operator v ↦ M ⊙ H(M ⊙ v).
- :func:`ggn_vp`: the generalised Gauss-Newton product Jᵀ·∇²ℓ·J·v.
- :func:`power_iteration` (and :func:`power_iteration_info`), :func:`lanczos`: eigenvalues of a
  symmetric operator.
- :func:`cg_solve` (truncated conjugate gradients), :func:`lissa_solve` (Neumann series):
  A x = b.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from . import masks as masks_lib

PyTree = Any
LossFn = Callable[[PyTree], jax.Array]
MatVec = Callable[[PyTree], PyTree]

__all__ = [
    "hvp", "masked_hvp", "masked_operator", "ggn_vp", "power_iteration", "power_iteration_info",
    "lanczos", "cg_solve", "lissa_solve",
]


def _nonzero(n: jax.Array) -> jax.Array:
    """``n``, or 1 where it is 0: a zero vector divided by its zero norm stays zero."""
    return jnp.where(n > 0, n, 1.0)


# --- curvature-vector products --------------------------------------------------------------------


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
    def masked_loss(p):
        return loss_fn(masks_lib.apply_mask(p, mask))

    hv = hvp(masked_loss, masks_lib.apply_mask(params, mask), masks_lib.apply_mask(v, mask))
    return masks_lib.apply_mask(hv, mask)


def masked_operator(loss_fn: LossFn, params: PyTree, mask: PyTree) -> MatVec:
    """The linear map v ↦ M ⊙ H(M ⊙ v) at fixed (params, mask), for the solvers below."""
    return lambda v: masked_hvp(loss_fn, params, mask, v)


def ggn_vp(model_fn: Callable[[PyTree], jax.Array], out_loss_fn: Callable[[jax.Array], jax.Array],
           params: PyTree, v: PyTree) -> PyTree:
    """Generalised Gauss-Newton product Jᵀ·∇²ℓ(z)·J·v with z = model_fn(params), ℓ = out_loss_fn.

    PSD when ℓ is convex in the outputs (cross-entropy in the logits is); equals the Hessian of
    ℓ∘model_fn when model_fn is linear in the parameters.

    Args:
        model_fn: params ↦ outputs z (e.g. the logits of a fixed batch).
        out_loss_fn: z ↦ scalar loss.
        params: the point J and ∇²ℓ are taken at.
        v: a pytree shaped like ``params``.
    """
    z, jv = jax.jvp(model_fn, (params,), (v,))
    hjv = jax.jvp(jax.grad(out_loss_fn), (z,), (jv,))[1]
    _, vjp = jax.vjp(model_fn, params)
    return vjp(hjv)[0]


# --- eigen-solvers --------------------------------------------------------------------------------


def power_iteration(matvec: MatVec, v0: PyTree, iters: int = 100, tol: float = 0.0,
                    shift: float = 0.0):
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
    return power_iteration_info(matvec, v0, iters, tol, shift)[:2]


def power_iteration_info(matvec: MatVec, v0: PyTree, iters: int = 100, tol: float = 0.0,
                         shift: float = 0.0):
    """:func:`power_iteration` plus ``info``: ``iterations`` (products taken) and ``residual``
    ‖Av − λv‖ of the returned pair (small when converged).

    Returns:
        ``(eigenvalue, vector, info)``.
    """
    v = optax.tree.scale(1.0 / _nonzero(optax.tree.norm(v0)), v0)
    dtype = jnp.result_type(*jax.tree.leaves(v))
    inf = jnp.asarray(jnp.inf, dtype)

    def cond(c):
        i, _, _, lam, lam_prev = c
        moving = jnp.abs(lam - lam_prev) > tol * jnp.abs(lam)
        return (i < iters) & ((i < 2) | moving)

    def body(c):
        i, v, _, lam, _ = c
        av = matvec(v)
        lam_new = optax.tree.vdot(v, av)
        return i + 1, v, av, lam_new, lam

    def step(c):
        # Advance v to the normalised (A + cI)v of the previous step before the next product.
        i, v, av, lam, lam_prev = c
        w = optax.tree.add_scale(av, shift, v)
        return i, optax.tree.scale(1.0 / _nonzero(optax.tree.norm(w)), w), av, lam, lam_prev

    state = body((jnp.zeros((), jnp.int32), v, optax.tree.zeros_like(v), inf, inf))
    state = jax.lax.while_loop(cond, lambda c: body(step(c)), state)
    i, v, av, lam, _ = state
    residual = optax.tree.norm(optax.tree.add_scale(av, -lam, v))
    return lam, v, {"iterations": i, "residual": residual}


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
        matvec: flat v ↦ A v, shape (n,) → (n,) (``ravel_pytree`` a pytree operator).
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
        nxt = jnp.where(broke, r / _nonzero(jnp.linalg.norm(r)), w / _nonzero(b))
        q = jnp.where(j + 1 < steps, q.at[jnp.minimum(j + 1, steps - 1)].set(nxt), q)
        return q, alpha.at[j].set(a), beta.at[j].set(jnp.where(broke, 0.0, b)), scale

    q = jnp.zeros((steps, n), dtype).at[0].set(v0 / jnp.linalg.norm(v0))
    init = (q, jnp.zeros(steps, dtype), jnp.zeros(steps, dtype), jnp.zeros((), dtype))
    _, alpha, beta, _ = jax.lax.fori_loop(0, steps, body, init)
    t = jnp.diag(alpha) + jnp.diag(beta[:-1], 1) + jnp.diag(beta[:-1], -1)
    ritz = jnp.linalg.eigvalsh(t)[::-1]
    return ritz, {"alpha": alpha, "beta": beta[:-1]}


# --- linear solvers -------------------------------------------------------------------------------


def cg_solve(matvec: MatVec, b: PyTree, iters: int = 50, tol: float = 1e-4):
    """Conjugate gradients for A x = b, A symmetric (positive definite on the span explored).

    Starts at x = 0 and stops after ``iters`` iterations, once ‖r‖ ≤ tol·‖b‖, or on meeting a
    direction p with pᵀAp ≤ 0 (A is not positive definite there: the iterate so far is kept,
    truncated CG as in Steihaug's method). Runs in one ``lax.while_loop``, so it can be jitted.

    Returns:
        ``(x, info)``; info holds ``iterations``, ``residual`` (the recursive relative residual
        ‖r‖/‖b‖; recompute ‖A x − b‖ for an exact figure) and ``negative_curvature`` (bool).
    """
    b_norm = optax.tree.norm(b)
    threshold = (tol * b_norm) ** 2

    def cond(c):
        i, _, _, _, rs, neg = c
        return (i < iters) & (rs > threshold) & (rs > 0) & ~neg

    def body(c):
        i, x, r, p, rs, _ = c
        ap = matvec(p)
        pap = optax.tree.vdot(p, ap)
        neg = ~(pap > 0)  # also catches a nan curvature
        step = jnp.where(neg, 0.0, rs / jnp.where(neg, 1.0, pap))
        x_new = optax.tree.add_scale(x, step, p)
        r_new = optax.tree.add_scale(r, -step, ap)
        rs_new = optax.tree.vdot(r_new, r_new)
        beta = rs_new / jnp.where(rs > 0, rs, 1.0)
        p_new = optax.tree.add_scale(r_new, beta, p)
        return (i + jnp.where(neg, 0, 1), optax.tree.where(neg, x, x_new),
                optax.tree.where(neg, r, r_new), optax.tree.where(neg, p, p_new),
                jnp.where(neg, rs, rs_new), neg)

    init = (jnp.zeros((), jnp.int32), optax.tree.zeros_like(b), b, b, optax.tree.vdot(b, b),
            jnp.zeros((), bool))
    i, x, _, _, rs, neg = jax.lax.while_loop(cond, body, init)
    residual = jnp.where(b_norm > 0, jnp.sqrt(rs) / _nonzero(b_norm), 0.0)
    return x, {"iterations": i, "residual": residual, "negative_curvature": neg}


def lissa_solve(matvec: MatVec, b: PyTree, depth: int = 100, scale: float = 10.0,
                tol: float = 0.0):
    """LiSSA: A⁻¹b by the truncated Neumann series (1/s)·Σ_{k<depth} (I − A/s)^k b.

    The recursion u₀ = b, u_{j+1} = b + u_j − A u_j / s, x_j = u_j / s is Richardson's iteration
    x_{j+1} = x_j + (b − A x_j)/s. It converges when every eigenvalue μ of A satisfies 0 < μ < 2s,
    so ``scale`` must exceed half the largest eigenvalue (s ≥ λ_max is the usual choice); the error
    along μ shrinks by (1 − μ/s) per step, so flat directions converge slowly and a finite depth
    acts as a regulariser. Eigenvalues ≤ 0 make the series diverge. Here A is one fixed operator
    (the deterministic form of Agarwal et al.'s stochastic estimator). Stops early once
    ‖b − A x‖ ≤ tol·‖b‖.

    Returns:
        ``(x, info)``; info holds ``iterations`` and ``residual`` ‖b − A x‖/‖b‖ of the returned x.
    """
    b_norm = optax.tree.norm(b)
    inv_s = 1.0 / scale

    def cond(c):
        i, _, res = c
        return (i < depth) & (res > tol * b_norm)

    def body(c):
        i, x, _ = c
        r = optax.tree.sub(b, matvec(x))
        return i + 1, optax.tree.add_scale(x, inv_s, r), optax.tree.norm(r)

    # x₀ = b/s (= u₀/s); its residual is computed in the first step.
    x0 = optax.tree.scale(inv_s, b)
    i, x, _ = jax.lax.while_loop(cond, body, (jnp.zeros((), jnp.int32), x0, jnp.asarray(jnp.inf)))
    res = optax.tree.norm(optax.tree.sub(b, matvec(x)))
    return x, {"iterations": i + 1, "residual": res / _nonzero(b_norm)}
