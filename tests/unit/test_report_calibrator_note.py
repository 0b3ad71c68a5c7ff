"""The run report says which probabilities a propensity's calibration curve shows."""

from __future__ import annotations

import re

from exports.report import _calibrator_note, _probability_kind


def test_note_names_the_calibration_kept_and_the_losses_that_chose_it() -> None:
    kept = {"method": "isotonic", "raw_log_loss": 0.6542, "isotonic_log_loss": 0.6531}
    assert _calibrator_note(kept) == (
        "Probabilities: isotonic calibration, shrunk towards the base rate "
        "(cross-fitted log loss 0.653 calibrated, 0.654 raw)."
    )
    raw = {
        "method": "none",
        "reason": "isotonic did not beat the raw scores cross-fitted",
        "raw_log_loss": 0.602,
        "isotonic_log_loss": 0.637,
    }
    assert _calibrator_note(raw) == (
        "Probabilities: the booster's own scores; isotonic did not beat the raw scores cross-fitted "
        "(cross-fitted log loss 0.637 calibrated, 0.602 raw)."
    )


def test_note_without_losses_or_without_a_choice() -> None:
    # Too few examples to cross-fit: no losses to quote; a model from before the choice: nothing.
    too_few = {"method": "none", "reason": "too few examples to cross-fit a calibration"}
    assert _calibrator_note(too_few) == (
        "Probabilities: the booster's own scores; too few examples to cross-fit a calibration."
    )
    assert _calibrator_note(None) == "" and _calibrator_note({}) == ""


def test_purchase_histogram_calls_only_calibrated_probabilities_calibrated() -> None:
    held_out = {"roc_auc": 0.66}
    assert _probability_kind({"held_out": held_out, "calibrator": {"method": "isotonic"}}) == (
        "calibrated probabilities"
    )
    assert _probability_kind({"held_out": held_out, "calibrator": {"method": "none"}}) == (
        "the model's own probabilities"
    )
    assert _probability_kind({"held_out": held_out}) == "the model's probabilities"
    heuristic = {"method": "heuristic", "reason": "no cutoff with a complete label window yet"}
    assert _probability_kind(heuristic) == "rule-based scores, no model yet"
    assert _probability_kind(None) == "rule-based scores, no model yet"
    beaten = {"method": "heuristic", "held_out": held_out, "held_out_lightgbm": {"roc_auc": 0.61}}
    assert _probability_kind(beaten) == "RFM-cell rates (they did better than the model)"


def test_a_propensity_whose_rules_beat_the_booster_shows_both_and_says_which_scores() -> None:
    import numpy as np

    from exports import charts
    from exports.report import _propensity_block
    from models_ml.metrics import classification_metrics

    rng = np.random.default_rng(3)
    label = (rng.random(2000) < 0.3).astype(float)
    rules = classification_metrics(label, np.clip(0.3 + 0.3 * (label - 0.3) + rng.normal(0, 0.2, 2000), 0, 1))
    booster = classification_metrics(label, rng.random(2000))
    entry = {
        "method": "heuristic",
        "reason": "the RFM-cell rate did better than LightGBM",
        "held_out": rules,
        "held_out_baseline": rules,
        "held_out_lightgbm": booster,
    }
    html = _propensity_block("churn", entry, "within 30 days")
    assert "LightGBM (not used)" in html and "RFM rules (used)" in html
    shown = re.findall(r'<td class="t">([^<]+)</td><td>([^<]+)</td>', html)
    assert shown == [
        ("LightGBM (not used)", charts.fmt(booster["roc_auc"])),
        ("RFM rules (used)", charts.fmt(rules["roc_auc"])),
    ]
    assert charts.fmt(booster["roc_auc"]) != charts.fmt(rules["roc_auc"])
    assert ">model<" not in html
