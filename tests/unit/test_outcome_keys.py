"""Whose outcome an event in a label window is: its user id's, and the person its cookie was
known to be at the window's start (or the cookie's own), once when both are the same."""

from __future__ import annotations

from datetime import datetime

import duckdb
import pytest

from models_ml import data

START = datetime(2026, 10, 1)
END = datetime(2026, 10, 15)


@pytest.fixture()
def con() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(
        """
        create table main.fct_events (
            event_id varchar, occurred_at timestamp, user_id varchar, anonymous_id varchar,
            event_type varchar, event_name varchar, item_id varchar,
            revenue double, price double, quantity double
        )
        """
    )
    rows = [
        # Before the window: cookie a1 logs in as u1, then as u9 (the latest login wins);
        # cookie a3 as u3; cookie a5 logs in as u5 only after the window starts.
        ("e01", "2026-09-20", "u1", "a1", "page_view", None, None, None, None, None),
        ("e02", "2026-09-25", "u9", "a1", "page_view", None, None, None, None, None),
        ("e03", "2026-09-26", "u3", "a3", "page_view", None, None, None, None, None),
        # In the window:
        # logged in as the cookie's person: once for u9
        ("e10", "2026-10-02", "u9", "a1", "purchase", None, "i1", 30.0, 10.0, 3.0),
        # anonymous, cookie known as u9: for u9
        ("e11", "2026-10-03", None, "a1", "product_view", None, "i2", None, None, None),
        # logged in as u2 on the cookie known as u3: for both
        ("e12", "2026-10-04", "u2", "a3", "add_to_cart", None, "i3", None, 5.0, 1.0),
        # an unknown cookie: for the cookie itself
        ("e13", "2026-10-05", None, "a4", "product_view", None, "i4", None, None, None),
        # a5 logs in during the window: its earlier event stays the cookie's
        ("e14", "2026-10-06", None, "a5", "purchase", None, "i5", None, 4.0, None),
        ("e15", "2026-10-07", "u5", "a5", "page_view", None, None, None, None, None),
        # no id at all: nobody's
        ("e16", "2026-10-08", None, None, "purchase", None, "i6", 99.0, 99.0, 1.0),
        # after the window: not counted
        ("e17", "2026-10-20", "u7", None, "purchase", None, "i7", 1.0, 1.0, 1.0),
    ]
    con.executemany("insert into main.fct_events values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
    con.execute("update main.fct_events set event_name = event_type")
    return con


def test_labels_count_each_event_for_its_user_and_its_cookie_s_person_once(con: duckdb.DuckDBPyConnection) -> None:
    frame = data.labels(con, START, END, "purchase").set_index("user_id").sort_index()
    assert sorted(frame.index) == ["a4", "a5", "u2", "u3", "u5", "u9"]
    assert frame["active"].all()
    converted = frame["converted"].to_dict()
    assert converted == {"a4": False, "a5": True, "u2": False, "u3": False, "u5": False, "u9": True}
    revenue = frame["revenue"].to_dict()
    # u9's purchase counted once (30.0), not once for the user id and once for the cookie;
    # a5's purchase has no revenue, so price x quantity (4.0 x 1).
    assert revenue == {"a4": 0.0, "a5": 4.0, "u2": 0.0, "u3": 0.0, "u5": 0.0, "u9": 30.0}


def test_relevant_items_follow_the_same_keys(con: duckdb.DuckDBPyConnection) -> None:
    pairs = data.relevant_items(con, START, END)
    assert list(map(tuple, pairs[["user_id", "item_id"]].to_numpy())) == [
        ("a4", "i4"),
        ("a5", "i5"),
        ("u2", "i3"),
        ("u3", "i3"),
        ("u9", "i1"),
        ("u9", "i2"),
    ]


def test_outcomes_line_up_with_the_feature_rows_as_a_left_merge_would() -> None:
    """Labels are looked up per feature row: a user without an outcome row did nothing (not
    converted, no revenue, inactive), a null conversion counts as none, and the rows keep
    the features' order and index."""
    import pandas as pd

    from models_ml.pipeline import _outcomes

    feats = pd.DataFrame(
        {"user_id": pd.array(["u3", "u1", "u2", "u4"], dtype="str"), "recency_days": [1.0, 2.0, 3.0, 4.0]},
        index=[10, 11, 12, 13],
    )
    labels = pd.DataFrame(
        {
            "user_id": pd.array(["u1", "u4", "u9", "u3"], dtype="str"),
            "active": [True, True, True, True],
            "converted": pd.array([True, None, True, False], dtype="boolean"),
            "revenue": [12.5, None, 3.0, 0.0],
        }
    )
    merged = feats.merge(labels, on="user_id", how="left").set_axis(feats.index)
    out = _outcomes(feats, labels)
    assert list(out.index) == [10, 11, 12, 13]
    assert out["converted"].tolist() == merged["converted"].fillna(False).astype(float).tolist() == [0, 1, 0, 0]
    assert out["revenue"].tolist() == merged["revenue"].fillna(0.0).astype(float).tolist() == [0.0, 12.5, 0.0, 0.0]
    assert out["inactive"].tolist() == [0.0, 0.0, 1.0, 0.0]
    nothing = _outcomes(feats, labels.iloc[0:0])
    assert nothing["converted"].tolist() == [0.0] * 4 and nothing["inactive"].tolist() == [1.0] * 4
    assert nothing["revenue"].tolist() == [0.0] * 4
