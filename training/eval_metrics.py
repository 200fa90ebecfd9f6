"""The report's evaluation metrics on numpy arrays (accuracy, NLL, ECE, Brier, RMSE, OOD
detection, fidelity). Libraries of the field where they exist (scikit-learn's ROC/PR, SciPy's
Spearman); the few formulas written here are the standard ones.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve


def confidence_bins(probs: np.ndarray, y: np.ndarray,
                    n_bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Equal-width confidence bins: (edges [n_bins + 1], confidence [N], correct [N] as 0/1,
    bin index [N]). Confidences are computed in ``probs``' own dtype."""
    conf = probs.max(1)
    correct = (probs.argmax(1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    return edges, conf, correct, which


def classification_metrics(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> dict[str, float]:
    """probs [N, C], y [N] -> accuracy, NLL (nats), ECE (equal-width confidence bins), Brier."""
    probs = probs.astype(np.float64)
    n = y.shape[0]
    nll = -np.log(np.clip(probs[np.arange(n), y], 1e-12, None)).mean()
    onehot = np.eye(probs.shape[1])[y]
    brier = ((probs - onehot) ** 2).sum(1).mean()
    _, conf, correct, which = confidence_bins(probs, y, n_bins)
    ece = 0.0
    for b in range(n_bins):
        in_bin = which == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - conf[in_bin].mean())
    return {"accuracy": float(correct.mean()), "nll": float(nll), "ece": float(ece),
            "brier": float(brier)}


def reliability_bins(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> dict[str, list[float]]:
    """Per confidence bin (as ECE bins them): accuracy, mean confidence, count."""
    edges, conf, correct, which = confidence_bins(probs, y, n_bins)
    acc, cnf, cnt = [], [], []
    for b in range(n_bins):
        m = which == b
        acc.append(float(correct[m].mean()) if m.any() else float("nan"))
        cnf.append(float(conf[m].mean()) if m.any() else float("nan"))
        cnt.append(int(m.sum()))
    return {"edges": edges.tolist(), "accuracy": acc, "confidence": cnf, "count": cnt}


def regression_metrics(mean: np.ndarray, variance: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """mean, variance, y [N, D] -> RMSE, Gaussian NLL (nats per sample), 95% interval coverage."""
    mean, variance, y = (a.astype(np.float64) for a in (mean, variance, y))
    err = y - mean
    nll = 0.5 * (np.log(2 * math.pi * variance) + err**2 / variance)
    z = 1.959963984540054
    return {"rmse": float(np.sqrt((err**2).mean())), "nll": float(nll.sum(1).mean()),
            "coverage_95": float((np.abs(err) <= z * np.sqrt(variance)).mean())}


def ood_metrics(in_scores: np.ndarray, out_scores: np.ndarray) -> dict[str, float]:
    """Higher score = more OOD. AUROC, AUPR (OOD as positive), FPR at 95% TPR."""
    labels = np.r_[np.zeros(len(in_scores)), np.ones(len(out_scores))]
    scores = np.r_[in_scores, out_scores].astype(np.float64)
    fpr, tpr, _ = roc_curve(labels, scores)
    return {"auroc": float(roc_auc_score(labels, scores)),
            "aupr": float(average_precision_score(labels, scores)),
            "fpr_at_95_tpr": float(fpr[np.searchsorted(tpr, 0.95, side="left")])}


def fidelity(student: np.ndarray, teacher: np.ndarray) -> dict[str, float | None]:
    """Per-input agreement of a student's uncertainty with the ensemble's: MAE and Spearman.

    Spearman is None (undefined) when either side is constant, as the KD student's model
    uncertainty (identically 0) is.
    """
    mae = float(np.abs(student - teacher).mean())
    if np.ptp(student) == 0 or np.ptp(teacher) == 0:
        return {"mae": mae, "spearman": None}
    return {"mae": mae, "spearman": float(spearmanr(student, teacher).statistic)}
