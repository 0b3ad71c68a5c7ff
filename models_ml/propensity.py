"""Propensities on point-in-time user features: probability of a key conversion, of churn,
and predicted revenue, with LightGBM.

Training examples come from several past cutoffs (features as of the cutoff, labels from
the window after it). The latest cutoff is held out, and so is half the users (by a hash of
their id), at every cutoff: the other half trains. One half of the held-out users stops
the boosting early and fits an isotonic calibration (Zadrozny & Elkan 2002), the other
half checks both. Holding out only the cutoff would not do: the cutoffs are a week apart
and the windows longer, so a user's earlier examples carry labels from the very days the
held-out label counts, and a booster learns to recognise the user. The calibration's
blocks are shrunk towards the base rate, and it is kept only when cross-fitting on its own
half shows it beats the booster's raw scores: fitted on a hundred users, plain isotonic
blocks say 0% and 100%, and scored worse than no calibration at all. With too few
positives or negatives to learn from, a transparent heuristic takes over: the observed
rate of the user's RFM cell (recency band x order count band) at the training cutoffs,
which is also the baseline every model must beat.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import log_loss

from models_ml.metrics import classification_metrics, regression_metrics

log = logging.getLogger(__name__)

# Identifiers, timestamps and free-text values are not features.
NOT_FEATURES = {
    "user_id",
    "as_of",
    "first_seen_at",
    "last_seen_at",
    "last_order_at",
    "top_category",
    "top_category_l1",
    "top_brand",
    "cutoff",
    "label",
    "has_logged_in",
}
CATEGORICAL = ("price_band", "favourite_device")
RECENCY_BANDS = [0, 1, 3, 7, 14, 30, 60, 90, np.inf]
ORDER_BANDS = [-np.inf, 0, 1, 3, np.inf]
PRIOR_WEIGHT = 10.0
# Pseudo-examples at the base rate added to each isotonic block (see fit_calibration).
CALIBRATION_PRIOR_WEIGHT = 2.0


def rfm_cell(features: pd.DataFrame) -> pd.Series:
    """A readable cell per user: recency band and lifetime order-count band."""
    recency = pd.cut(features["recency_days"].astype(float), RECENCY_BANDS, right=False, labels=False)
    orders = pd.cut(features["orders_lifetime"].astype(float), ORDER_BANDS, right=True, labels=False)
    return recency.astype("Int64").astype(str) + "/" + orders.astype("Int64").astype(str)


# With no labelled history at all (the data is shorter than a window), stated rules:
RULES = {
    # churn: the longer since last seen, the likelier gone; certain at the churn window.
    "recency": "min(1, recency_days / churn window)",
    # value: the last 30 days' revenue, again, scaled to the value window.
    "run_rate": "revenue_30d x value window / 30",
    # purchase: ordered in the last 30 days, scaled to the purchase window.
    "recent_order": "min(1, orders_30d x purchase window / 30)",
}


@dataclass
class Heuristic:
    """Observed mean label per RFM cell, shrunk towards the overall mean (weight 10); or,
    with no labelled examples at all, one of the stated ``RULES`` over the window."""

    overall: float = 0.0
    cells: dict[str, float] = field(default_factory=dict)
    rule: str | None = None
    window_days: int = 30

    @classmethod
    def fit(cls, features: pd.DataFrame, label: np.ndarray) -> Heuristic:
        if len(features) == 0:
            return cls()
        frame = pd.DataFrame({"cell": rfm_cell(features).to_numpy(), "label": np.asarray(label, dtype=float)})
        overall = float(frame["label"].mean()) if len(frame) else 0.0
        stats = frame.groupby("cell")["label"].agg(["sum", "count"])
        cells = ((stats["sum"] + PRIOR_WEIGHT * overall) / (stats["count"] + PRIOR_WEIGHT)).to_dict()
        return cls(overall=overall, cells={str(k): float(v) for k, v in cells.items()})

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        if self.rule == "recency":
            return np.clip(features["recency_days"].to_numpy(dtype=float) / self.window_days, 0, 1)
        if self.rule == "run_rate":
            return features["revenue_30d"].to_numpy(dtype=float) * self.window_days / 30.0
        if self.rule == "recent_order":
            return np.clip(features["orders_30d"].to_numpy(dtype=float) * self.window_days / 30.0, 0, 1)
        return rfm_cell(features).map(self.cells).fillna(self.overall).to_numpy(dtype=float)


@dataclass
class TrainedTarget:
    """One propensity: the booster (or none), its calibration and the heuristic."""

    name: str
    kind: str  # "binary" or "regression"
    method: str  # "lightgbm" or "heuristic"
    reason: str
    heuristic: Heuristic
    booster: str | None = None
    features: list[str] = field(default_factory=list)
    categories: dict[str, list[str]] = field(default_factory=dict)
    calibration_x: list[float] = field(default_factory=list)
    calibration_y: list[float] = field(default_factory=list)
    best_iteration: int = 0
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data = dict(self.__dict__)
        data["heuristic"] = dict(self.heuristic.__dict__)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TrainedTarget:
        data = dict(data)
        data["heuristic"] = Heuristic(**data["heuristic"])
        return cls(**data)

    def predict(self, features: pd.DataFrame) -> np.ndarray:
        if self.method == "heuristic" or self.booster is None:
            return self.heuristic.predict(features)
        booster = lgb.Booster(model_str=self.booster)
        raw = booster.predict(design_matrix(features, self.features, self.categories))
        if self.kind == "binary":
            return self.calibrate(raw)
        return np.clip(raw, 0, None)

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        if not self.calibration_x:
            return raw
        return np.interp(raw, self.calibration_x, self.calibration_y)


def feature_columns(features: pd.DataFrame) -> list[str]:
    return [c for c in features.columns if c not in NOT_FEATURES]


def design_matrix(features: pd.DataFrame, columns: list[str], categories: dict[str, list[str]]) -> pd.DataFrame:
    frame = pd.DataFrame(index=features.index)
    for column in columns:
        values = features[column] if column in features else pd.Series(np.nan, index=features.index)
        if column in categories:
            frame[column] = pd.Categorical(values.astype("string").fillna("unknown"), categories=categories[column])
        else:
            frame[column] = pd.to_numeric(values, errors="coerce").astype(float)
    return frame


# The share of users held out of training, at every cutoff: half of them stop the boosting
# and fit the calibration, the other half check the model. At 10M events a model trained
# on half the users scored the checking users as well as one on three quarters (churn AUC
# 0.6235 / 0.6234, purchase 0.6538 / 0.6550, value MAE 49.5 / 49.4).
HOLDOUT_SHARE = 0.5
TRAIN, STOP, CHECK = 0, 1, 2
# How the held-out metrics are measured, kept with each model version (the publish gate
# compares only versions measured alike).
EVALUATION = {"propensity_holdout": "users", "holdout_share": HOLDOUT_SHARE}


def _user_bytes(user_ids: pd.Series, salt: str) -> np.ndarray:
    """The first two bytes of sha256("salt:user") of each example's user, hashed once per
    distinct user: a deterministic draw that keeps a user's examples together."""
    # Distinct users through Arrow: converting ~1M ids to Python strings to factorize them
    # was half the cost (0.52 -> 0.27 CPU-s for 1M examples of 285k users). A missing id
    # reads "nan", as it did as a string.
    ids = pa.array(user_ids, type=pa.string(), from_pandas=True)
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    encoded = pc.dictionary_encode(ids.fill_null("nan") if ids.null_count else ids)
    users = encoded.dictionary.to_pylist()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    digests = np.array([hashlib.sha256(f"{salt}:{u}".encode()).digest()[:2] for u in users], dtype="S2")
    return digests.view(np.uint8).reshape(-1, 2)[codes] if len(users) else np.zeros((len(codes), 2), np.uint8)


def user_parts(user_ids: pd.Series, salt: str) -> np.ndarray:
    """Each example's part, by its user (TRAIN, STOP or CHECK): a deterministic hash of the
    user id and ``salt``, so a user's examples at every cutoff fall in the same part."""
    first_two = _user_bytes(user_ids, salt)
    held = first_two[:, 0] < 256 * HOLDOUT_SHARE
    check = first_two[:, 1] % 2 == 1
    return np.where(held, np.where(check, CHECK, STOP), TRAIN)


def holdout_half(user_ids: pd.Series, salt: str) -> np.ndarray:
    """A deterministic half of the users (hash of id and salt): True for one half (the
    calibration's cross-fitting folds)."""
    return _user_bytes(user_ids, salt)[:, 0] % 2 == 1


def _isotonic(raw: np.ndarray, label: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Knots of an isotonic map from raw score to rate, each block's rate shrunk towards
    the overall rate by ``CALIBRATION_PRIOR_WEIGHT`` pseudo-examples (three buyers out of
    three read 0.72 at a 30% base rate, not 1.0), then pooled again where shrinking a small
    block more than its neighbours broke the order."""
    iso = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(raw, label)
    blocks, block_of = np.unique(iso.predict(raw), return_inverse=True)
    size = np.bincount(block_of, minlength=len(blocks)).astype(float)
    hits = np.bincount(block_of, weights=label, minlength=len(blocks))
    rate = (hits + CALIBRATION_PRIOR_WEIGHT * label.mean()) / (size + CALIBRATION_PRIOR_WEIGHT)
    order = np.arange(len(blocks), dtype=float)
    rate = IsotonicRegression().fit(order, rate, sample_weight=size + CALIBRATION_PRIOR_WEIGHT).predict(order)
    # Each knot takes the rate of the block it bounds (the nearest block value).
    knot_block = np.abs(iso.y_thresholds_[:, None] - blocks[None, :]).argmin(axis=1)
    return iso.X_thresholds_.astype(float), rate[knot_block]


def fit_calibration(
    raw: np.ndarray, label: np.ndarray, fold: np.ndarray
) -> tuple[list[float], list[float], dict[str, Any]]:
    """The calibration knots of raw booster scores (none: use the raw scores) and why.

    Cross-fitted on the same examples: each ``fold`` half is calibrated by a map fitted on
    the other half, and the calibration is kept only when that beats the raw scores' log
    loss. Comparing on the examples a map was fitted to would always favour it.
    """
    raw = np.asarray(raw, dtype=float)
    label = np.asarray(label, dtype=float)
    fold = np.asarray(fold, dtype=bool)
    choice: dict[str, Any] = {"prior_weight": CALIBRATION_PRIOR_WEIGHT, "examples": int(len(raw))}
    if fold.all() or not fold.any():
        return [], [], {"method": "none", "reason": "too few examples to cross-fit a calibration", **choice}

    def loss(p: np.ndarray) -> float:
        return float(log_loss(label, np.clip(p, 1e-6, 1 - 1e-6), labels=[0, 1]))

    crossed = np.empty_like(raw)
    for part in (fold, ~fold):
        x, y = _isotonic(raw[~part], label[~part])
        crossed[part] = np.interp(raw[part], x, y)
    choice |= {"raw_log_loss": loss(raw), "isotonic_log_loss": loss(crossed)}
    if choice["isotonic_log_loss"] < choice["raw_log_loss"]:
        x, y = _isotonic(raw, label)
        return [float(v) for v in x], [float(v) for v in y], {"method": "isotonic", **choice}
    return [], [], {"method": "none", "reason": "isotonic did not beat the raw scores cross-fitted", **choice}


# Trees a booster may grow; early stopping (50 rounds without a better held-out score)
# usually ends it long before (at 10M events: purchase 55, churn 43, value 30 trees). One
# that reaches the cap says so in its reason. (Stopped on users it had trained on, churn
# grew all 1,000 trees there, its log loss on them still falling: it recognised them.)
MAX_TREES = 1000
PATIENCE = 50


def _params(kind: str, seed: int) -> dict[str, Any]:
    common = {
        # 0.1, not 0.05: half the trees to train and score, same held-out quality at 10M events
        # (0.05 / 0.1: purchase AUC 0.666 / 0.664, churn AUC 0.630 / 0.636, value MAE 47.4 / 47.3).
        "learning_rate": 0.1,
        "num_leaves": 15,
        "min_data_in_leaf": 20,
        "feature_fraction": 0.9,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "seed": seed,
        "deterministic": True,
        # Row-wise histograms: the same trees as column-wise (byte for byte at 10M events)
        # and faster on two threads: the three targets 46.6 -> 39.3 s.
        "force_row_wise": True,
        "num_threads": 2,
        "verbosity": -1,
    }
    if kind == "binary":
        return {**common, "objective": "binary", "metric": "binary_logloss"}
    return {**common, "objective": "tweedie", "tweedie_variance_power": 1.3, "metric": "l2"}


def train_target(
    name: str,
    kind: str,
    train: pd.DataFrame,
    valid: pd.DataFrame,
    min_class_examples: int,
    seed: int,
    rule: str | None = None,
    window_days: int = 30,
) -> TrainedTarget:
    """Fit one propensity on ``train`` (earlier cutoffs) and check it on ``valid`` (the latest),
    the users split between them by :func:`user_parts`: the training users' examples of
    ``train`` learn, the held-out users' examples of ``valid`` stop and check.

    Both frames hold user features plus ``label``. Falls back to the RFM heuristic when a
    class has fewer than ``min_class_examples`` examples (binary) or fewer than that many
    users spent anything (regression), and says so in ``reason``.
    """
    # The two frames are not joined into one (a copy of every example, 1 s at 10M events):
    # only their ids and labels are needed together, and the whole only when falling back.
    labels = np.concatenate([train["label"].to_numpy(dtype=float), valid["label"].to_numpy(dtype=float)])
    if len(labels) == 0:
        reason = (
            "no cutoff with a complete label window yet (the data is shorter than the window plus a week); "
            f"using the rule {RULES.get(rule or '', 'overall rate')}"
        )
        log.warning("%s: %s", name, reason)
        return TrainedTarget(
            name=name,
            kind=kind,
            method="heuristic",
            reason=reason,
            heuristic=Heuristic(rule=rule, window_days=window_days),
        )
    parts = user_parts(pd.concat([train["user_id"], valid["user_id"]], ignore_index=True), name)
    learn = train[parts[: len(train)] == TRAIN]
    stop_set = valid[parts[len(train) :] == STOP]
    check_set = valid[parts[len(train) :] == CHECK]
    positives = int((labels > 0).sum())
    negatives = int((labels <= 0).sum())
    if min(positives, negatives) < min_class_examples or min(len(learn), len(stop_set), len(check_set)) == 0:
        reason = (
            f"too little data to learn: {positives} positive and {negatives} negative examples "
            f"(at least {min_class_examples} of each needed); using the RFM-cell rate"
            if min(positives, negatives) < min_class_examples
            else f"too few users to hold some out: {len(learn)} examples to train on, {len(stop_set)} to stop "
            f"the boosting and {len(check_set)} to check it; using the RFM-cell rate"
        )
        log.warning("%s: %s", name, reason)
        everything = pd.concat([train, valid])
        heuristic = Heuristic.fit(everything, everything["label"].to_numpy())
        return TrainedTarget(name=name, kind=kind, method="heuristic", reason=reason, heuristic=heuristic)

    heuristic = Heuristic.fit(learn, learn["label"].to_numpy())
    columns = feature_columns(train)
    # unique() before sorting: a Python set over every example's value took 3 s at 10M events.
    categories = {
        c: sorted(
            pd.concat([f[c] for f in (train, valid) if c in f], ignore_index=True)
            .astype("string")
            .fillna("unknown")
            .unique()
        )
        for c in CATEGORICAL
        if c in columns
    }
    x_train = design_matrix(learn, columns, categories)
    x_stop = design_matrix(stop_set, columns, categories)
    x_check = design_matrix(check_set, columns, categories)
    rounds: list[int] = []
    booster = lgb.train(
        _params(kind, seed),
        lgb.Dataset(x_train, learn["label"].to_numpy(dtype=float), categorical_feature=list(categories)),
        num_boost_round=MAX_TREES,
        valid_sets=[lgb.Dataset(x_stop, stop_set["label"].to_numpy(dtype=float), categorical_feature=list(categories))],
        # (A plain function runs before early stopping's callback, on every round.)
        callbacks=[lambda env: rounds.append(env.iteration), lgb.early_stopping(PATIENCE, verbose=False)],
    )
    best = booster.best_iteration or booster.current_iteration()
    # Early stopping ends a booster before the cap; one that grew every tree allowed was
    # still improving on the held-out users when it had to stop. (The booster returned
    # holds only its best trees, so the rounds run are counted as they go.)
    capped = len(rounds) >= MAX_TREES
    trained = TrainedTarget(
        name=name,
        kind=kind,
        method="lightgbm",
        reason=f"LightGBM on {len(learn):,} examples from earlier cutoffs of the users not held out, "
        + (
            f"kept {best} of the {MAX_TREES:,} trees allowed (still improving slowly at the cap)"
            if capped
            else f"stopped at {best} trees"
        ),
        heuristic=heuristic,
        booster=booster.model_to_string(num_iteration=best),
        features=columns,
        categories=categories,
        best_iteration=best,
    )
    raw_stop = booster.predict(x_stop, num_iteration=best)
    raw_check = booster.predict(x_check, num_iteration=best)
    y_check = check_set["label"].to_numpy(dtype=float)
    if kind == "binary":
        trained.calibration_x, trained.calibration_y, calibrator = fit_calibration(
            raw_stop, stop_set["label"].to_numpy(dtype=float), holdout_half(stop_set["user_id"], f"{name}:calibration")
        )
        trained.metrics = {
            "calibrator": calibrator,
            "held_out": classification_metrics(y_check, trained.calibrate(raw_check)),
            "held_out_uncalibrated": classification_metrics(y_check, raw_check),
            "held_out_baseline": classification_metrics(y_check, heuristic.predict(check_set)),
        }
    else:
        trained.metrics = {
            "held_out": regression_metrics(y_check, np.clip(raw_check, 0, None)),
            "held_out_baseline": regression_metrics(y_check, heuristic.predict(check_set)),
        }
    return _better_of(trained, stop_set, raw_stop)


def _better_of(trained: TrainedTarget, stop_set: pd.DataFrame, raw_stop: np.ndarray) -> TrainedTarget:
    """The booster, or its baseline (the RFM-cell rate) when that did better on the users
    that stopped the boosting: ROC AUC for a probability, mean absolute error for revenue.
    The choice is made on them, so the checking users stay unseen by every choice and
    their metrics say how the one kept does. The booster's own are kept beside them."""
    label = stop_set["label"].to_numpy(dtype=float)
    rules = trained.heuristic.predict(stop_set)
    if trained.kind == "binary":
        metric = "ROC AUC"
        model_score = classification_metrics(label, raw_stop)["roc_auc"]
        rules_score = classification_metrics(label, rules)["roc_auc"]
        rules_win = rules_score > model_score
    else:
        metric = "MAE"
        model_score = regression_metrics(label, np.clip(raw_stop, 0, None))["mae"]
        rules_score = regression_metrics(label, rules)["mae"]
        rules_win = rules_score < model_score
    choice = {"metric": metric, "lightgbm": model_score, "rfm_rules": rules_score, "examples": int(len(label))}
    if not rules_win:
        trained.metrics["chosen_on_stopping_users"] = {**choice, "kept": "lightgbm"}
        return trained
    reason = (
        f"the RFM-cell rate did better than LightGBM on the held-out users that stopped the boosting "
        f"({metric} {rules_score:.3f} against {model_score:.3f}); using the rate ({trained.reason})"
    )
    log.warning("%s: %s", trained.name, reason)
    return TrainedTarget(
        name=trained.name,
        kind=trained.kind,
        method="heuristic",
        reason=reason,
        heuristic=trained.heuristic,
        metrics={
            "held_out": trained.metrics["held_out_baseline"],
            "held_out_baseline": trained.metrics["held_out_baseline"],
            "held_out_lightgbm": trained.metrics["held_out"],
            "chosen_on_stopping_users": {**choice, "kept": "rfm_rules"},
        },
    )
