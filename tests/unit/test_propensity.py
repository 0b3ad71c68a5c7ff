"""Propensities: they learn a planted signal, calibrate, and fall back honestly."""

from __future__ import annotations

import json

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from models_ml import propensity, registry
from models_ml.metrics import classification_metrics
from models_ml.propensity import Heuristic, TrainedTarget, _isotonic, fit_calibration, train_target


def _users(n: int, seed: int, cutoff: str) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    recency = rng.exponential(15, n)
    orders = rng.poisson(1.0, n)
    logit = 1.5 - 0.15 * recency + 0.6 * orders
    label = rng.random(n) < 1 / (1 + np.exp(-logit))
    return pd.DataFrame(
        {
            "user_id": [f"{cutoff}-{i}" for i in range(n)],
            "recency_days": recency,
            "orders_lifetime": orders,
            "sessions_30d": rng.poisson(3, n),
            "price_band": rng.choice(["budget", "mid", "premium"], n),
            "label": label.astype(float),
            "cutoff": cutoff,
        }
    )


def test_learns_a_planted_signal_and_is_calibrated_on_held_out_users() -> None:
    # Half the users are held out of training (a quarter checks): 6,000 users train, 1,500 check.
    train = pd.concat([_users(6000, 1, "a"), _users(6000, 2, "b")])
    valid = _users(6000, 3, "c")
    trained = train_target("purchase", "binary", train, valid, min_class_examples=100, seed=0)
    assert trained.method == "lightgbm"
    held = trained.metrics["held_out"]
    assert held["roc_auc"] > 0.8
    assert held["roc_auc"] >= trained.metrics["held_out_baseline"]["roc_auc"] - 0.01
    # Calibrated: predicted and observed rates agree within a few points on average over the
    # deciles and in every one within sampling noise (about 150 users a decile); whatever the
    # calibrator chose, it is no worse than the raw scores on the held-out users.
    gaps = [abs(row["predicted"] - row["observed"]) for row in held["calibration"]]
    assert np.mean(gaps) < 0.04 and max(gaps) < 0.15
    assert held["log_loss"] <= trained.metrics["held_out_uncalibrated"]["log_loss"] + 1e-9
    assert trained.metrics["calibrator"]["method"] in ("isotonic", "none")
    fresh = _users(2000, 4, "d")
    scored = trained.predict(fresh)
    assert classification_metrics(fresh["label"].to_numpy(), scored)["roc_auc"] > 0.8
    # The bundle round-trips through JSON exactly.
    again = type(trained).from_json(registry.jsonable(trained.to_json()))
    assert np.allclose(again.predict(fresh), scored)


def test_held_out_users_never_train_so_recognising_a_user_scores_nothing() -> None:
    """Each user's outcome is a trait of the user (the same at every cutoff) that no feature
    explains, and one feature is a per-user constant a booster can recognise the user by.
    Checked on users whose earlier examples it trained on, it would look nearly perfect;
    on users it never saw, it knows nothing, and the held-out metrics must say so."""
    rng = np.random.default_rng(8)
    n = 4000
    fingerprint = rng.random(n)
    trait = (rng.random(n) < 0.4).astype(float)

    def cutoff(name: str) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "user_id": [f"u{i}" for i in range(n)],
                "recency_days": rng.exponential(15, n),
                "orders_lifetime": rng.poisson(1.0, n),
                "avg_order_value": fingerprint,
                "label": trait,
                "cutoff": name,
            }
        )

    train = pd.concat([cutoff("a"), cutoff("b"), cutoff("c")])
    trained = train_target("purchase", "binary", train, cutoff("d"), min_class_examples=100, seed=0)
    assert trained.method == "lightgbm"
    assert "of the users not held out" in trained.reason
    assert 0.45 < trained.metrics["held_out"]["roc_auc"] < 0.55
    # The parts are the users': every cutoff of a user falls in the same one.
    parts = propensity.user_parts(train["user_id"], "purchase")
    assert (parts.reshape(3, n) == parts[:n]).all()
    assert 0.4 < (parts[:n] == propensity.TRAIN).mean() < 0.6


def test_the_rfm_rate_is_kept_when_it_beats_the_booster_on_the_stopping_users(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A booster that learned nothing (its labels shuffled) loses to its baseline on the
    users that stopped it; the baseline is then what scores, and the checking users'
    metrics are the baseline's, with the booster's beside them."""
    train = pd.concat([_users(6000, 1, "a"), _users(6000, 2, "b")])
    valid = _users(6000, 3, "c")
    learned = train_target("purchase", "binary", train, valid, min_class_examples=100, seed=0)
    assert learned.method == "lightgbm"
    assert learned.metrics["chosen_on_stopping_users"]["kept"] == "lightgbm"

    real = propensity.lgb.train

    def shuffled(params: dict, data: lgb.Dataset, **kwargs: object) -> lgb.Booster:
        label = np.random.default_rng(0).permutation(np.asarray(data.label))
        return real(params, lgb.Dataset(data.data, label, categorical_feature=data.categorical_feature), **kwargs)

    monkeypatch.setattr(propensity.lgb, "train", shuffled)
    for kind in ("binary", "regression"):
        trained = train_target("purchase", kind, train, valid, min_class_examples=100, seed=0)
        assert trained.method == "heuristic" and trained.booster is None
        assert trained.reason.startswith("the RFM-cell rate did better than LightGBM")
        chosen = trained.metrics["chosen_on_stopping_users"]
        assert chosen["kept"] == "rfm_rules"
        metric = "roc_auc" if kind == "binary" else "mae"
        assert trained.metrics["held_out"] == trained.metrics["held_out_baseline"]
        if kind == "binary":
            assert chosen["rfm_rules"] > 0.8 > 0.6 > chosen["lightgbm"]
            assert trained.metrics["held_out"][metric] > trained.metrics["held_out_lightgbm"][metric]
        else:
            assert chosen["rfm_rules"] < chosen["lightgbm"]
            assert trained.metrics["held_out"][metric] < trained.metrics["held_out_lightgbm"][metric]
        assert np.array_equal(trained.predict(valid), trained.heuristic.predict(valid))


def test_the_reason_says_when_a_booster_reached_its_tree_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    train = pd.concat([_users(3000, 1, "a"), _users(3000, 2, "b")])
    valid = _users(3000, 3, "c")
    stopped = train_target("purchase", "binary", train, valid, min_class_examples=100, seed=0)
    assert stopped.best_iteration < propensity.MAX_TREES
    assert stopped.reason.endswith(f"stopped at {stopped.best_iteration} trees")
    # A cap ten trees past the best: the same rounds (training is deterministic), the same
    # best, but the cap ends it before early stopping would have (50 rounds without better).
    best = stopped.best_iteration
    monkeypatch.setattr(propensity, "MAX_TREES", best + 10)
    capped = train_target("purchase", "binary", train, valid, min_class_examples=100, seed=0)
    assert capped.best_iteration == best
    assert capped.reason.endswith(f"kept {best} of the {best + 10} trees allowed (still improving slowly at the cap)")


def test_too_few_positives_falls_back_to_the_rfm_cell_rate_and_says_so() -> None:
    train = _users(400, 5, "a")
    train["label"] = 0.0
    train.iloc[:20, train.columns.get_loc("label")] = 1.0
    valid = _users(200, 6, "b")
    valid["label"] = 0.0
    trained = train_target("purchase", "binary", train, valid, min_class_examples=100, seed=0)
    assert trained.method == "heuristic"
    assert "too little data" in trained.reason and "20 positive" in trained.reason
    predicted = trained.predict(valid)
    assert predicted.min() >= 0 and predicted.max() <= 1


def test_no_labelled_history_uses_a_stated_rule() -> None:
    empty = _users(0, 7, "a")
    trained = train_target("churn", "binary", empty, empty, 100, 0, rule="recency", window_days=30)
    assert trained.method == "heuristic" and "no cutoff" in trained.reason
    users = pd.DataFrame({"recency_days": [0.0, 15.0, 90.0], "orders_lifetime": [1, 1, 1]})
    assert trained.predict(users).tolist() == [0.0, 0.5, 1.0]
    # The rule survives saving and loading with the model version (scoring reads it back).
    reloaded = TrainedTarget.from_json(json.loads(json.dumps(trained.to_json())))
    assert reloaded.predict(users).tolist() == [0.0, 0.5, 1.0]


def test_heuristic_cells_shrink_towards_the_overall_rate() -> None:
    users = pd.DataFrame({"recency_days": [1.0] * 10 + [50.0] * 10, "orders_lifetime": [2] * 20})
    label = np.array([1.0] * 10 + [0.0] * 10)
    heuristic = Heuristic.fit(users, label)
    hot, cold = heuristic.predict(users.iloc[[0, 10]])
    assert 0.5 < hot < 1.0 and 0.0 < cold < 0.5


def test_publication_gate() -> None:
    old = {"purchase": {"held_out": {"roc_auc": 0.80}}}
    assert registry.compare({"purchase": {"held_out": {"roc_auc": 0.79}}}, old, 0.02)[0]
    ok, reason = registry.compare({"purchase": {"held_out": {"roc_auc": 0.70}}}, old, 0.02)
    assert not ok and "purchase ROC AUC" in reason
    assert registry.compare({}, None, 0.02) == (True, "first model version")
    # A rule where a trained model was (no held-out metric) is worse, not "no metric worse".
    ok, reason = registry.compare({"purchase": {"method": "heuristic"}}, old, 0.02)
    assert not ok and "purchase ROC AUC on held-out users not measured" in reason and "0.8000" in reason
    # Other settings: the metrics measure other things and are not compared.
    changed = registry.changed_settings(
        {"transform": {"conversion_event": "signup", "half_life_days": 14}, "windows": {"purchase_days": 14}},
        {"transform": {"conversion_event": "purchase", "half_life_days": 14}, "windows": {"purchase_days": 14}},
    )
    assert changed == ["transform.conversion_event"]
    ok, reason = registry.compare({"purchase": {"method": "heuristic"}}, old, 0.02, changed)
    assert ok and "settings differ from the published version's (transform.conversion_event)" in reason
    # A version recorded before its settings were kept is not held against a new one.
    assert registry.changed_settings({"transform": {"a": 1}}, {"windows": {}}) == []
    # Except how it was measured: before users were held out of the propensities' training,
    # their held-out metrics were read on users they had trained on.
    measured = {"evaluation": propensity.EVALUATION}
    assert registry.changed_settings(measured, {"windows": {}}) == [
        "evaluation.holdout_share",
        "evaluation.propensity_holdout",
    ]
    assert registry.changed_settings(measured, measured) == []


def test_calibration_repairs_skewed_scores_without_claiming_certainty() -> None:
    rng = np.random.default_rng(11)
    truth = rng.uniform(0.02, 0.7, 8000)
    label = (rng.random(8000) < truth).astype(float)
    raw = truth**2  # ranks right, rates wrong (too low everywhere)
    xs, ys, choice = fit_calibration(raw[:4000], label[:4000], rng.random(4000) < 0.5)
    assert choice["method"] == "isotonic" and choice["isotonic_log_loss"] < choice["raw_log_loss"]
    calibrated = np.interp(raw[4000:], xs, ys)
    fresh = classification_metrics(label[4000:], calibrated)
    assert fresh["brier"] < classification_metrics(label[4000:], raw[4000:])["brier"] - 0.01
    assert 0 < min(ys) and max(ys) < 1 and np.all(np.diff(ys) >= 0)


def test_isotonic_blocks_shrink_towards_the_base_rate() -> None:
    # Three users scored high all bought; one of five scored low did: plain isotonic says
    # 100% and 20%. Two pseudo-examples at the base rate (50%) each: 80% and about 29%.
    raw = np.array([0.1] * 5 + [0.9] * 3)
    label = np.array([0, 0, 0, 0, 1, 1, 1, 1], dtype=float)
    xs, ys = _isotonic(raw, label)
    assert np.allclose(np.interp([0.1, 0.9], xs, ys), [2 / 7, 0.8])


def test_a_calibration_that_does_not_help_out_of_sample_is_not_used() -> None:
    # Scores that are already rates, on the 60 users a small site holds out: an isotonic
    # map fitted on half of them is worse on the other half, so the raw scores stay.
    rng = np.random.default_rng(5)
    truth = rng.uniform(0.1, 0.9, 60)
    label = (rng.random(60) < truth).astype(float)
    xs, ys, choice = fit_calibration(truth, label, np.arange(60) % 2 == 0)
    assert choice["method"] == "none" and (xs, ys) == ([], [])
    assert choice["isotonic_log_loss"] >= choice["raw_log_loss"]
    one_fold = fit_calibration(truth, label, np.ones(60, dtype=bool))
    assert one_fold[2]["method"] == "none" and "too few" in one_fold[2]["reason"]


def test_user_bytes_are_the_first_two_bytes_of_each_users_salted_sha256() -> None:
    import hashlib

    ids = ["u1", "u2", "u1", "ü-3", "u2", "u1"]
    expected = np.array([list(hashlib.sha256(f"s:{u}".encode()).digest()[:2]) for u in ids], dtype=np.uint8)
    for series in (pd.Series(ids, dtype=object), pd.Series(pd.array(ids, dtype="str"))):
        assert np.array_equal(propensity._user_bytes(series, "s"), expected)
    assert propensity._user_bytes(pd.Series([], dtype=object), "s").shape == (0, 2)
