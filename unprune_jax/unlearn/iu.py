"""Influence unlearning (IU): one damped Newton step towards the retain-set optimum.

The derivation. Let the training objective be the mean cross-entropy over D = D_r ∪ D_f plus the
coupled weight decay of the optimizer, ``wd/2·‖θ‖²``::

    J(θ) = (n_r·L_r(θ) + n_f·L_f(θ)) / n + wd/2·‖θ‖²,      n = n_r + n_f,

with L_r, L_f the mean CE over D_r and D_f. The model we have, θ, minimises J, so ∇J(θ) = 0, i.e.
``n_r·∇L_r(θ) = −n_f·∇L_f(θ) − n·wd·θ``. Retraining minimises J_r(θ) = L_r(θ) + wd/2·‖θ‖².
One Newton step on J_r from θ gives::

    θ_r ≈ θ − (H_r + wd·I)⁻¹ ∇J_r(θ),        H_r = ∇²L_r(θ),

and substituting ∇L_r from the optimality of θ::

    ∇J_r(θ) = ∇L_r(θ) + wd·θ = −(n_f/n_r)·(∇L_f(θ) + wd·θ),

so that::

    θ_r ≈ θ + (n_f/n_r)·(H_r + wd·I)⁻¹ (∇L_f(θ) + wd·θ).                                  (IU)

With wd = 0 this is the textbook influence-function update θ + (n_f/n_r)·H_r⁻¹∇L_f(θ) (Koh &
Liang 2017, removing a group of points). The error is second order in the distance θ_r − θ (exact
for a quadratic J_r). We add a damping λ > 0 on top, solving with (H_r + (wd + λ)·I): a
network's H_r is indefinite and ill-conditioned, and λ bounds the step along its flat directions.
``alpha`` scales the step (1 = the formula). Only D_f's gradient enters (IU), so the cost is one
pass over D_f plus the solver's Hessian-vector products on a few batches of D_r.

``direction='newton'`` takes the Newton step −(H_r + (wd + λ)I)⁻¹∇J_r(θ) itself, with ∇L_r from
a full pass over D_r. At an exact minimiser of J both are the same; away from one (SGD never
reaches it) the Newton step also corrects the optimisation error on D_r.

Sparsity. Everything lives in the kept coordinates (mask M): the loss is evaluated at M ⊙ θ, the
curvature operator is v ↦ M ⊙ H(M ⊙ v) + (wd + λ)·(M ⊙ v) (the Hessian of the masked network
restricted to its kept weights), the gradient is masked and the solution is masked, so pruned
weights stay exactly 0.

The peers' "WoodFisher" IU (peers-unlearn.md §1.8) does not invert anything: its rank-one
recursion only ever rescales the first sample's gradient, so it returns v − β·g₀, i.e. a scaled
gradient difference. Here the inverse is a real one, computed by conjugate gradients (CG) or by
LiSSA's Neumann series, both matrix-free on forward-over-reverse Hessian-vector products
(``jax.jvp`` of ``jax.grad``) in eval mode (all from :mod:`unprune_jax.linalg`), and the relative
residual ‖(H + λ)x − g‖/‖g‖ is reported so that an unconverged solve is visible.

Curvature. ``hvp`` is the exact Hessian. ``curvature='ggn'`` uses the generalised Gauss-Newton
matrix Jᵀ·∇²_z CE·J instead (J the Jacobian of the logits): positive semi-definite, so CG never
meets negative curvature, and equal to the Hessian for a model linear in its parameters.

In practice. An SGD-trained network is not at a minimum and its Hessian is indefinite: on a small
CNN (Fashion-MNIST, 20% density) CG with the exact Hessian meets negative curvature within about
five iterations at λ = 1e-3 or 1e-2. It then returns the truncated-CG iterate
(``negative_curvature`` is reported, and the residual is not small), which still moved D_f, D_r
and test accuracy toward the retrained model's. The GGN operator converges, but its flat
directions need a larger λ (≈ 0.1) or the step overshoots; with λ = 1e-3 it cost 13 points of
retain accuracy.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .. import losses
from .. import masks as masks_lib
from ..data import batch_indices
from ..linalg import cg_solve, ggn_vp, hvp, lissa_solve, power_iteration
from ..train import DivergenceError, TrainConfig
from .base import register, train_on

PyTree = Any

SOLVERS = ("cg", "lissa")
CURVATURES = ("hessian", "ggn")
DIRECTIONS = ("influence", "newton")


# --- the retain-set curvature operator ------------------------------------------------------------


def _ce_sum(logits, y, w):
    return jnp.sum(w * optax.losses.softmax_cross_entropy_with_integer_labels(logits, y))


def _operator(apply_fn, curvature: str, params, model_state, mask, xs, ys, ws, shift):
    """v ↦ M ⊙ C_r(M ⊙ v) + shift·(M ⊙ v), C_r the mean curvature over the batches (xs, ys, ws)."""
    total = jnp.sum(ws)

    def one(v, x, y, w):
        model = lambda p: apply_fn(masks_lib.apply_mask(p, mask), model_state, x, False)[0]
        if curvature == "hessian":
            return hvp(lambda p: _ce_sum(model(p), y, w), params, v)
        return ggn_vp(model, lambda z: _ce_sum(z, y, w), params, v)

    def matvec(v):
        v = masks_lib.apply_mask(v, mask)

        def body(acc, batch):
            return optax.tree.add(acc, one(v, *batch)), None

        acc, _ = jax.lax.scan(body, optax.tree.zeros_like(v), (xs, ys, ws))
        out = jax.tree.map(lambda a, u: a / total + shift * u, acc, v)
        return masks_lib.apply_mask(out, mask)

    return matvec


@functools.cache
def _make_solver(apply_fn, curvature: str, solver: str, iters: int):
    """Compiled ``(params, model_state, mask, xs, ys, ws, b, shift, tol, scale) -> (x, info)``.

    ``info['residual']`` is recomputed as ‖A x − b‖/‖b‖ with one more product.
    """

    def solve(params, model_state, mask, xs, ys, ws, b, shift, tol, scale):
        matvec = _operator(apply_fn, curvature, params, model_state, mask, xs, ys, ws, shift)
        if solver == "cg":
            x, info = cg_solve(matvec, b, iters, tol)
        else:
            x, info = lissa_solve(matvec, b, iters, scale, tol)
        x = masks_lib.apply_mask(x, mask)
        b_norm = optax.tree.norm(b)
        residual = optax.tree.norm(optax.tree.sub(matvec(x), b))
        info = {**info, "residual": residual / jnp.where(b_norm > 0, b_norm, 1.0)}
        return x, info

    return jax.jit(solve)


@functools.cache
def _make_top_eigenvalue(apply_fn, curvature: str, iters: int):
    def top(params, model_state, mask, xs, ys, ws, shift, v0):
        matvec = _operator(apply_fn, curvature, params, model_state, mask, xs, ys, ws, shift)
        return power_iteration(matvec, masks_lib.apply_mask(v0, mask), iters)[0]

    return jax.jit(top)


@functools.cache
def _make_grad_sum(apply_fn):
    """Compiled ``(loss, grad, params, model_state, mask, x, y, w) -> (loss + Σ w·CE, grad +
    M ⊙ ∇ Σ w·CE)`` in eval mode: one batch added to running sums."""

    def grad_sum(total_loss, total_grad, params, model_state, mask, x, y, w):
        def loss(p):
            logits = apply_fn(masks_lib.apply_mask(p, mask), model_state, x, False)[0]
            return _ce_sum(logits, y, w)

        value, g = jax.value_and_grad(loss)(params)
        return total_loss + value, optax.tree.add(total_grad, masks_lib.apply_mask(g, mask))

    return jax.jit(grad_sum)


def mean_loss_and_grad(state, apply_fn, dataset, indices, batch_size: int):
    """(mean CE, M ⊙ ∇ mean CE) over ``dataset[indices]`` at the masked params, eval mode."""
    fn = _make_grad_sum(apply_fn)
    idx, w = batch_indices(np.asarray(indices), batch_size, shuffle=False)
    total_loss = jnp.zeros((), jnp.float32)
    total = optax.tree.zeros_like(state.params)
    for b in range(len(idx)):
        total_loss, total = fn(total_loss, total, state.params, state.model_state, state.mask,
                               dataset.x[idx[b]], dataset.y[idx[b]], w[b])
    n = len(indices)
    return float(total_loss) / n, _scale(jnp.float32(1.0 / n), total)


_apply_mask = jax.jit(masks_lib.apply_mask)
_scale = jax.jit(optax.tree.scale)


@jax.jit
def _rhs(params, grad, mask, wd):
    """M ⊙ (grad + wd·θ) and its norm."""
    b = masks_lib.apply_mask(optax.tree.add_scale(grad, wd, params), mask)
    return b, optax.tree.norm(b)


@jax.jit
def _take_step(params, x, mask, coef):
    """θ + coef·(M ⊙ x), masked; whether it is finite; ‖Δ‖ and ‖θ‖."""
    delta = masks_lib.apply_mask(optax.tree.scale(coef, x), mask)
    new = masks_lib.apply_mask(optax.tree.add(params, delta), mask)
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(new)]))
    return new, finite, optax.tree.norm(delta), optax.tree.norm(params)


def hessian_batches(retain, batch_size: int, num_batches: int | None, seed: int):
    """The D_r examples the curvature averages over: ``num_batches`` batches drawn without
    replacement by ``seed`` (all of D_r when None or when D_r is smaller). Returns (idx, w) of
    shape (K, batch_size), padded at weight 0."""
    retain = np.asarray(retain)
    if num_batches is None or num_batches * batch_size >= retain.size:
        chosen = retain
    else:
        rng = np.random.default_rng([seed, 0x1D])
        chosen = rng.choice(retain, size=num_batches * batch_size, replace=False)
    return batch_indices(chosen, batch_size, shuffle=False)


# --- the method -----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class IUConfig(TrainConfig):
    """Influence unlearning.

    Attributes:
        solver: ``'cg'`` (conjugate gradients, default) or ``'lissa'`` (Neumann series).
        damping: λ added to the curvature on top of ``weight_decay``: the solve uses
            H_r + (weight_decay + λ)·I. Default 1e-3, about 1e-3 of the top Hessian eigenvalue of
            a trained small CNN (order 1): small enough not to bias the well-determined
            directions, large enough to bound the step along flat ones.
        weight_decay: the ℓ2 coefficient of the original training objective (coupled weight
            decay; the default 5e-4 is the library's); it enters both the gradient (∇L_f + wd·θ)
            and the curvature. 0 gives the plain-CE formula. Also used by the optional fine-tune.
        cg_iters: CG iterations, or LiSSA's depth when ``lissa_depth`` is None.
        tol: relative residual ‖A x − g‖/‖g‖ at which the solver stops early.
        lissa_depth: LiSSA recursion depth (None: ``cg_iters``).
        lissa_scale: LiSSA's s, to exceed the top eigenvalue of H_r + (wd + λ)I; None: 1.25×
            a ``power_iters``-step power-iteration estimate.
        power_iters: power-iteration steps for the LiSSA scale estimate.
        hessian_batches: batches of D_r (of ``batch_size``, drawn by ``seed``) the curvature
            averages over; every solver step costs one Hessian-vector product per batch. Default
            4 (1024 examples at batch 256), as in the usual subsampled-curvature practice; None
            uses all of D_r (exact, slow).
        curvature: ``'hessian'`` (exact, default) or ``'ggn'`` (Gauss-Newton, PSD).
        direction: ``'influence'`` (∇L_f only, default) or ``'newton'`` (∇J_r, a pass over D_r).
        alpha: step scale; 1 is the derived update.
        epochs: epochs of fine-tuning on D_r after the step (``lr`` etc. apply); 0: none.
    """

    epochs: int = 0
    batch_size: int = 256
    lr: float = 0.01
    solver: str = "cg"
    damping: float = 1e-3
    cg_iters: int = 50
    tol: float = 1e-4
    lissa_depth: int | None = None
    lissa_scale: float | None = None
    power_iters: int = 20
    hessian_batches: int | None = 4
    curvature: str = "hessian"
    direction: str = "influence"
    alpha: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        for name, value, valid in (("solver", self.solver, SOLVERS),
                                   ("curvature", self.curvature, CURVATURES),
                                   ("direction", self.direction, DIRECTIONS)):
            if value not in valid:
                raise ValueError(f"IU {name} must be one of {valid}, got {value!r}")
        if not (self.damping >= 0 and self.weight_decay >= 0):
            raise ValueError(f"IU damping and weight_decay must be ≥ 0, got {self.damping}, "
                             f"{self.weight_decay}")
        if self.cg_iters < 1 or self.power_iters < 1 or (self.lissa_depth or 1) < 1:
            raise ValueError("IU cg_iters, lissa_depth and power_iters must be ≥ 1")
        if self.hessian_batches is not None and self.hessian_batches < 1:
            raise ValueError(f"IU hessian_batches must be ≥ 1 or None, got {self.hessian_batches}")
        if self.lissa_scale is not None and not self.lissa_scale > 0:
            raise ValueError(f"IU lissa_scale must be > 0, got {self.lissa_scale}")
        if not (self.tol >= 0 and math.isfinite(self.alpha)):
            raise ValueError(f"IU tol must be ≥ 0 and alpha finite, got {self.tol}, {self.alpha}")


@register(
    "IU",
    IUConfig(),
    "influence unlearning: θ + (n_f/n_r)·(H_r + λI)⁻¹∇L_f by CG or LiSSA on masked HVPs",
)
def influence_unlearning(state, task, cfg: IUConfig):
    t0 = time.perf_counter()
    original = state
    mask = state.mask
    params = _apply_mask(state.params, mask)
    state = state.replace(params=params)
    n_f, n_r = len(task.forget), len(task.retain)
    wd = float(cfg.weight_decay)

    loss_f, g_f = mean_loss_and_grad(state, task.apply_fn, task.dataset, task.forget,
                                     cfg.batch_size)
    if cfg.direction == "influence":
        b, coef = g_f, cfg.alpha * n_f / n_r
    else:
        _, g_r = mean_loss_and_grad(state, task.apply_fn, task.dataset, task.retain,
                                    cfg.batch_size)
        b, coef = g_r, -cfg.alpha
    b, b_norm = _rhs(params, b, mask, jnp.float32(wd))  # M ⊙ (∇L + wd·θ)

    idx, w = hessian_batches(task.retain, cfg.batch_size, cfg.hessian_batches, cfg.seed)
    xs, ys = task.dataset.x[idx], task.dataset.y[idx]
    shift = jnp.float32(wd + cfg.damping)
    scale = 1.0
    if cfg.solver == "lissa":
        if cfg.lissa_scale is None:
            top = _make_top_eigenvalue(task.apply_fn, cfg.curvature, cfg.power_iters)
            v0 = optax.tree.random_like(jax.random.PRNGKey(cfg.seed), params)
            top_eig = abs(float(top(params, state.model_state, mask, xs, ys, w, shift, v0)))
            scale = max(1.25 * top_eig, 1e-8)
        else:
            scale = float(cfg.lissa_scale)
    iters = cfg.cg_iters if cfg.solver == "cg" or cfg.lissa_depth is None else cfg.lissa_depth
    solve = _make_solver(task.apply_fn, cfg.curvature, cfg.solver, iters)
    x, info = solve(params, state.model_state, mask, xs, ys, w, b, shift,
                    jnp.float32(cfg.tol), jnp.float32(scale))
    new_params, finite, step_norm, param_norm = _take_step(params, x, mask, jnp.float32(coef))
    info = jax.device_get(info)

    record = {
        "epoch": 0, "phase": "IU", "solver": cfg.solver,
        "iterations": int(info["iterations"]), "residual": float(info["residual"]),
        "seconds": time.perf_counter() - t0,
    }
    history = [record]
    if not (bool(finite) and np.isfinite(record["residual"])):
        raise DivergenceError(
            f"IU: the {cfg.solver} solve gave a non-finite update (residual "
            f"{record['residual']!r} after {record['iterations']} iterations); kept the input "
            "state. Raise damping, use curvature='ggn', or (LiSSA) a larger lissa_scale.",
            original, history,
        )
    state = state.replace(params=new_params, opt_state=task.tx.init(new_params))
    loss_after, _ = mean_loss_and_grad(state, task.apply_fn, task.dataset, task.forget,
                                       cfg.batch_size)
    metrics = {
        "solver": cfg.solver,
        "iterations": record["iterations"],
        "residual": record["residual"],
        "negative_curvature": bool(info.get("negative_curvature", False)),
        "lissa_scale": scale if cfg.solver == "lissa" else None,
        "grad_norm": float(b_norm),
        "step_norm": float(step_norm),
        "param_norm": float(param_norm),
        "forget_loss_before": loss_f,
        "forget_loss_after": loss_after,
        "hessian_examples": int(np.sum(w)),
    }
    if cfg.max_loss is not None and not abs(loss_after) <= cfg.max_loss:
        raise DivergenceError(f"IU: forget loss {loss_after!r} after the step exceeds max_loss="
                              f"{cfg.max_loss}; kept the input state",
                              original, history)
    if cfg.epochs > 0:
        state, ft = train_on(state, task, cfg, task.retain, losses.cross_entropy, "IU-FT")
        history += [{**h, "phase": "finetune"} for h in ft["history"]]
    return state, {**metrics, "history": history}
