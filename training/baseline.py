"""A linear yardstick beside every report: logistic regression (classification) or Bayesian
ridge regression (regression) from scikit-learn, fitted on the training split and scored on
the evaluated split with the report's own metrics.

A user who sees the Hydra, its ensemble and the KD student side by side cannot tell that a
linear model beats all three (2,000 features and 500 rows); this says so.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import BayesianRidge, LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from training.data import Dataset
from training.eval_metrics import classification_metrics, regression_metrics

log = logging.getLogger(__name__)

# Rows the baseline is fitted on at most (the first ones of the shuffled training split): a
# yardstick, not a model, and an image set of 50,000 rows would take minutes on a CPU.
MAX_ROWS = 20000
MAX_ITER = 500


def linear_baseline(data: Dataset) -> dict[str, Any]:
    """The baseline's name, what it was fitted on, and its metrics on the evaluated split
    (the same keys as the report's test table)."""
    X = data.train.X.reshape(len(data.train), -1)[:MAX_ROWS].astype(np.float64)
    X_test = data.test.X.reshape(len(data.test), -1).astype(np.float64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        if data.task == "classification":
            y = data.train.y[:MAX_ROWS]
            model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=MAX_ITER))
            model.fit(X, y)
            # Classes absent from the fitted rows get probability 0 (the NLL says so).
            probs = np.zeros((len(X_test), data.num_classes))
            probs[:, model.classes_] = model.predict_proba(X_test)
            metrics = classification_metrics(probs, data.test.y)
            name = "logistic regression (standardized features)"
        else:
            y = data.train.y[:MAX_ROWS].astype(np.float64)  # [N, D]
            mean = np.empty((len(X_test), y.shape[1]))
            variance = np.empty_like(mean)
            for d in range(y.shape[1]):  # one model per output
                model = make_pipeline(StandardScaler(), BayesianRidge(max_iter=MAX_ITER))
                model.fit(X, y[:, d])
                mean[:, d], std = model.predict(X_test, return_std=True)
                variance[:, d] = std**2
            metrics = regression_metrics(mean, variance, data.test.y)
            name = "Bayesian ridge regression (standardized features)"
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    if not converged:
        log.warning("the linear baseline did not converge in %d iterations", MAX_ITER)
    return {"model": name, "train_rows": int(len(X)), "converged": converged, "test": metrics}
