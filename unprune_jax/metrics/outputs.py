"""Output-distribution distances between two models (e.g. unlearned vs gold on D_f).

All functions take logits (any float array, numpy or JAX, shaped ``(..., classes)``), work in
float64 numpy on the host through a stable log-softmax, and reduce over the last axis only, so
``(N, C)`` logits give one value per example, shape ``(N,)``. Natural logarithms throughout.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["log_softmax", "kl_divergence", "js_divergence", "mean_js"]

LN2 = math.log(2.0)


def log_softmax(logits) -> np.ndarray:
    """Numerically stable ``log softmax`` over the last axis, in float64.

    Args:
        logits: float array ``(..., classes)``; ``-inf`` entries get probability 0.

    Returns:
        ``logits − logsumexp(logits)`` with the same shape.
    """
    x = np.asarray(logits, np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    z = x - m
    return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


def _pair(logits_p, logits_q) -> tuple[np.ndarray, np.ndarray]:
    lp, lq = log_softmax(logits_p), log_softmax(logits_q)
    if lp.shape != lq.shape:
        raise ValueError(f"logit shapes differ: {lp.shape} vs {lq.shape}")
    if lp.ndim < 1:
        raise ValueError("logits need a class axis (the last one), got a scalar")
    return lp, lq


def _kl_from_logs(lp: np.ndarray, lq: np.ndarray) -> np.ndarray:
    """Σ_c p_c (log p_c − log q_c); terms with p_c = 0 are 0 (also against log q_c = −inf)."""
    p = np.exp(lp)
    with np.errstate(invalid="ignore"):
        terms = np.where(p > 0, p * (lp - lq), 0.0)
    return np.sum(terms, axis=-1)


def kl_divergence(logits_p, logits_q) -> np.ndarray:
    """Per-example KL(p ‖ q) = Σ_c p_c log(p_c / q_c) between ``softmax(p)`` and ``softmax(q)``.

    Args:
        logits_p: logits ``(..., classes)`` of p.
        logits_q: logits of q, same shape.

    Returns:
        float64 array of shape ``logits_p.shape[:-1]``, ≥ 0 (clipped at 0 against rounding);
        ``inf`` where q gives probability exactly 0 to a class p does not.

    Raises:
        ValueError: if the shapes differ.
    """
    lp, lq = _pair(logits_p, logits_q)
    return np.maximum(_kl_from_logs(lp, lq), 0.0)


def js_divergence(logits_p, logits_q) -> np.ndarray:
    """Per-example Jensen–Shannon divergence between ``softmax(p)`` and ``softmax(q)``.

    JS(p, q) = ½ KL(p ‖ m) + ½ KL(q ‖ m) with m = ½ (p + q), natural log, so it is symmetric and
    lies in [0, ln 2]. ``log m`` is computed as ``logaddexp(log p, log q) − ln 2``, so tiny
    probabilities do not underflow.

    Args:
        logits_p: logits ``(..., classes)`` (e.g. of the gold model).
        logits_q: logits of the other model, same shape.

    Returns:
        float64 array of shape ``logits_p.shape[:-1]``, clipped to [0, ln 2] against rounding.

    Raises:
        ValueError: if the shapes differ.
    """
    lp, lq = _pair(logits_p, logits_q)
    lm = np.logaddexp(lp, lq) - LN2
    js = 0.5 * _kl_from_logs(lp, lm) + 0.5 * _kl_from_logs(lq, lm)
    return np.clip(js, 0.0, LN2)


def mean_js(logits_p, logits_q) -> float:
    """Mean of :func:`js_divergence` over all examples (e.g. over D_f against gold outputs)."""
    return float(np.mean(js_divergence(logits_p, logits_q)))
