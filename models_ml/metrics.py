"""Metrics of the backtests: ranking quality of recommendations, and discrimination,
calibration and lift of propensities. Plain functions over numpy arrays."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score


def ranking_metrics(
    recommended: Mapping[str, Sequence[str]], relevant: Mapping[str, set[str]], catalog_size: int
) -> dict[str, float]:
    """HR@10, NDCG@10 and recall@20 over the users with something relevant, plus catalog
    coverage of the top 10 lists (share of the catalog recommended to anyone)."""
    hits, ndcgs, recalls = [], [], []
    shown: set[str] = set()
    for items in recommended.values():
        shown.update(items[:10])
    for user_id, truth in relevant.items():
        if not truth:
            continue
        items = list(recommended.get(user_id, ()))
        top10 = items[:10]
        hits.append(float(any(item in truth for item in top10)))
        dcg = sum(1.0 / np.log2(rank + 2) for rank, item in enumerate(top10) if item in truth)
        ideal = sum(1.0 / np.log2(rank + 2) for rank in range(min(len(truth), 10)))
        ndcgs.append(dcg / ideal)
        recalls.append(len(truth.intersection(items[:20])) / len(truth))
    return {
        "users": len(hits),
        "hr_at_10": float(np.mean(hits)) if hits else float("nan"),
        "ndcg_at_10": float(np.mean(ndcgs)) if ndcgs else float("nan"),
        "recall_at_20": float(np.mean(recalls)) if recalls else float("nan"),
        "coverage": len(shown) / catalog_size if catalog_size else 0.0,
    }


def calibration_table(y_true: np.ndarray, y_prob: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """Predicted against observed rate in equal-count bins of the prediction."""
    order = np.argsort(y_prob, kind="stable")
    rows = []
    for chunk in np.array_split(order, min(bins, len(order))):
        if len(chunk) == 0:
            continue
        rows.append(
            {
                "count": int(len(chunk)),
                "predicted": float(np.mean(y_prob[chunk])),
                "observed": float(np.mean(y_true[chunk])),
            }
        )
    return rows


def top_decile_lift(y_true: np.ndarray, y_score: np.ndarray) -> float:
    """Positive rate among the top 10% by score over the overall positive rate."""
    base = float(np.mean(y_true))
    if base == 0 or len(y_true) < 10:
        return float("nan")
    top = np.argsort(-y_score, kind="stable")[: max(1, len(y_true) // 10)]
    return float(np.mean(y_true[top]) / base)


def classification_metrics(y_true: np.ndarray, y_prob: np.ndarray) -> dict[str, object]:
    """ROC AUC, PR AUC, log loss, Brier score, top-decile lift and a calibration table."""
    y_true = np.asarray(y_true, dtype=float)
    y_prob = np.clip(np.asarray(y_prob, dtype=float), 1e-6, 1 - 1e-6)
    both = 0 < y_true.sum() < len(y_true)
    return {
        "examples": int(len(y_true)),
        "positives": int(y_true.sum()),
        "base_rate": float(y_true.mean()) if len(y_true) else float("nan"),
        "roc_auc": float(roc_auc_score(y_true, y_prob)) if both else float("nan"),
        "pr_auc": float(average_precision_score(y_true, y_prob)) if both else float("nan"),
        "log_loss": float(log_loss(y_true, y_prob, labels=[0, 1])) if len(y_true) else float("nan"),
        "brier": float(brier_score_loss(y_true, y_prob)) if len(y_true) else float("nan"),
        "lift_top_decile": top_decile_lift(y_true, y_prob),
        "calibration": calibration_table(y_true, y_prob),
    }


def regression_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Errors of predicted revenue: mean absolute and root mean squared, and the totals."""
    y_true = np.asarray(y_true, dtype=float)
    y_pred = np.asarray(y_pred, dtype=float)
    return {
        "examples": int(len(y_true)),
        "mae": float(np.mean(np.abs(y_true - y_pred))) if len(y_true) else float("nan"),
        "rmse": float(np.sqrt(np.mean((y_true - y_pred) ** 2))) if len(y_true) else float("nan"),
        "actual_total": float(y_true.sum()),
        "predicted_total": float(y_pred.sum()),
    }
