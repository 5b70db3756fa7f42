"""Validation metrics of the scorer: MSE, Pearson and Spearman of predictions against targets
(the correlations are :mod:`lqs_megatron.utils.correlation`'s)."""

from __future__ import annotations

import numpy as np

from lqs_megatron.utils.correlation import pearson, spearman


def regression_metrics(pred: np.ndarray, target: np.ndarray) -> dict[str, float]:
    """``{"mse", "pearson", "spearman"}`` of predictions against targets."""
    pred = np.asarray(pred, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    return {
        "mse": float(np.mean((pred - target) ** 2)),
        "pearson": pearson(pred, target),
        "spearman": spearman(pred, target),
    }
