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


def _rows(con: duckdb.DuckDBPyConnection) -> tuple[list[tuple], list[tuple], list[tuple]]:
    return (
        con.execute("select * from ml.pick_cache_key").fetchall(),
        con.execute("select * from ml.pick_cache_users order by user_id").fetchall(),
        con.execute("select * from ml.pick_cache_items order by user_id, position").fetchall(),
    )


def test_a_run_from_stored_entries_stores_only_what_changed_with_a_rewrites_rows() -> None:
    """u1 is reused, u2 changed, u3 is no longer warm, u4 is new: the update deletes u2's and
    u3's entries and adds u2's and u4's, leaving the rows a full rewrite leaves; u1's stored
    rows are not written again."""
    updated, rewritten = duckdb.connect(), duckdb.connect()
    for con in (updated, rewritten):
        picks.save(con, _cache([AS_OF, AS_OF, AS_OF]))
    stored = picks.load(updated, "k", 2)
    assert stored.stored and len(stored.picks) == 4

    users = np.array(["u1", "u2", "u4"], dtype=object)
    interactions = _interactions()
    interactions.loc[2, "events"] = 4  # u2 has a new event
    prints = picks.fingerprints(interactions, users)
    later = datetime(2026, 11, 1, 13)
    where = stored.reusable(users, prints, later, 24)
    assert where.tolist() == [0, -1, -1]
    fresh = pd.DataFrame(
        {
            "user_id": ["u2", "u2", "u4"],
            "item_id": ["c", "a", "b"],
            "score": [0.8, 0.3, 0.6],
            "reason": ["collaborative", "collaborative", "content"],
            "position": [0, 1, 0],
        }
    )
    fresh_vectors = np.array([[10, 11], [12, 13]], dtype=np.float32)
    cache = stored.next_run(users, prints, where, later, fresh_vectors, fresh)
    assert cache.reused == 1 and cache.kept.tolist() == [True, False, False]

    picks.save(updated, cache)
    # The same cache written whole: a cache not made from stored entries.
    whole = picks.PickCache(cache.key, cache.users, cache.vectors, cache.picks)
    picks.save(rewritten, whole)
    assert _rows(updated) == _rows(rewritten)
    key, stored_users, items = _rows(updated)
    assert [u[0] for u in stored_users] == ["u1", "u2", "u4"]
    assert [(i[0], i[1]) for i in items] == [("u1", "c"), ("u1", "d"), ("u2", "c"), ("u2", "a"), ("u4", "b")]
    back = picks.load(updated, "k", 2)
    np.testing.assert_array_equal(back.vectors, [[0, 1], [10, 11], [12, 13]])

    # u1's entry is not written again: what the run holds in memory for it does not matter.
    again = picks.load(updated, "k", 2)
    where = again.reusable(users, prints, later, 24)
    assert where.tolist() == [0, 1, 2]
    nothing_new = again.next_run(users, prints, where, later, np.zeros((0, 2), np.float32), fresh.iloc[0:0])
    nothing_new.picks.loc[nothing_new.picks["user_id"] == "u1", "score"] = -1.0
    picks.save(updated, nothing_new)
    assert _rows(updated) == _rows(rewritten)


def test_a_run_under_another_key_rewrites_every_entry() -> None:
    con = duckdb.connect()
    picks.save(con, _cache([AS_OF, AS_OF, AS_OF]))
    # A new model: nothing stored is reused, and the run's entries replace all of them.
    fresh_start = picks.load(con, "new-key", 2)
    assert not fresh_start.stored and len(fresh_start.users) == 0
    users = np.array(["u9"], dtype=object)
    prints = picks.fingerprints(_interactions(), users)
    where = fresh_start.reusable(users, prints, AS_OF, 24)
    fresh = pd.DataFrame(
        {"user_id": ["u9"], "item_id": ["a"], "score": [0.5], "reason": ["collaborative"], "position": [0]}
    )
    cache = fresh_start.next_run(users, prints, where, AS_OF, np.ones((1, 2), np.float32), fresh)
    assert cache.kept is None
    picks.save(con, cache)
    key, stored_users, items = _rows(con)
    assert key == [("new-key",)]
    assert [u[0] for u in stored_users] == ["u9"] and [i[:2] for i in items] == [("u9", "a")]
