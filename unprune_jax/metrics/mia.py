"""Membership-inference attacks on model outputs, for judging unlearning.

Everything here is plain float64 numpy (and scikit-learn for the SVC) on arrays of probabilities,
logits or per-example scores and labels: no model code, no JAX. The functions are not hot paths,
so they favour exactness (rank-based AUC, exact TPR at a false-positive budget) over speed.

Four families:

- **Features** (Song & Mittal, USENIX Security 2021): :func:`confidence` p_y, :func:`entropy`,
  :func:`modified_entropy` (the correct Mentr), :func:`modified_entropy_peer` (the formula the
  Unlearn-Sparse / SalUn code computes, kept only for bit-compatibility), :func:`logit_scale`
  and :func:`logit_confidence` (LiRA's statistic φ = log p_y − log Σ_{j≠y} p_j).
- **SVC-MIA**: :func:`svc_mia_peer` reproduces the peers' "MIA-efficacy" exactly (RBF SVC with
  C = 3 and gamma = 'auto', members = the *first* |D_test| retain examples, non-members = all of
  D_test, no scaling, reported value = fraction of D_f predicted non-member). :func:`svc_mia` is
  the corrected attack: randomly drawn, balanced shadow sets from a seed, standardised features,
  the right Mentr, and a held-out accuracy so one can see whether the attack works at all.
- **Per-example likelihood-ratio attacks**: :func:`lira_online`, :func:`lira_offline` (Carlini et
  al., S&P 2022) and :func:`ulira` (Hayes et al., arXiv 2403.01218), from per-example Gaussian fits
  of φ over shadow models; :func:`roc_auc`, :func:`roc_curve`, :func:`tpr_at_fpr` to report them.
- **NeurIPS 2023 unlearning challenge** (arXiv 2406.09073): :func:`neurips_epsilons`,
  :func:`neurips_forgetting_score` (F) and :func:`neurips_final_score`.

Conventions: ``probs`` are ``(N, C)`` rows of a softmax, ``labels`` are ``(N,)`` ints in
``[0, C)``; shadow/target score matrices are ``(models, examples)``; logs are natural.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import special

__all__ = [
    "FEATURES", "softmax", "confidence", "entropy", "modified_entropy", "modified_entropy_peer",
    "logit_scale", "logit_confidence", "attack_features", "svc_mia_peer", "svc_mia",
    "roc_curve", "roc_auc", "tpr_at_fpr", "gaussian_fits", "lira_online", "lira_offline", "ulira",
    "attack_report", "neurips_epsilons", "neurips_forgetting_score", "neurips_final_score",
]

#: Attack features of the SVC-MIA, as the peers name them.
FEATURES = ("correctness", "confidence", "entropy", "m_entropy", "prob")

# The peers (and Song & Mittal) replace log(0) by log(1e-30).
_LOG_FLOOR = math.log(1e-30)
_TINY = np.finfo(np.float64).tiny


# --- validation -----------------------------------------------------------------------------------


def _probs(probs, what: str = "probs") -> np.ndarray:
    p = np.asarray(probs, np.float64)
    if p.ndim != 2:
        raise ValueError(f"{what} must be 2-D (examples, classes), got shape {p.shape}")
    if p.shape[0] == 0:
        raise ValueError(f"{what} is empty (shape {p.shape})")
    if p.shape[1] < 2:
        raise ValueError(f"{what} needs at least 2 classes, got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{what} has non-finite entries (first at row "
                         f"{int(np.argwhere(~np.isfinite(p))[0, 0])})")
    # float32 softmax rows are off by ~1e-7; anything further is not a probability vector
    if p.min() < -1e-6 or p.max() > 1 + 1e-6:
        bad = np.argwhere((p < -1e-6) | (p > 1 + 1e-6))[0]
        raise ValueError(f"{what} must lie in [0, 1]; entry {tuple(int(i) for i in bad)} is "
                         f"{float(p[tuple(bad)])!r}")
    sums = p.sum(1)
    if np.max(np.abs(sums - 1.0)) > 1e-3:
        row = int(np.argmax(np.abs(sums - 1.0)))
        raise ValueError(f"{what} rows must sum to 1; row {row} sums to {sums[row]!r} "
                         f"(pass softmax(logits), not logits)")
    return np.clip(p, 0.0, 1.0)


def _labels(labels, n: int, num_classes: int, what: str = "labels") -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1 or y.shape[0] != n:
        raise ValueError(f"{what} must have shape ({n},) to match the {n} examples, got {y.shape}")
    if y.size and not np.issubdtype(y.dtype, np.integer):
        if not np.all(y == np.round(y)):
            raise ValueError(f"{what} must be integers, got dtype {y.dtype}")
    y = y.astype(np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        bad = int(y[(y < 0) | (y >= num_classes)][0])
        raise ValueError(f"{what} must lie in [0, {num_classes}), found {bad}")
    return y


def _pair(probs, labels, what="probs"):
    p = _probs(probs, what)
    return p, _labels(labels, p.shape[0], p.shape[1], f"{what} labels")


def _scores_1d(x, what: str) -> np.ndarray:
    a = np.asarray(x, np.float64)
    if a.ndim != 1:
        raise ValueError(f"{what} must be 1-D, got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{what} is empty")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what} has non-finite entries (first at index "
                         f"{int(np.argmax(~np.isfinite(a)))})")
    return a


def _binary(is_member, n: int) -> np.ndarray:
    m = np.asarray(is_member)
    if m.ndim != 1 or m.shape[0] != n:
        raise ValueError(f"is_member must have shape ({n},) to match the scores, got {m.shape}")
    if m.dtype != bool:
        if not np.all((m == 0) | (m == 1)):
            raise ValueError(f"is_member must be boolean or 0/1, got values {np.unique(m)[:5]}")
        m = m.astype(bool)
    if m.all() or not m.any():
        raise ValueError(f"is_member needs both members and non-members, got {int(m.sum())} "
                         f"members of {n}")
    return m


# --- features -------------------------------------------------------------------------------------


def softmax(logits) -> np.ndarray:
    """Row-wise softmax of ``(N, C)`` logits in float64 (max-shifted, so stable)."""
    z = np.asarray(logits, np.float64)
    if z.ndim != 2 or z.shape[0] == 0:
        raise ValueError(f"logits must be a non-empty (examples, classes) array, got {z.shape}")
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def confidence(probs, labels) -> np.ndarray:
    """The true-class probability p_y, shape ``(N,)``."""
    p, y = _pair(probs, labels)
    return p[np.arange(p.shape[0]), y]


def entropy(probs) -> np.ndarray:
    """Shannon entropy −Σ_c p_c log p_c (nats), with 0·log 0 = 0; shape ``(N,)``."""
    p = _probs(probs)
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=1)


def _log(p):
    return np.where(p > 0, np.log(np.where(p > 0, p, 1.0)), _LOG_FLOOR)


def modified_entropy(probs, labels) -> np.ndarray:
    """Song & Mittal's modified entropy, per example, shape ``(N,)``.

    Mentr(p, y) = −(1 − p_y) log p_y − Σ_{i≠y} p_i log(1 − p_i).

    It is 0 for a confident correct prediction (p_y = 1) and large for a confident wrong one,
    so, unlike the entropy, it uses the label. log 0 is replaced by log 1e-30 as in the original.

    What the peers compute instead (``modified_entropy_peer``): they index whole *columns* with
    the label vector (``p[:, labels]``), so every class that occurs anywhere in the set gets the
    true-class term in every row, and they take log p where log(1 − p) belongs. The result is
    −Σ_{c∈S} (1 − p_c) log p_c − Σ_{c∉S} p_c log p_c with S the set of labels present, which is
    neither Mentr nor a per-example quantity (it changes with the other rows' labels).
    """
    p, y = _pair(probs, labels)
    rows = np.arange(p.shape[0])
    py = p[rows, y]
    wrong = p * _log(1.0 - p)
    wrong[rows, y] = 0.0
    return -(1.0 - py) * _log(py) - wrong.sum(1)


def modified_entropy_peer(probs, labels) -> np.ndarray:
    """The "m_entropy" feature exactly as Unlearn-Sparse / SalUn compute it, for compatibility.

    For the set of labels S present in ``labels``, every row gets
    −Σ_{c∈S} (1 − p_c) log p_c − Σ_{c∉S} p_c log p_c (log 0 → log 1e-30). See
    :func:`modified_entropy` for why this is wrong. Shape ``(N,)``.
    """
    p, y = _pair(probs, labels)
    present = np.zeros(p.shape[1], bool)
    present[np.unique(y)] = True
    weight = np.where(present[None, :], 1.0 - p, p)
    return -np.sum(weight * _log(p), axis=1)


def logit_scale(p) -> np.ndarray:
    """log(p / (1 − p)) elementwise, in float64, finite for every p in [0, 1].

    Computed as log p − log1p(−p) with both logs floored at the smallest normal float64, so p = 0
    and p = 1 give about ∓708 instead of ±inf. For probabilities that come from a softmax prefer
    :func:`logit_confidence`, which keeps resolution when p_y is within 1e-16 of 1.
    """
    a = np.asarray(p, np.float64)
    if a.size == 0:
        raise ValueError("logit_scale got an empty array")
    if not np.all(np.isfinite(a)) or a.min() < 0 or a.max() > 1:
        bad = float(a[~(np.isfinite(a) & (a >= 0) & (a <= 1))].ravel()[0])
        raise ValueError(f"logit_scale needs probabilities in [0, 1], got {bad!r}")
    return np.log(np.maximum(a, _TINY)) - np.log(np.maximum(1.0 - a, _TINY))


def logit_confidence(logits, labels) -> np.ndarray:
    """LiRA's φ = log p_y − log Σ_{j≠y} p_j straight from logits, without forming p.

    φ = z_y − logsumexp_{j≠y} z_j, which stays exact when p_y rounds to 1.

    Args:
        logits: ``(..., N, C)`` float array (leading axes, e.g. models, are kept).
        labels: ``(N,)`` ints.

    Returns:
        ``(..., N)`` float64.
    """
    z = np.asarray(logits, np.float64)
    if z.ndim < 2 or z.shape[-2] == 0:
        raise ValueError(f"logits must be (..., examples, classes) and non-empty, got {z.shape}")
    y = _labels(labels, z.shape[-2], z.shape[-1])
    onehot = np.eye(z.shape[-1], dtype=bool)[y]
    zy = np.take_along_axis(z, np.broadcast_to(y[:, None], z.shape[:-1] + (1,)), -1)[..., 0]
    others = special.logsumexp(np.where(onehot, -np.inf, z), axis=-1)
    return zy - others


def attack_features(probs, labels, feature: str, *, peer: bool = False) -> np.ndarray:
    """The SVC attack's input for one feature, shape ``(N, d)`` (d = C for ``'prob'``, else 1).

    ``peer=True`` gives ``'m_entropy'`` the peers' formula (computed over this whole set at once,
    as their code does); every other feature is the same either way.
    """
    if feature not in FEATURES:
        raise ValueError(f"feature must be one of {list(FEATURES)}, got {feature!r}")
    p, y = _pair(probs, labels)
    if feature == "correctness":
        f = (np.argmax(p, 1) == y).astype(np.float64)
    elif feature == "confidence":
        f = p[np.arange(p.shape[0]), y]
    elif feature == "entropy":
        f = entropy(p)
    elif feature == "m_entropy":
        f = modified_entropy_peer(p, y) if peer else modified_entropy(p, y)
    else:
        return p
    return f[:, None]


# --- SVC-MIA --------------------------------------------------------------------------------------


def _svc(C: float):
    from sklearn.svm import SVC

    return SVC(C=C, gamma="auto", kernel="rbf")


def _balanced_acc(clf, x_in, x_out) -> float:
    tpr = float(np.mean(clf.predict(x_in) == 1))
    tnr = float(np.mean(clf.predict(x_out) == 0))
    return 0.5 * (tpr + tnr)


def svc_mia_peer(
    retain_probs, retain_labels, test_probs, test_labels, forget_probs, forget_labels, *,
    feature: str = "confidence", n_members: int | None = None, C: float = 3.0,
) -> dict:
    """The peers' SVC "MIA-efficacy", exactly (Unlearn-Sparse ``SVC_MIA``, ``MIA_Accuracy``).

    Shadow members are the *first* ``n_members`` rows of the retain set in the order given
    (default ``len(test)``: their ``Subset(retain, range(len(test)))``), non-members are all
    test rows; an unscaled RBF ``SVC(C=3, gamma='auto')`` is fit on the feature with label 1 for
    members and 0 for non-members; the efficacy is the fraction of D_f predicted non-member.

    Args:
        retain_probs, retain_labels: ``(N_r, C)`` softmax outputs and ``(N_r,)`` labels of D_r,
            in dataset order (the order decides which rows are the shadow members).
        test_probs, test_labels: ``(N_t, C)``, ``(N_t,)`` for the test set.
        forget_probs, forget_labels: ``(N_f, C)``, ``(N_f,)`` for D_f.
        feature: one of :data:`FEATURES`; the papers report ``'confidence'``.
        n_members: shadow members taken from the front of D_r (the sensitivity sweep varies it).
        C: SVC regularisation (3 in Unlearn-Sparse).

    Returns:
        ``{'efficacy', 'train_acc', 'n_members', 'n_nonmembers'}``: ``train_acc`` is the attack's
        balanced accuracy on the shadow set it was fit on. The peers hold nothing out, so there
        is no test accuracy to report; :func:`svc_mia` has one.
    """
    rp, ry = _pair(retain_probs, retain_labels, "retain_probs")
    tp, ty = _pair(test_probs, test_labels, "test_probs")
    fp, fy = _pair(forget_probs, forget_labels, "forget_probs")
    n_members = tp.shape[0] if n_members is None else int(n_members)
    if not 1 <= n_members <= rp.shape[0]:
        raise ValueError(f"n_members must be in [1, {rp.shape[0]}] (the retain set's size), got "
                         f"{n_members}")
    x_in = attack_features(rp[:n_members], ry[:n_members], feature, peer=True)
    x_out = attack_features(tp, ty, feature, peer=True)
    x_f = attack_features(fp, fy, feature, peer=True)
    clf = _svc(C).fit(np.concatenate([x_in, x_out]),
                      np.concatenate([np.ones(len(x_in)), np.zeros(len(x_out))]))
    return {
        "efficacy": float(1.0 - np.mean(clf.predict(x_f))),
        "train_acc": _balanced_acc(clf, x_in, x_out),
        "n_members": n_members,
        "n_nonmembers": int(tp.shape[0]),
    }


def svc_mia(
    retain_probs, retain_labels, test_probs, test_labels, forget_probs, forget_labels, *,
    feature: str = "confidence", n_shadow: int | None = None, holdout: float = 0.5,
    seed: int = 0, C: float = 3.0,
) -> dict:
    """Corrected SVC-MIA: random balanced shadow sets, standardised features, held-out accuracy.

    Draws ``n_shadow`` members uniformly from D_r and as many non-members from the test set
    (seeded), so the attack's prior is 1/2 whatever the set sizes; splits each side into an
    attack-train part and a held-out ``holdout`` part; standardises the features with the
    attack-train statistics; fits the same RBF SVC as the peers; and reports the fraction of D_f
    predicted non-member alongside the attack's accuracy on data it did not see. A held-out
    accuracy near 0.5 means the attack cannot tell members from non-members at all, so its
    efficacy on D_f says nothing about unlearning. ``'m_entropy'`` is the correct Mentr.

    Args:
        retain_probs, retain_labels, test_probs, test_labels, forget_probs, forget_labels: as in
            :func:`svc_mia_peer`; the order of D_r does not matter here.
        feature: one of :data:`FEATURES`.
        n_shadow: shadow examples per side; default (and maximum) min(N_r, N_t).
        holdout: fraction of each side held out for the attack's test accuracy, in (0, 1).
        seed: for the draw and the split.
        C: SVC regularisation.

    Returns:
        ``{'efficacy', 'train_acc', 'test_acc', 'n_shadow'}``; the accuracies are balanced.
    """
    rp, ry = _pair(retain_probs, retain_labels, "retain_probs")
    tp, ty = _pair(test_probs, test_labels, "test_probs")
    fp, fy = _pair(forget_probs, forget_labels, "forget_probs")
    n_max = min(rp.shape[0], tp.shape[0])
    n = n_max if n_shadow is None else int(n_shadow)
    if not 2 <= n <= n_max:
        raise ValueError(f"n_shadow must be in [2, {n_max}] (min of retain and test sizes), "
                         f"got {n}")
    if not 0.0 < holdout < 1.0:
        raise ValueError(f"holdout must be in (0, 1), got {holdout}")
    n_test = min(max(1, int(round(holdout * n))), n - 1)
    rng = np.random.default_rng(seed)
    mem = rng.choice(rp.shape[0], n, replace=False)
    non = rng.choice(tp.shape[0], n, replace=False)
    # features over the drawn rows only (Mentr is per example, so this is just economy)
    x_in = attack_features(rp[mem], ry[mem], feature)
    x_out = attack_features(tp[non], ty[non], feature)
    x_f = attack_features(fp, fy, feature)
    tr_in, te_in = x_in[n_test:], x_in[:n_test]
    tr_out, te_out = x_out[n_test:], x_out[:n_test]
    x_tr = np.concatenate([tr_in, tr_out])
    mu, sd = x_tr.mean(0), x_tr.std(0)
    sd = np.where(sd > 0, sd, 1.0)  # a constant feature (e.g. all correct) stays constant

    def z(x):
        return (x - mu) / sd

    clf = _svc(C).fit(z(x_tr), np.concatenate([np.ones(len(tr_in)), np.zeros(len(tr_out))]))
    return {
        "efficacy": float(1.0 - np.mean(clf.predict(z(x_f)))),
        "train_acc": _balanced_acc(clf, z(tr_in), z(tr_out)),
        "test_acc": _balanced_acc(clf, z(te_in), z(te_out)),
        "n_shadow": n,
    }


# --- ROC ------------------------------------------------------------------------------------------


def roc_curve(is_member, scores) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The exact ROC of "member if score ≥ t" over every distinct threshold t.

    Tied scores move together (one point per distinct score), so the curve is the one any
    threshold rule can achieve, without interpolation across ties.

    Args:
        is_member: ``(N,)`` bool (or 0/1), both classes present.
        scores: ``(N,)`` finite floats; larger = more member-like.

    Returns:
        ``(fpr, tpr, thresholds)``: increasing, starting at (0, 0) with threshold +inf.
    """
    s = _scores_1d(scores, "scores")
    m = _binary(is_member, s.size)
    order = np.argsort(-s, kind="stable")
    s, m = s[order], m[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # last index of each tie group
    tp = np.cumsum(m)[last]
    fp = np.cumsum(~m)[last]
    fpr = np.r_[0.0, fp / (~m).sum()]
    tpr = np.r_[0.0, tp / m.sum()]
    return fpr, tpr, np.r_[np.inf, s[last]]


def roc_auc(is_member, scores) -> float:
    """Area under the ROC: P(score_member > score_nonmember) + ½ P(tie), exactly.

    Computed from average ranks (Mann–Whitney U), equal to the trapezoidal area under
    :func:`roc_curve`.
    """
    s = _scores_1d(scores, "scores")
    m = _binary(is_member, s.size)
    from scipy.stats import rankdata

    r = rankdata(s)  # average ranks: ties count ½
    n1, n0 = int(m.sum()), int((~m).sum())
    return float((r[m].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def tpr_at_fpr(is_member, scores, fpr: float) -> float:
    """The largest TPR of a threshold rule "member if score ≥ t" whose FPR is ≤ ``fpr``.

    Exact over all distinct thresholds, ties handled (a tie group is either all in or all out).
    With N_0 non-members, budgets below 1/N_0 only admit thresholds above every non-member, so
    the result at FPR 0.1% with 200 non-members is the TPR at FPR 0.
    """
    if not 0.0 <= fpr <= 1.0:
        raise ValueError(f"fpr must be in [0, 1], got {fpr}")
    f, t, _ = roc_curve(is_member, scores)
    return float(t[f <= fpr + 1e-12].max())


def attack_report(is_member, scores, fprs: Sequence[float] = (0.01, 0.001)) -> dict:
    """``{'auc', 'tpr@<fpr>' ...}`` for one attack's scores."""
    out = {"auc": roc_auc(is_member, scores)}
    for f in fprs:
        out[f"tpr@{f:g}"] = tpr_at_fpr(is_member, scores, f)
    return out


# --- LiRA / U-LiRA --------------------------------------------------------------------------------


def _observations(scores, what, n_examples=None):
    a = np.asarray(scores, np.float64)
    if a.ndim != 2:
        raise ValueError(f"{what} must be (shadow models, examples), got shape {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{what} is empty (shape {a.shape})")
    if n_examples is not None and a.shape[1] != n_examples:
        raise ValueError(f"{what} has {a.shape[1]} examples, the targets have {n_examples}")
    if np.any(np.isinf(a)):
        raise ValueError(f"{what} has infinite entries; use logit_confidence (finite) scores")
    return a


def gaussian_fits(obs, *, global_variance: bool = False, min_std: float = 1e-4) -> dict:
    """Per-example Gaussian fits of shadow observations; NaN marks "not an observation".

    Args:
        obs: ``(K, N)`` float, NaN where shadow k gives no observation of example n.
        global_variance: use one pooled within-example standard deviation for every example
            (Carlini et al.'s choice for few shadows), Σ_n Σ_k (x_kn − μ_n)² / Σ_n (K_n − 1).
        min_std: floor on σ (identical observations would give a zero-width Gaussian).

    Returns:
        ``{'mean', 'std', 'count'}``, each ``(N,)``.

    Raises:
        ValueError: an example with no observation, or (per-example variance) with only one.
    """
    valid = ~np.isnan(obs)
    count = valid.sum(0)
    if np.any(count == 0):
        raise ValueError(f"example {int(np.argmax(count == 0))} has no shadow observation; "
                         f"train more shadow models")
    x = np.where(valid, obs, 0.0)
    mean = x.sum(0) / count
    sq = np.where(valid, (obs - mean) ** 2, 0.0).sum(0)
    if global_variance:
        dof = np.sum(count - 1)
        if dof < 1:
            raise ValueError("global_variance needs at least one example with 2 observations")
        std = np.full(obs.shape[1], math.sqrt(sq.sum() / dof))
    else:
        if np.any(count < 2):
            raise ValueError(f"example {int(np.argmax(count < 2))} has {int(count.min())} "
                             f"observation(s); per-example variance needs 2 (or set "
                             f"global_variance=True)")
        std = np.sqrt(sq / (count - 1))
    return {"mean": mean, "std": np.maximum(std, min_std), "count": count}


def _split_obs(in_scores, out_scores, in_mask, n):
    a_in = _observations(in_scores, "in_scores", n)
    a_out = _observations(out_scores, "out_scores", n)
    if in_mask is not None:
        mk = np.asarray(in_mask, bool)
        if mk.shape != a_in.shape or mk.shape != a_out.shape:
            raise ValueError(f"in_mask shape {mk.shape} must equal in_scores {a_in.shape} and "
                             f"out_scores {a_out.shape}")
        a_in = np.where(mk, a_in, np.nan)
        a_out = np.where(mk, np.nan, a_out)
    return a_in, a_out


def _targets(target_scores):
    t = np.asarray(target_scores, np.float64)
    if t.ndim not in (1, 2) or t.size == 0:
        raise ValueError(f"target_scores must be (N,) or (T, N) and non-empty, got {t.shape}")
    if not np.all(np.isfinite(t)):
        raise ValueError("target_scores has non-finite entries")
    return t


def _log_normal(x, mu, sd):
    return -0.5 * ((x - mu) / sd) ** 2 - np.log(sd) - 0.5 * math.log(2 * math.pi)


def lira_online(target_scores, in_scores, out_scores, in_mask=None, *,
                global_variance: bool = False, min_std: float = 1e-4) -> dict:
    """Online LiRA: per-example log N(φ; μ_in, σ_in²) − log N(φ; μ_out, σ_out²).

    Args:
        target_scores: ``(N,)`` or ``(T, N)`` logit-scaled confidences φ of the target model(s).
        in_scores: ``(K, N)`` shadow φ; entries that are IN observations (the shadow trained on
            the example). NaN = not an observation.
        out_scores: ``(K', N)`` shadow φ for OUT observations (NaN = not one).
        in_mask: optional ``(K, N)`` bool; then ``in_scores`` and ``out_scores`` are one
            shadow matrix (pass it twice) and an entry is IN where the mask is True, OUT where
            False: ``lira_online(t, s, s, mask)``.
        global_variance: one pooled σ per side (for few shadows); see :func:`gaussian_fits`.
        min_std: σ floor.

    Returns:
        ``{'score', 'mu_in', 'sigma_in', 'n_in', 'mu_out', 'sigma_out', 'n_out'}``; ``score``
        has the shape of ``target_scores``, larger = more member-like.
    """
    t = _targets(target_scores)
    a_in, a_out = _split_obs(in_scores, out_scores, in_mask, t.shape[-1])
    fi = gaussian_fits(a_in, global_variance=global_variance, min_std=min_std)
    fo = gaussian_fits(a_out, global_variance=global_variance, min_std=min_std)
    score = _log_normal(t, fi["mean"], fi["std"]) - _log_normal(t, fo["mean"], fo["std"])
    return {"score": score, "mu_in": fi["mean"], "sigma_in": fi["std"], "n_in": fi["count"],
            "mu_out": fo["mean"], "sigma_out": fo["std"], "n_out": fo["count"]}


def lira_offline(target_scores, out_scores, out_mask=None, *, global_variance: bool = False,
                 min_std: float = 1e-4) -> dict:
    """Offline LiRA: a one-sided test against the OUT Gaussian only.

    score = log Φ((φ − μ_out) / σ_out): how far into the OUT distribution's upper tail the
    target's φ lies (members are fit, so their φ is high). No IN shadows are needed, so a
    target can be attacked with shadows that never saw it.

    Args:
        target_scores: ``(N,)`` or ``(T, N)``.
        out_scores: ``(K, N)`` shadow φ, NaN where not an OUT observation.
        out_mask: optional ``(K, N)`` bool, True where the entry is an OUT observation.

    Returns:
        ``{'score', 'mu_out', 'sigma_out', 'n_out'}``.
    """
    t = _targets(target_scores)
    a = _observations(out_scores, "out_scores", t.shape[-1])
    if out_mask is not None:
        mk = np.asarray(out_mask, bool)
        if mk.shape != a.shape:
            raise ValueError(f"out_mask shape {mk.shape} must equal out_scores {a.shape}")
        a = np.where(mk, a, np.nan)
    fo = gaussian_fits(a, global_variance=global_variance, min_std=min_std)
    return {"score": special.log_ndtr((t - fo["mean"]) / fo["std"]), "mu_out": fo["mean"],
            "sigma_out": fo["std"], "n_out": fo["count"]}


def ulira(target_scores, unlearned_scores, retrained_scores, unlearned_mask=None,
          retrained_mask=None, *, global_variance: bool = False, min_std: float = 1e-4) -> dict:
    """U-LiRA (Hayes et al.): is this example's φ from an "unlearned" or a "retrained" model?

    Per example, Gaussians are fit to φ under shadows that trained on it and then unlearned it
    with the same algorithm (``unlearned``), and under shadows that never trained on it
    (``retrained``: the distribution exact unlearning produces); the statistic is their log
    likelihood ratio at the target's φ. A perfect unlearner makes the two Gaussians equal and
    the attack's AUC 0.5.

    Args:
        target_scores: ``(N,)`` or ``(T, N)`` target φ.
        unlearned_scores: ``(K, N)``; entries where ``unlearned_mask`` is True (or non-NaN,
            without a mask) are observations of the unlearned distribution.
        retrained_scores: ``(K', N)``; entries where ``retrained_mask`` is True (or non-NaN).
        unlearned_mask, retrained_mask: optional ``(K, N)`` / ``(K', N)`` bools.

    Returns:
        As :func:`lira_online`, with 'in' = unlearned and 'out' = retrained; larger score =
        more "unlearned-like", i.e. the unlearning left a trace.
    """
    t = _targets(target_scores)
    u = _observations(unlearned_scores, "unlearned_scores", t.shape[-1])
    r = _observations(retrained_scores, "retrained_scores", t.shape[-1])
    for arr, mk, what in ((u, unlearned_mask, "unlearned_mask"),
                          (r, retrained_mask, "retrained_mask")):
        if mk is not None and np.asarray(mk).shape != arr.shape:
            raise ValueError(f"{what} shape {np.asarray(mk).shape} must equal its scores "
                             f"{arr.shape}")
    if unlearned_mask is not None:
        u = np.where(np.asarray(unlearned_mask, bool), u, np.nan)
    if retrained_mask is not None:
        r = np.where(np.asarray(retrained_mask, bool), r, np.nan)
    return lira_online(t, u, r, global_variance=global_variance, min_std=min_std)


# --- NeurIPS 2023 unlearning challenge ------------------------------------------------------------

_DELTA = 1e-5
_EPS_CAP = 50.0
_PER_UNIT = 100
_BUFFER = 2.0


def _rule_epsilons(fpr, fnr, delta):
    """ε of each decision rule; NaN for rules that are discarded (exactly one rate is 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.log(1 - delta - fpr) - np.log(fnr)
        b = np.log(1 - delta - fnr) - np.log(fpr)
    a = np.where(1 - delta - fpr > 0, a, np.nan)
    b = np.where(1 - delta - fnr > 0, b, np.nan)
    both_nan = np.isnan(a) & np.isnan(b)
    eps = np.clip(np.fmax(a, b), 0.0, None)
    eps = np.where(both_nan, np.nan, eps)
    eps = np.where((fpr == 0) ^ (fnr == 0), np.nan, eps)  # too few samples to trust
    return np.where((fpr == 0) & (fnr == 0), np.inf, eps)  # perfect separation


def _example_epsilon(pos, neg, delta, cap):
    pos, neg = np.sort(pos), np.sort(neg)
    n_pos, n_neg = pos.size, neg.size
    pos_range, neg_range = pos[-1] - pos[0], neg[-1] - neg[0]
    largest, smallest = max(pos_range, neg_range), min(pos_range, neg_range)
    if largest == 0:
        # both constant: equal values cannot be told apart, different ones are always told apart
        return 0.0 if pos[0] == neg[0] else cap
    if smallest / largest < 0.01:
        # one distribution is a near-spike inside the other's spread: treated as worst case
        return cap
    eps = []
    # single thresholds: predict "positive" (the larger-median side) when φ ≥ t
    lo, hi = min(pos[0], neg[0]), max(pos[-1], neg[-1])
    t = np.linspace(lo, hi, int(math.ceil((hi - lo) * _PER_UNIT)))
    if t.size:
        tpr = 1 - np.searchsorted(pos, t, "left") / n_pos
        fpr = 1 - np.searchsorted(neg, t, "left") / n_neg
        eps.append(_rule_epsilons(fpr, 1 - tpr, delta))
    # interval rules: predict the peakier (smaller-range) side inside [l, r]
    peaky, other = (neg, pos) if pos_range >= neg_range else (pos, neg)
    width = smallest
    r_lo, r_hi = peaky[0] + width - _BUFFER, peaky[-1] + _BUFFER
    right = np.linspace(r_lo, r_hi, int(math.ceil((r_hi - r_lo) * _PER_UNIT)))
    n_left = int(math.ceil(2 * _BUFFER * _PER_UNIT))
    offsets = np.linspace(-width - _BUFFER, -width + _BUFFER, n_left)
    left = (right[:, None] + offsets[None, :]).ravel()
    right = np.repeat(right, n_left)

    def inside(x):
        # an interval with l > r (possible when width < 2) holds nothing
        k = np.searchsorted(x, right, "right") - np.searchsorted(x, left, "left")
        return np.maximum(k, 0) / x.size

    tpr_d = inside(peaky)
    fpr_d = inside(other)
    eps.append(_rule_epsilons(fpr_d, 1 - tpr_d, delta))
    eps = np.concatenate(eps)
    if np.all(np.isnan(eps)):
        return 0.0  # no rule with evidence either way
    return float(min(np.nanmax(eps), cap))


def neurips_epsilons(unlearned_scores, retrained_scores, *, delta: float = _DELTA,
                     cap: float = _EPS_CAP) -> np.ndarray:
    """Per-example ε of the NeurIPS 2023 unlearning challenge, shape ``(N_examples,)``.

    For each example the "positive" distribution is whichever of {retrained, unlearned} has the
    larger median φ. Two rule families are tried: every single threshold on a grid of 100 per
    unit of φ spanning both samples ("positive if φ ≥ t"), and every interval [l, r] around the
    peakier (smaller-range) sample (right ends from its min + width − 2 to its max + 2, 100 per
    unit; for each, 400 left ends within ±2 of r − width). Each rule's FPR and FNR over the
    models give ε = max(log(1 − δ − FPR) − log FNR, log(1 − δ − FNR) − log FPR), clipped at 0;
    rules with exactly one of FPR, FNR zero are discarded; FPR = FNR = 0 gives ∞. ε_i is the
    maximum, capped at ``cap``; a sample whose range is under 1% of the other's gets ``cap``.
    Two cases the challenge code leaves undefined are ours: both samples constant gives 0 if
    equal and ``cap`` otherwise; no surviving rule gives 0.

    Args:
        unlearned_scores: ``(N, n)`` φ of n forget examples under N unlearned models.
        retrained_scores: ``(N, n)`` φ under N retrained models.
        delta: the δ of (ε, δ)-unlearning.
        cap: the ε cap.
    """
    u = _observations(unlearned_scores, "unlearned_scores")
    r = _observations(retrained_scores, "retrained_scores", u.shape[1])
    if np.any(np.isnan(u)) or np.any(np.isnan(r)):
        raise ValueError("neurips_epsilons takes complete (models, examples) matrices, no NaN")
    if u.shape[0] < 2 or r.shape[0] < 2:
        raise ValueError(f"need ≥ 2 models a side, got {u.shape[0]} unlearned and "
                         f"{r.shape[0]} retrained")
    retrain_pos = np.median(r, 0) > np.median(u, 0)
    return np.array([
        _example_epsilon(r[:, i], u[:, i], delta, cap) if retrain_pos[i]
        else _example_epsilon(u[:, i], r[:, i], delta, cap)
        for i in range(u.shape[1])
    ])


def neurips_bins(num_models: int) -> np.ndarray:
    """Left edges of the scoring bins: width 0.5 from 0 while the right edge ≤ ⌈log(N − 1)⌉.

    Bin n is worth 2^−n points; ε beyond the last bin scores 0. N = 512 gives 14 bins; N = 2
    gives none (every ε scores 0), N = 3 two bins, N = 8 four.
    """
    if num_models < 2:
        raise ValueError(f"need ≥ 2 models, got {num_models}")
    max_eps = math.ceil(math.log(num_models - 1))
    return np.arange(int(2 * max_eps)) * 0.5


def neurips_forgetting_score(unlearned_outputs, retrained_outputs, labels=None, *,
                             delta: float = _DELTA, cap: float = _EPS_CAP) -> dict:
    """The challenge's forgetting quality F = mean over D_f of 2^−bin(ε_i).

    Args:
        unlearned_outputs: ``(N, n)`` φ, or ``(N, n, C)`` logits (then ``labels`` is needed and
            φ is :func:`logit_confidence`), for n forget examples under N unlearned models.
        retrained_outputs: the same for N retrained models.
        labels: ``(n,)`` true labels, for logits.

    Returns:
        ``{'F', 'epsilons' (n,), 'points' (n,), 'bins', 'num_models'}``. With small N the bins
        shrink (see :func:`neurips_bins`), so F is comparable only at equal N.
    """
    u = np.asarray(unlearned_outputs, np.float64)
    r = np.asarray(retrained_outputs, np.float64)
    if u.ndim == 3 or r.ndim == 3:
        if labels is None:
            raise ValueError("logits (models, examples, classes) need labels")
        u, r = logit_confidence(u, labels), logit_confidence(r, labels)
    if u.shape != r.shape:
        raise ValueError(f"unlearned {u.shape} and retrained {r.shape} outputs must match "
                         f"(N models each, same examples)")
    eps = neurips_epsilons(u, r, delta=delta, cap=cap)
    bins = neurips_bins(u.shape[0])
    idx = np.floor(eps / 0.5)
    points = np.where(idx < bins.size, 0.5 ** idx, 0.0)
    return {"F": float(points.mean()), "epsilons": eps, "points": points, "bins": bins,
            "num_models": int(u.shape[0])}


def neurips_final_score(forgetting_score: float, ra_unlearned, ra_retrained, ta_unlearned,
                        ta_retrained) -> float:
    """F × (mean RA_unlearned / mean RA_retrained) × (mean TA_unlearned / mean TA_retrained).

    Accuracies are fractions (or percentages: only ratios enter), one per model.
    """
    if not 0.0 <= forgetting_score <= 1.0:
        raise ValueError(f"forgetting_score must be in [0, 1], got {forgetting_score}")
    means = []
    for what, v in (("ra_unlearned", ra_unlearned), ("ra_retrained", ra_retrained),
                    ("ta_unlearned", ta_unlearned), ("ta_retrained", ta_retrained)):
        a = np.atleast_1d(np.asarray(v, np.float64))
        if a.size == 0 or not np.all(np.isfinite(a)) or a.min() < 0:
            raise ValueError(f"{what} must be non-empty, finite and ≥ 0, got {a}")
        means.append(a.mean())
    if means[1] == 0 or means[3] == 0:
        raise ValueError("retrained accuracies average 0: the ratio is undefined")
    return float(forgetting_score * means[0] / means[1] * means[2] / means[3])
