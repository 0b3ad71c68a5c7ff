"""The model-pick cache: what changes a user's fingerprint, when an entry may be reused, and
that it survives the warehouse."""

from __future__ import annotations

from datetime import datetime

import duckdb
import numpy as np
import pandas as pd

from models_ml import picks

AS_OF = datetime(2026, 11, 1, 12)


def _interactions() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2", "u3"],
            "item_id": ["a", "b", "a", "c"],
            "weight": [1.5, 0.25, 3.0, 1.0],
            "events": [2, 1, 3, 1],
            "purchases": [0, 0, 1, 0],
        }
    )


def test_fingerprints_see_new_events_and_purchases_but_not_order_or_decay() -> None:
    base = _interactions()
    users = np.array(["u1", "u2", "u3", "nobody"], dtype=object)
    prints = picks.fingerprints(base, users)
    assert prints[3] == 0 and len(set(prints[:3])) == 3

    shuffled = base.sample(frac=1, random_state=1)
    decayed = base.assign(weight=base["weight"] * 0.97)
    assert (picks.fingerprints(shuffled, users) == prints).all()
    assert (picks.fingerprints(decayed, users) == prints).all()

    more_events = base.copy()
    more_events.loc[1, "events"] = 2  # u1 viewed b again
    bought = base.copy()
    bought.loc[3, "purchases"] = 1  # u3 bought c
    new_item = pd.concat(
        [base, pd.DataFrame([{"user_id": "u2", "item_id": "d", "weight": 1, "events": 1, "purchases": 0}])]
    )
    for changed, user in ((more_events, 0), (bought, 2), (new_item, 1)):
        after = picks.fingerprints(changed, users)
        assert after[user] != prints[user]
        others = [i for i in range(3) if i != user]
        assert (after[others] == prints[others]).all()


def _cache(computed: list[datetime]) -> picks.PickCache:
    users = np.array(["u1", "u2", "u3"], dtype=object)
    return picks.PickCache(
        "k",
        pd.DataFrame(
            {
                "user_id": users,
                "fingerprint": picks.fingerprints(_interactions(), users),
                "computed_as_of": computed,
            }
        ),
        np.arange(6, dtype=np.float32).reshape(3, 2),
        pd.DataFrame(
            {
                "user_id": ["u1", "u1", "u2", "u3"],
                "item_id": ["c", "d", "b", "a"],
                "score": [0.9, 0.5, 0.7, 0.2],
                "reason": ["collaborative", "content", "collaborative", "collaborative"],
                "position": [0, 1, 0, 0],
            }
        ),
    )


def test_an_entry_is_reused_only_while_fresh_and_unchanged() -> None:
    cache = _cache([AS_OF, AS_OF, datetime(2026, 10, 30, 12)])
    users = np.array(["u3", "u2", "u1", "u4"], dtype=object)
    interactions = _interactions()
    interactions.loc[2, "events"] = 4  # u2 has a new event
    prints = picks.fingerprints(interactions, users)

    one_hour_later = datetime(2026, 11, 1, 13)
    # u3 is two days old, u2 changed, u4 is new: only u1 is reused, at its row in the cache.
    assert cache.reusable(users, prints, one_hour_later, 24).tolist() == [-1, -1, 0, -1]
    assert cache.reusable(users, prints, one_hour_later, 72).tolist() == [2, -1, 0, -1]
    assert cache.reusable(users, prints, one_hour_later, 0).tolist() == [-1, -1, -1, -1]
    # An instant before the entries were made never reuses them.
    assert cache.reusable(users, prints, datetime(2026, 11, 1, 11), 24).tolist() == [-1, -1, -1, -1]


def test_the_cache_round_trips_through_the_warehouse_under_its_key() -> None:
    con = duckdb.connect()
    cache = _cache([AS_OF, AS_OF, AS_OF])
    picks.save(con, cache)
    back = picks.load(con, "k", 2)
    assert back.users["user_id"].tolist() == ["u1", "u2", "u3"]
    assert back.users["fingerprint"].to_numpy(dtype=np.uint64).tolist() == cache.users["fingerprint"].tolist()
    assert (pd.to_datetime(back.users["computed_as_of"]) == pd.Timestamp(AS_OF)).all()
    np.testing.assert_array_equal(back.vectors, cache.vectors)
    pd.testing.assert_frame_equal(
        back.picks.sort_values(["user_id", "position"]).reset_index(drop=True),
        cache.picks.sort_values(["user_id", "position"]).reset_index(drop=True),
        check_dtype=False,
    )
    # Another key (new model, catalog change) or another vector size: nothing is reused.
    assert len(picks.load(con, "other", 2).users) == 0
    assert len(picks.load(con, "k", 3).users) == 0
