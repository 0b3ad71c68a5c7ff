"""Readable segments: RFM segments from behaviour, predictive cohorts from the scores.

RFM segments follow the usual recency x frequency grid of CRM practice (Champions, Loyal,
Potential loyalist, New, Need attention, At risk, Hibernating, Lost), scored by quintiles
among the users who have ordered; users who never ordered are Prospects while active.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

SEGMENTS = (
    "Champions",
    "Loyal",
    "Potential loyalist",
    "New customer",
    "Need attention",
    "At risk",
    "Hibernating",
    "Lost",
    "Prospect",
    "Lost prospect",
)

# The model's predictive cohorts (``user_insights.cohorts``; ``in_cohort(name)`` in filters).
PREDICTIVE_COHORTS = ("Ready to buy", "Long shots", "At risk of churn", "Dormant", "Potential VIPs")


def _quintile(values: pd.Series, ascending: bool) -> pd.Series:
    """1 (worst) to 5 (best) by rank among the given users; ties share a score."""
    ranked = values.rank(method="average", ascending=ascending, pct=True)
    return np.ceil(ranked * 5).clip(1, 5).astype(int)


def rfm_segments(features: pd.DataFrame, active_days: int) -> pd.Series:
    """One readable segment per user (index aligned with ``features``)."""
    segment = pd.Series("Lost prospect", index=features.index, dtype=object)
    buyers = features["orders_lifetime"] > 0
    segment[~buyers & (features["recency_days"] <= active_days)] = "Prospect"
    if buyers.any():
        b = features[buyers]
        r = _quintile(-b["days_since_last_order"].fillna(b["recency_days"]), ascending=True)
        f = _quintile(b["orders_lifetime"] + b["revenue_lifetime"] / (b["revenue_lifetime"].max() + 1), ascending=True)
        names = np.select(
            [
                (r >= 4) & (f >= 4),
                (r >= 3) & (f >= 4),
                (r >= 4) & (b["orders_lifetime"] == 1) & (b["tenure_days"] <= 30),
                (r >= 4) & (f >= 2),
                (r == 3) & (f >= 2),
                (r <= 2) & (f >= 3),
                (r == 2) | ((r >= 3) & (f == 1)),
            ],
            ["Champions", "Loyal", "New customer", "Potential loyalist", "Need attention", "At risk", "Hibernating"],
            default="Lost",
        )
        segment[buyers] = names
    return segment


def predictive_cohorts(frame: pd.DataFrame, churn_days: int) -> pd.Series:
    """The predictive cohorts each user belongs to (a list per user).

    Ready to buy: top 20% by purchase percentile. Long shots: has ordered, 25th-65th
    percentile. At risk of churn: active recently and churn probability >= 0.5. Dormant: no
    activity within the churn window. Potential VIPs: top 10% by predicted revenue.
    """
    value_rank = frame["predicted_revenue"].rank(pct=True, method="average")
    flags = {
        "Ready to buy": frame["purchase_percentile"] >= 80,
        "Long shots": (frame["orders_lifetime"] > 0) & frame["purchase_percentile"].between(25, 65),
        "At risk of churn": (frame["recency_days"] <= churn_days) & (frame["churn_probability"] >= 0.5),
        "Dormant": frame["recency_days"] > churn_days,
        "Potential VIPs": (value_rank >= 0.9) & (frame["predicted_revenue"] > 0),
    }
    names = list(PREDICTIVE_COHORTS)
    matrix = np.column_stack([flags[name].fillna(False).to_numpy(dtype=bool) for name in names])
    return pd.Series([[n for n, on in zip(names, row) if on] for row in matrix], index=frame.index, dtype=object)
