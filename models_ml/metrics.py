"""Metrics of the backtests: ranking quality of recommendations, and discrimination,
calibration and lift of propensities. Plain functions over numpy arrays."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import sparse
from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score


def ranking_metrics(
    recommended: Mapping[str, Sequence[str]], relevant: Mapping[str, set[str]], catalog_size: int
) -> dict[str, float]:
    """HR@10, NDCG@10 and recall@20 over the users with something relevant, plus catalog
    coverage of the top 10 lists (share of the catalog recommended to anyone)."""
    users = list(dict.fromkeys([*recommended, *relevant]))
    vocabulary: dict[str, int] = {}
    width = max([len(items) for items in recommended.values()] + [1])
    lists = np.full((len(users), width), -1, dtype=np.int64)
    rows, columns = [], []
    for row, user_id in enumerate(users):
        items = [vocabulary.setdefault(item, len(vocabulary)) for item in recommended.get(user_id, ())]
        lists[row, : len(items)] = items
        for item in relevant.get(user_id, ()):
            rows.append(row)
            columns.append(vocabulary.setdefault(item, len(vocabulary)))
    truth = sparse.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, columns)), shape=(len(users), max(len(vocabulary), 1))
    )
    return ranking_metrics_of_lists(lists, truth, catalog_size)


_DISCOUNT = 1.0 / np.log2(np.arange(2, 12))  # ranks 1..10


def ranking_metrics_of_lists(lists: np.ndarray, truth: sparse.csr_matrix, catalog_size: int) -> dict[str, float]:
    """:func:`ranking_metrics` on arrays: row r of ``lists`` holds the items recommended to
    user r best first (-1 pads a short list), row r of ``truth`` (users, items) marks the
    items relevant to that user. Vectorised: the ALS search scores 20k users this way for
    every candidate."""
    truth = sparse.csr_matrix(truth)
    truth.sum_duplicates()
    n_rows, n_items = truth.shape
    counts = np.diff(truth.indptr)
    keys = np.repeat(np.arange(n_rows, dtype=np.int64), counts) * n_items + truth.indices
    lists = np.asarray(lists, dtype=np.int64)[:, :20]
    listed = lists >= 0
    asked = np.arange(n_rows, dtype=np.int64)[:, None] * n_items + np.where(listed, lists, 0)
    # An item listed twice counts once (the first time), as a set of recommendations would.
    order = np.argsort(lists, axis=1, kind="stable")
    ranked = np.take_along_axis(lists, order, axis=1)
    first = np.ones_like(listed)
    np.put_along_axis(first, order[:, 1:], ranked[:, 1:] != ranked[:, :-1], axis=1)
    # keys is sorted (rows in order, each row's items sorted by sum_duplicates): a binary
    # search finds each listed item, where np.isin sorted every list and key again per call
    # (the ALS search calls this five times per candidate; 40 -> 10 ms for 20k users).
    found = np.minimum(np.searchsorted(keys, asked), max(len(keys) - 1, 0))
    hit = listed & first & (keys[found] == asked if len(keys) else False)
    scored = counts > 0
    hit10 = hit[scored, :10]
    dcg = (hit10 * _DISCOUNT[: hit10.shape[1]]).sum(axis=1)
    ideal = np.cumsum(_DISCOUNT)[np.minimum(counts[scored], 10) - 1]
    top10 = lists[:, :10]
    shown = int(np.count_nonzero(np.bincount(top10[top10 >= 0].ravel(), minlength=1)))
    users = int(scored.sum())
    return {
        "users": users,
        "hr_at_10": float(np.mean(hit10.any(axis=1))) if users else float("nan"),
        "ndcg_at_10": float(np.mean(dcg / ideal)) if users else float("nan"),
        "recall_at_20": float(np.mean(hit[scored].sum(axis=1) / counts[scored])) if users else float("nan"),
        "coverage": shown / catalog_size if catalog_size else 0.0,
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
