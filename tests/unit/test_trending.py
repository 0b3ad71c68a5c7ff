"""Trending lists: rising items first, then (in a quiet spell) the most popular others; and
the warning that the newest event is too old."""

from __future__ import annotations

import pandas as pd

from models_ml.pipeline import _trending


def _catalog(rows: list[tuple[str, str, bool, float, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["item_id", "category_l1", "in_stock", "trending_score", "popularity"])


CATALOG = _catalog(
    [
        ("a", "Garden", True, 2.0, 9.0),
        ("b", "Kitchen", True, 0.5, 1.0),
        ("c", "Garden", True, 0.0, 3.0),
        ("d", "Kitchen", True, 0.0, 1.5),
        ("e", "Garden", True, 0.0, 0.0),  # no activity in the baseline window
        ("f", "Garden", False, 5.0, 20.0),  # out of stock
        ("g", "Kitchen", None, 0.0, 8.0),  # stock unknown: not shown
    ]
)


def _lists(frame: pd.DataFrame) -> dict[str, list[str]]:
    return {scope: list(g.sort_values("rank")["item_id"]) for scope, g in frame.groupby("scope")}


def test_enough_trending_items_fill_the_list_alone() -> None:
    lists = _lists(_trending(CATALOG, 2))
    assert lists == {"global": ["a", "b"], "Garden": ["a", "c"], "Kitchen": ["b", "d"]}


def test_a_short_list_goes_on_with_the_most_popular_items_scored_below_every_trending_one() -> None:
    frame = _trending(CATALOG, 10)
    assert _lists(frame) == {"global": ["a", "b", "c", "d"], "Garden": ["a", "c"], "Kitchen": ["b", "d"]}
    scores = frame[frame["scope"] == "global"].sort_values("rank")["score"].tolist()
    assert scores[:2] == [2.0, 0.5] and 0.5 > scores[2] > scores[3] > 0


def test_a_quiet_spell_still_gives_lists_and_no_activity_gives_none() -> None:
    quiet = CATALOG.assign(trending_score=0.0)
    frame = _trending(quiet, 3)
    assert _lists(frame)["global"] == ["a", "c", "d"]
    assert (frame["score"] > 0).all() and frame["rank"].min() == 1
    assert _trending(quiet.assign(popularity=0.0), 3).empty


def test_data_lag_warns_only_past_the_configured_hours() -> None:
    from datetime import datetime, timedelta

    from insights.config import load_config
    from models_ml.data import data_lag_warning

    config = load_config(None, environ={"INSIGHTS__VALIDATION__MAX_DATA_LAG_HOURS": "6"})
    as_of = datetime(2026, 11, 1)
    assert data_lag_warning(config, as_of, None) is None
    assert data_lag_warning(config, as_of, as_of - timedelta(hours=6)) is None
    headline, message = data_lag_warning(config, as_of, as_of - timedelta(hours=60))
    assert headline == "newest event 2.5 days old"
    assert message.startswith("the newest event (2026-10-29 12:00 UTC) is 2.5 days before the as-of instant")
    assert "validation.max_data_lag_hours (6)" in message
