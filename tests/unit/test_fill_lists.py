"""The list fill (models_ml.pipeline._FILL_SQL): users who share their lists get the lists
they would get one by one."""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pytest

from insights.warehouse import query_frame
from models_ml.pipeline import _FILL_SQL

TOPS = ["Beauty", "Home", "Outdoor", "Sports"]
PROFILES = [
    [],
    ["Beauty"],
    ["Home"],
    ["Beauty", "Home"],
    ["Home", "Beauty"],
    ["Outdoor", "Sports"],
    ["Beauty", "Sports"],
]


def _inputs(seed: int) -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    items = pd.DataFrame({"item_id": [f"i{n:03d}" for n in range(80)]})
    items["category"] = [f"{TOPS[n % 4]} > leaf{n % 7}" for n in range(80)]
    trending = [("global", r + 1, f"i{n:03d}", 50.0 - r) for r, n in enumerate(rng.permutation(80)[:20])]
    for top in TOPS:
        ids = [n for n in rng.permutation(80) if TOPS[n % 4] == top][:5]
        trending += [(top, r + 1, f"i{n:03d}", 30.0 - r) for r, n in enumerate(ids)]
    users = [f"u{n:03d}" for n in range(160)]
    recs, bought, categories = [], [], []
    for n, user in enumerate(users):
        kind = n % 8
        picks = {0: 10, 1: 4}.get(kind, 0)  # full lists, short ones, and cold users (most)
        for position, item in enumerate(rng.choice(80, picks, replace=False)):
            recs.append((user, f"i{item:03d}", float(rng.random()), "collaborative", position))
        if kind in (1, 2) or rng.random() < 0.05:
            bought += [(user, f"i{item:03d}") for item in rng.choice(80, int(rng.integers(1, 4)), replace=False)]
        # Cold users fall in few sets of top categories (the same ones in another order, one
        # of them alone, none at all).
        for rank, top in enumerate(PROFILES[n % len(PROFILES)], start=1):
            categories.append((user, top, rank))
    return {
        "model_recs": pd.DataFrame(recs, columns=["user_id", "item_id", "score", "reason", "position"]),
        "trending": pd.DataFrame(trending, columns=["scope", "rank", "item_id", "score"]),
        "users": pd.DataFrame({"user_id": users}),
        "user_categories": pd.DataFrame(categories, columns=["user_id", "value", "rank"]),
        "catalog": items.iloc[:75],  # a few items out of stock
        "bought": pd.DataFrame(bought, columns=["user_id", "item_id"]),
    }


def _fill(frames: dict[str, pd.DataFrame], share: bool, sql: str = _FILL_SQL) -> pd.DataFrame:
    con = duckdb.connect()
    try:
        for name, frame in frames.items():
            con.register(name, frame)
        return query_frame(con, sql, {"cap": 3, "k": 10, "share": share})
    finally:
        con.close()


@pytest.mark.parametrize("seed", range(6))
def test_shared_lists_equal_lists_made_one_by_one(seed: int) -> None:
    frames = _inputs(seed)
    shared, alone = _fill(frames, share=True), _fill(frames, share=False)
    pd.testing.assert_frame_equal(shared, alone)
    assert set(shared["user_id"]) == set(frames["users"]["user_id"])
    assert shared.groupby("user_id").size().max() == 10
    # Sharing happened: many cold users without purchases, few sets of categories.
    plain = set(frames["users"]["user_id"]) - set(frames["model_recs"]["user_id"]) - set(frames["bought"]["user_id"])
    assert len(plain) > 60
    lists = shared[shared["user_id"].isin(plain)].groupby("user_id")["item_id"].agg(tuple)
    assert lists.nunique() <= 7


def test_a_cold_users_purchase_stays_off_their_list() -> None:
    frames = _inputs(0)
    cold = frames["users"]["user_id"][2]  # kind 2: no picks, bought something
    bought = set(frames["bought"]["item_id"][frames["bought"]["user_id"] == cold])
    assert bought
    recs = _fill(frames, share=True)
    assert not bought & set(recs["item_id"][recs["user_id"] == cold])
