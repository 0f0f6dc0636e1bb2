"""Membership-inference metrics against hand values, scikit-learn, and planted toys."""

import math

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score
from sklearn.svm import SVC

from unprune_jax.metrics import mia

approx = pytest.approx


def random_probs(rng, n, c=10, scale=3.0, boost=0.0):
    """Softmax rows of random logits; ``boost`` is added to the true class's logit."""
    y = rng.integers(0, c, n)
    z = rng.normal(0, scale, (n, c))
    z[np.arange(n), y] += boost
    return mia.softmax(z), y


# --- features -------------------------------------------------------------------------------------


P3 = np.array([[0.7, 0.2, 0.1],
               [0.2, 0.5, 0.3]])
Y3 = np.array([0, 2])


def test_modified_entropy_by_hand():
    ln = math.log
    # row 0, y = 0: −(1 − .7) ln .7 − .2 ln(1 − .2) − .1 ln(1 − .1)
    row0 = -(0.3 * ln(0.7)) - 0.2 * ln(0.8) - 0.1 * ln(0.9)
    # row 1, y = 2: −(1 − .3) ln .3 − .2 ln .8 − .5 ln .5
    row1 = -(0.7 * ln(0.3)) - 0.2 * ln(0.8) - 0.5 * ln(0.5)
    assert mia.modified_entropy(P3, Y3) == approx([row0, row1], rel=1e-12)


def test_modified_entropy_peer_reproduces_the_column_bug():
    ln = math.log
    # labels present: {0, 2}. Columns 0 and 2 get (1 − p) log p, column 1 keeps p log p.
    row0 = -(0.3 * ln(0.7) + 0.2 * ln(0.2) + 0.9 * ln(0.1))
    row1 = -(0.8 * ln(0.2) + 0.5 * ln(0.5) + 0.7 * ln(0.3))
    assert mia.modified_entropy_peer(P3, Y3) == approx([row0, row1], rel=1e-12)
    # not per-example: row 0 alone (labels {0}) gives another value for the same (p, y)
    alone = -(0.3 * ln(0.7) + 0.2 * ln(0.2) + 0.1 * ln(0.1))
    assert mia.modified_entropy_peer(P3[:1], Y3[:1]) == approx([alone], rel=1e-12)
    assert mia.modified_entropy(P3[:1], Y3[:1])[0] == approx(mia.modified_entropy(P3, Y3)[0])


def test_entropy_confidence_and_zero_probabilities():
    ln = math.log
    assert mia.entropy(P3) == approx([-(0.7 * ln(0.7) + 0.2 * ln(0.2) + 0.1 * ln(0.1)),
                                      -(0.2 * ln(0.2) + 0.5 * ln(0.5) + 0.3 * ln(0.3))])
    assert mia.confidence(P3, Y3) == approx([0.7, 0.3])
    onehot = np.array([[1.0, 0.0, 0.0]])
    assert mia.entropy(onehot) == approx([0.0])
    assert mia.modified_entropy(onehot, [0]) == approx([0.0])
    # confidently wrong: −(1 − 0) log(1e−30) − 1·log(1 − 1 → 1e−30)
    assert mia.modified_entropy(onehot, [1]) == approx([-2 * math.log(1e-30)])


def test_logit_scale_and_logit_confidence():
    p = np.array([0.5, 0.9, 0.01])
    assert mia.logit_scale(p) == approx(np.log(p / (1 - p)))
    assert np.all(np.isfinite(mia.logit_scale([0.0, 1.0])))
    z = np.array([[2.0, 1.0, -1.0], [0.0, 40.0, 0.0]])
    y = np.array([0, 1])
    p = mia.softmax(z)
    expect = math.log(p[0, 0]) - math.log(1 - p[0, 0])
    assert mia.logit_confidence(z, y)[0] == approx(expect, rel=1e-12)
    # p_y rounds to 1 in float64; the logit form stays exact: 40 − log 2
    assert mia.logit_confidence(z, y)[1] == approx(40 - math.log(2), rel=1e-12)
    # leading model axis kept
    assert mia.logit_confidence(np.stack([z, z]), y).shape == (2, 2)


# --- SVC-MIA --------------------------------------------------------------------------------------


def test_svc_mia_peer_equals_direct_sklearn():
    rng = np.random.default_rng(0)
    rp, ry = random_probs(rng, 300, boost=2.0)
    tp, ty = random_probs(rng, 120)
    fp, fy = random_probs(rng, 50, boost=1.0)
    out = mia.svc_mia_peer(rp, ry, tp, ty, fp, fy)
    # direct: first |test| retain rows vs all test rows, raw confidence, SVC(C=3, gamma='auto')
    conf = lambda p, y: p[np.arange(len(y)), y][:, None]  # noqa: E731
    x = np.concatenate([conf(rp[:120], ry[:120]), conf(tp, ty)])
    lab = np.r_[np.ones(120), np.zeros(120)]
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(x, lab)
    assert out["efficacy"] == 1 - clf.predict(conf(fp, fy)).mean()
    pin, pout = clf.predict(x[:120]), clf.predict(x[120:])
    assert out["train_acc"] == approx(0.5 * (pin.mean() + (1 - pout.mean())))
    assert out["n_members"] == 120 and out["n_nonmembers"] == 120
    # the full probability vector and another member count, too
    out = mia.svc_mia_peer(rp, ry, tp, ty, fp, fy, feature="prob", n_members=60)
    clf = SVC(C=3, gamma="auto", kernel="rbf").fit(np.concatenate([rp[:60], tp]),
                                                    np.r_[np.ones(60), np.zeros(120)])
    assert out["efficacy"] == 1 - clf.predict(fp).mean()


def test_svc_mia_corrected_sees_a_planted_gap_and_nothing_else():
    rng = np.random.default_rng(1)
    rp, ry = random_probs(rng, 600, boost=6.0)   # members: confident
    tp, ty = random_probs(rng, 600)              # non-members: not
    fp, fy = random_probs(rng, 200, boost=6.0)   # D_f still looks like members
    out = mia.svc_mia(rp, ry, tp, ty, fp, fy, seed=3)
    assert out["test_acc"] > 0.8 and out["efficacy"] < 0.3
    assert out == mia.svc_mia(rp, ry, tp, ty, fp, fy, seed=3)  # seeded
    # no gap: the held-out accuracy is chance (600 held-out examples: sd ≈ 0.02)
    rp2, ry2 = random_probs(rng, 600)
    out = mia.svc_mia(rp2, ry2, tp, ty, fp, fy, seed=3, feature="m_entropy")
    assert abs(out["test_acc"] - 0.5) < 0.08


# --- ROC ------------------------------------------------------------------------------------------


def test_roc_auc_equals_sklearn_with_ties():
    rng = np.random.default_rng(2)
    s = np.round(rng.normal(size=400), 1)  # many ties
    m = rng.random(400) < 0.3
    s[m] += 0.5
    assert mia.roc_auc(m, s) == approx(roc_auc_score(m, s), abs=1e-12)
    f, t, _ = mia.roc_curve(m, s)
    assert np.trapezoid(t, f) == approx(roc_auc_score(m, s), abs=1e-12)


def test_tpr_at_fpr_by_hand():
    # scores, descending:    9  8  7  7  6  5  4  3  2  1
    # member?                1  1  0  1  1  0  0  1  0  0      (5 members, 5 non-members)
    s = np.array([9, 8, 7, 7, 6, 5, 4, 3, 2, 1], float)
    m = np.array([1, 1, 0, 1, 1, 0, 0, 1, 0, 0], bool)
    # FPR 0: only t = 8 (2/5); the tie at 7 pulls a non-member in with a member
    assert mia.tpr_at_fpr(m, s, 0.0) == approx(0.4)
    assert mia.tpr_at_fpr(m, s, 0.19) == approx(0.4)
    assert mia.tpr_at_fpr(m, s, 0.2) == approx(0.8)   # t = 6: 4/5 members, 1/5 non-members
    assert mia.tpr_at_fpr(m, s, 0.6) == approx(1.0)   # t = 3: FPR 3/5
    assert mia.tpr_at_fpr(m, s, 0.59) == approx(0.8)
    assert mia.roc_auc(m, s) == approx(roc_auc_score(m, s))


# --- LiRA -----------------------------------------------------------------------------------------


def lira_toy(shift, n=2000, k=16, seed=0):
    """φ of n examples under k shadows and one target; members' φ raised by ``shift``."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 2.0, n)                 # per-example difficulty
    # every example IN for exactly half the shadows, as Carlini et al. arrange it
    in_mask = np.argsort(rng.random((k, n)), axis=0) < k // 2
    shadows = base + shift * in_mask + rng.normal(0, 0.5, (k, n))
    member = rng.random(n) < 0.5
    target = base + shift * member + rng.normal(0, 0.5, n)
    return target, shadows, in_mask, member


def test_lira_finds_planted_members_at_low_fpr():
    target, shadows, in_mask, member = lira_toy(shift=2.0)
    on = mia.lira_online(target, shadows, shadows, in_mask)
    rep = mia.attack_report(member, on["score"])
    assert rep["tpr@0.01"] > 0.5 and rep["auc"] > 0.95
    # the fits recover the planted parameters
    assert np.median(on["mu_in"] - on["mu_out"]) == approx(2.0, abs=0.1)
    assert np.median(on["sigma_out"]) == approx(0.5, abs=0.1)
    off = mia.lira_offline(target, shadows, ~in_mask)
    assert mia.tpr_at_fpr(member, off["score"], 0.01) > 0.3
    glob = mia.lira_online(target, shadows, shadows, in_mask, global_variance=True)
    assert glob["sigma_in"][0] == approx(0.5, abs=0.05)
    assert mia.tpr_at_fpr(member, glob["score"], 0.01) > 0.5
    # the per-example calibration matters: raw φ is swamped by the example difficulty
    assert mia.tpr_at_fpr(member, target, 0.01) < rep["tpr@0.01"] / 3


def test_lira_is_chance_when_nothing_is_planted():
    target, shadows, in_mask, member = lira_toy(shift=0.0)
    score = mia.lira_online(target, shadows, shadows, in_mask)["score"]
    # null AUC sd = sqrt((n1 + n0 + 1) / (12 n1 n0)) ≈ 0.013 at 1000/1000; allow 4 sd
    n1, n0 = member.sum(), (~member).sum()
    sd = math.sqrt((n1 + n0 + 1) / (12 * n1 * n0))
    assert abs(mia.roc_auc(member, score) - 0.5) < 4 * sd


def test_ulira_is_lira_with_unlearned_and_retrained_sides():
    target, shadows, in_mask, _ = lira_toy(shift=1.0, n=50, k=8)
    u = mia.ulira(target, shadows, shadows, in_mask, ~in_mask)
    o = mia.lira_online(target, shadows, shadows, in_mask)
    np.testing.assert_allclose(u["score"], o["score"])
    # NaN-marked observations are the same thing as masks
    nan_in = np.where(in_mask, shadows, np.nan)
    nan_out = np.where(in_mask, np.nan, shadows)
    np.testing.assert_allclose(mia.ulira(target, nan_in, nan_out)["score"], o["score"])
    # several targets at once
    assert mia.ulira(np.stack([target, target]), nan_in, nan_out)["score"].shape == (2, 50)


# --- NeurIPS challenge score ----------------------------------------------------------------------


def test_neurips_bins_shrink_with_n():
    assert len(mia.neurips_bins(512)) == 14
    assert len(mia.neurips_bins(8)) == 4      # ⌈log 7⌉ = 2
    assert len(mia.neurips_bins(2)) == 0


def test_neurips_identical_scores_full_marks_separable_zero():
    rng = np.random.default_rng(4)
    r = rng.normal(0, 1, (32, 20))
    same = mia.neurips_forgetting_score(r.copy(), r)
    assert same["F"] == 1.0 and np.all(same["epsilons"] == 0)
    apart = mia.neurips_forgetting_score(r + 10.0, r)
    assert apart["F"] == 0.0 and np.all(apart["epsilons"] == 50)
    # a moderate shift lands in between, and a larger one scores lower
    mid = mia.neurips_forgetting_score(r + 1.0, r)["F"]
    far = mia.neurips_forgetting_score(r + 2.0, r)["F"]
    assert 0.0 < far < mid < 1.0
    # logits with labels: same score as φ
    z = rng.normal(0, 2, (8, 5, 3))
    y = np.array([0, 1, 2, 0, 1])
    phi = mia.logit_confidence(z, y)
    a = mia.neurips_forgetting_score(z, z[::-1], y)["F"]
    b = mia.neurips_forgetting_score(phi, phi[::-1])["F"]
    assert a == b


def test_neurips_epsilon_by_hand():
    # 3 models a side, unlearned {0, 1, 2}, retrained {10, 11, 12}: perfect separation → cap;
    # unlearned spike {5, 5, 5} inside retrained {0, 5, 10}: range ratio 0 < 1% → cap
    assert mia.neurips_epsilons([[0.], [1.], [2.]], [[10.], [11.], [12.]])[0] == 50
    assert mia.neurips_epsilons([[5.], [5.], [5.]], [[0.], [5.], [10.]])[0] == 50
    # an interval can separate too: u = {0, 1, 2, 13}, r = {3, 10, 11, 12}; [2.5, 12.5] holds all
    # of r and none of u → FPR = FNR = 0 → ∞ → cap
    assert mia.neurips_epsilons([[0.], [1.], [2.], [13.]], [[3.], [10.], [11.], [12.]])[0] == 50
    # r = u + 1 with u = {0, 1, 2, 3}: r is positive (larger median). Over every rule (a run of
    # the merged sorted values 0 1 1 2 2 3 3 4, ties inseparable), the best are "φ ≥ t", t in
    # (1, 2] (TPR 3/4, FPR 1/2) and t in (2, 3] (TPR 1/2, FPR 1/4), both giving
    # ε = log(1 − δ − 1/2) − log(1/4) = log(2 − 4δ); rules with FPR or FNR = 0 are discarded.
    u = np.array([[0.], [1.], [2.], [3.]])
    assert mia.neurips_epsilons(u, u + 1)[0] == approx(math.log(0.5 - 1e-5) - math.log(0.25),
                                                       rel=1e-12)


def test_neurips_final_score():
    assert mia.neurips_final_score(0.5, [0.9, 0.8], [0.85], [0.8], [0.9, 0.7]) == approx(
        0.5 * (0.85 / 0.85) * (0.8 / 0.8))
    assert mia.neurips_final_score(1.0, 0.5, 1.0, 1.0, 0.5) == approx(1.0)
    with pytest.raises(ValueError, match="forgetting_score"):
        mia.neurips_final_score(1.5, 1, 1, 1, 1)


# --- bad input ------------------------------------------------------------------------------------


def test_bad_input_gives_clear_errors():
    with pytest.raises(ValueError, match="empty"):
        mia.entropy(np.zeros((0, 3)))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        mia.confidence(P3, [0, 1, 2])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        mia.entropy(np.array([[1.2, -0.2]]))
    with pytest.raises(ValueError, match="sum to 1"):
        mia.entropy(np.array([[0.2, 0.3]]))
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        mia.modified_entropy(P3, [0, 3])
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        mia.logit_scale([0.5, 1.5])
    with pytest.raises(ValueError, match="both members and non-members"):
        mia.roc_auc([1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="match the scores"):
        mia.roc_auc([1, 0, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="empty"):
        mia.tpr_at_fpr([], [], 0.01)
    with pytest.raises(ValueError, match="feature"):
        mia.attack_features(P3, Y3, "loss")
    with pytest.raises(ValueError, match="n_members"):
        mia.svc_mia_peer(P3, Y3, P3, Y3, P3, Y3, n_members=5)
    with pytest.raises(ValueError, match="no shadow observation"):
        mia.lira_online(np.zeros(2), np.zeros((3, 2)), np.zeros((3, 2)),
                        np.array([[True, False]] * 3))
    with pytest.raises(ValueError, match="targets have 3"):
        mia.lira_offline(np.zeros(3), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="must match"):
        mia.neurips_forgetting_score(np.zeros((4, 3)), np.zeros((5, 3)))


# --- experiment scripts, smoke size on real FashionMNIST ------------------------------------------

EXPERIMENTS = __import__("pathlib").Path(__file__).resolve().parents[1] / "experiments"


def _script(name):
    import importlib
    import sys

    from unprune_jax.data import DEFAULT_FASHION_MNIST_DIR

    if not __import__("os").path.isdir(DEFAULT_FASHION_MNIST_DIR):
        pytest.skip("needs the dataset-fashion-mnist package")
    sys.path.insert(0, str(EXPERIMENTS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(EXPERIMENTS))


def test_mia_sensitivity_smoke(tmp_path):
    res = _script("mia_sensitivity").main(["--smoke", "--out", str(tmp_path)])
    md = (tmp_path / "mia_sensitivity.md").read_text()
    assert "Command:" in md and "jax " in md and "ratio 2" in md
    csv_rows = (tmp_path / "mia_sensitivity.csv").read_text().strip().splitlines()
    # 2 sizes × 2 seeds × 2 methods × 3 ratios × 2 variants, plus the header
    assert len(csv_rows) == 1 + 2 * 2 * 2 * 3 * 2 == 1 + len(res["rows"])
    assert all(0.0 <= r["efficacy"] <= 1.0 for r in res["rows"])
    assert (tmp_path / "mia_sensitivity.png").stat().st_size > 10_000


def test_lira_smoke(tmp_path):
    res = _script("lira").main(["--smoke", "--methods", "FT", "--neurips-n", "3",
                                "--out", str(tmp_path)])
    names = [r["row"] for r in res["rows"]]
    assert names == ["original (no unlearning)", "FT baseline", "FT + un-prune",
                     "gold, order seed 1 (control)", "gold (retrain + re-prune)"]
    for r in res["rows"][:-1]:
        assert 0.0 <= r["auc"] <= 1.0 and 0.0 <= r["auc_ci_lo"] <= r["auc_ci_hi"] <= 1.0
    assert 0.0 <= res["rows"][1]["neurips_F"] <= 1.0
    md = (tmp_path / "lira.md").read_text()
    assert "TPR@1% FPR" in md and "Command:" in md
    assert (tmp_path / "lira.csv").read_text().count("\n") == 1 + len(res["rows"])
