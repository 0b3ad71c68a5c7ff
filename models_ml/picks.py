"""Each warm user's model picks and vector, kept between scoring runs.

Folding a user in and ranking every allowed item for them is most of a scoring run, and an
hourly refresh changes few users' histories. So a run stores, per warm user, the ALS vector
and the model picks it computed, with a fingerprint of the history they came from; the next
run reuses an entry when

- the run's key is the same: model version, the in-stock items with their vectors and
  categories, and the list settings (any change recomputes everyone);
- the user's fingerprint is the same: their items with event and purchase counts, so a new
  event, a late one, a purchase or a stitched identity all change it; and
- the entry is at most ``ml.reuse_picks_hours`` old. The fingerprint leaves out the decayed
  weights on purpose: they shrink every hour for everyone, by the same factor for all of a
  user's items, which barely moves a ranking; the age limit bounds that drift.

Scoring the same instant twice therefore gives the same lists, and ``reuse_picks_hours: 0``
recomputes everyone every run.

A run that reused stored entries stores only what changed: the entries of users it did not
reuse are deleted and its fresh ones inserted, instead of rewriting every entry (1.9M picks
of 190k users at 10M events: the hour's write 3.5-3.7 -> 2.4-2.5 s). The tables then hold
the rows a rewrite gives, in another order; DuckDB reclaims the deleted rows' space when it
checkpoints.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from insights.warehouse import query_frame

_DDL = """
create schema if not exists ml;
create table if not exists ml.pick_cache_key (key varchar);
create table if not exists ml.pick_cache_users (
    user_id varchar, fingerprint ubigint, computed_as_of timestamp, vector blob
);
create table if not exists ml.pick_cache_items (
    user_id varchar, item_id varchar, score double, reason varchar, position integer
);
"""

PICK_COLUMNS = ["user_id", "item_id", "score", "reason", "position"]


def run_key(parts: list[object], arrays: list[np.ndarray]) -> str:
    """What every user's picks depend on besides their own history, as one digest."""
    digest = hashlib.sha256(repr(parts).encode())
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(str((array.dtype, array.shape)).encode())
        digest.update(array.tobytes() if array.dtype != object else "\x1f".join(map(str, array)).encode())
    return digest.hexdigest()


def fingerprints(interactions: pd.DataFrame, users: np.ndarray) -> np.ndarray:
    """One uint64 per user of ``users`` (0 if absent) from their items and event counts.

    ``interactions`` has ``user_id``, ``item_id``, ``events`` and ``purchases``; rows can be
    in any order (the row hashes are summed per user, wrapping)."""
    out = np.zeros(len(users), dtype=np.uint64)
    if len(interactions) == 0 or len(users) == 0:
        return out
    rows = pd.util.hash_pandas_object(interactions[["item_id", "events", "purchases"]], index=False).to_numpy()
    codes, uniques = pd.factorize(interactions["user_id"])
    sums = np.zeros(len(uniques), dtype=np.uint64)
    np.add.at(sums, codes, rows)
    position = pd.Index(uniques).get_indexer(users)
    found = position >= 0
    out[found] = sums[position[found]]
    return out


@dataclass
class PickCache:
    """The entries of one key: per user a fingerprint, the instant computed and the vector;
    and the picks, in ``PICK_COLUMNS``."""

    key: str
    users: pd.DataFrame  # user_id, fingerprint, computed_as_of, plus ``vectors`` row-aligned
    vectors: np.ndarray
    picks: pd.DataFrame
    reused: int = 0  # of a run's cache: how many of its users were taken from the previous one
    # Set by ``load``: the entries are the warehouse's rows under ``key``, as stored.
    stored: bool = False
    # Set together by ``next_run`` on a stored cache: which users' entries are the stored ones
    # (row-aligned with ``users``) and the picks computed for the others, so ``save`` can
    # store only those.
    kept: np.ndarray | None = None
    fresh_picks: pd.DataFrame | None = None

    @classmethod
    def empty(cls, key: str, factors: int) -> PickCache:
        return cls(
            key,
            pd.DataFrame({"user_id": [], "fingerprint": np.array([], dtype=np.uint64), "computed_as_of": []}),
            np.zeros((0, factors), dtype=np.float32),
            pd.DataFrame(columns=PICK_COLUMNS),
        )

    def reusable(self, users: np.ndarray, prints: np.ndarray, as_of: datetime, max_hours: float) -> np.ndarray:
        """Index into this cache's users for each of ``users``, or -1 where it must be recomputed."""
        if max_hours <= 0 or len(self.users) == 0:
            return np.full(len(users), -1, dtype=np.int64)
        position = pd.Index(self.users["user_id"]).get_indexer(users)
        found = position >= 0
        safe = np.where(found, position, 0)
        same = self.users["fingerprint"].to_numpy(dtype=np.uint64)[safe] == prints
        age = np.datetime64(as_of, "us") - self._computed()[safe]
        fresh = (age >= np.timedelta64(0, "us")) & (age <= np.timedelta64(timedelta(hours=max_hours), "us"))
        return np.where(found & same & fresh, position, -1)

    def next_run(
        self,
        users: np.ndarray,
        prints: np.ndarray,
        where: np.ndarray,
        as_of: datetime,
        fresh_vectors: np.ndarray,
        fresh_picks: pd.DataFrame,
    ) -> PickCache:
        """The cache a run leaves: for each of ``users`` the entry at ``where`` (from
        ``reusable``) or, where that is -1, what the run computed (rows in the same order)."""
        kept = where >= 0
        vectors = np.empty((len(users), self.vectors.shape[1]), dtype=np.float32)
        vectors[~kept] = fresh_vectors
        vectors[kept] = self.vectors[where[kept]]
        # Arrow's hash lookup: pandas' isin with a set of 190k ids took 1.8 s at 10M events.
        stored_users = pa.array(self.picks["user_id"])
        keep = pc.is_in(stored_users, value_set=pa.array(users[kept], type=stored_users.type))
        reused = self.picks[keep.to_numpy(zero_copy_only=False)]
        computed = np.full(len(users), np.datetime64(as_of, "us"))
        computed[kept] = self._computed()[where[kept]]
        fresh_only = fresh_picks
        if len(reused):
            # The few fresh rows take the stored rows' types: concatenated with plain Python
            # strings, the 1.9M stored ones were converted (0.6 s).
            fresh_only = fresh_picks.astype(reused.dtypes.to_dict())
            fresh_picks = pd.concat([reused, fresh_only], ignore_index=True)
        return PickCache(
            self.key,
            pd.DataFrame({"user_id": users, "fingerprint": prints, "computed_as_of": computed}),
            vectors,
            fresh_picks,
            reused=int(kept.sum()),
            kept=kept if self.stored else None,
            fresh_picks=fresh_only if self.stored else None,
        )

    def _computed(self) -> np.ndarray:
        return pd.to_datetime(self.users["computed_as_of"]).to_numpy(dtype="datetime64[us]")


def load(con: duckdb.DuckDBPyConnection, key: str, factors: int) -> PickCache:
    """The stored entries if they were made under ``key``, else an empty cache."""
    try:
        stored = con.execute("select key from ml.pick_cache_key").fetchall()
    except duckdb.CatalogException:  # no scoring run has stored any yet
        return PickCache.empty(key, factors)
    if [row[0] for row in stored] != [key]:
        return PickCache.empty(key, factors)
    users = query_frame(
        con, "select user_id, fingerprint, computed_as_of, vector from ml.pick_cache_users order by user_id"
    )
    blobs = users.pop("vector").to_numpy()
    width = factors * np.dtype(np.float32).itemsize
    if len(blobs) and any(len(b) != width for b in blobs):
        return PickCache.empty(key, factors)
    vectors = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), factors)
    picks = query_frame(con, f"select {', '.join(PICK_COLUMNS)} from ml.pick_cache_items")
    return PickCache(key, users, vectors, picks, stored=True)


def save(con: duckdb.DuckDBPyConnection, cache: PickCache) -> None:
    """Store the entries (call inside the scoring run's transaction): only the changed ones
    when the cache was made from the stored entries, else all of them."""
    con.execute(_DDL)
    stored = [row[0] for row in con.execute("select key from ml.pick_cache_key").fetchall()]
    # (The key is read back in case the cache is stored elsewhere than it was loaded from.)
    if cache.kept is not None and cache.kept.any() and stored == [cache.key]:
        kept_ids = cache.users["user_id"].to_numpy()[cache.kept]
        _store(con, cache.users[~cache.kept], cache.vectors[~cache.kept], cache.fresh_picks, kept_ids)
    else:
        con.execute("delete from ml.pick_cache_key")
        con.execute("insert into ml.pick_cache_key values ($key)", {"key": cache.key})
        _store(con, cache.users, cache.vectors, cache.picks, None)


def _store(
    con: duckdb.DuckDBPyConnection,
    users: pd.DataFrame,
    vectors: np.ndarray,
    picks: pd.DataFrame,
    kept: np.ndarray | None,
) -> None:
    """Write the given users' entries and picks: in place of every stored one, or (with
    ``kept``, the ids of the users whose stored entries stay) in place of the others'."""
    users = users[["user_id", "fingerprint", "computed_as_of"]].copy()
    users["vector"] = [row.tobytes() for row in np.ascontiguousarray(vectors, dtype=np.float32)]
    con.register("pick_users_frame", users)
    con.register("pick_items_frame", picks[PICK_COLUMNS])
    if kept is not None:
        con.register("pick_kept_frame", pa.table({"user_id": pa.array(kept, type=pa.string())}))
    # A rewrite makes the tables anew (cheaper than deleting every row); an update deletes
    # the entries not kept and adds the fresh ones.
    into = {
        "ml.pick_cache_users": """select user_id::varchar as user_id, fingerprint::ubigint as fingerprint,
            computed_as_of::timestamp as computed_as_of, vector::blob as vector from pick_users_frame""",
        "ml.pick_cache_items": """select user_id::varchar as user_id, item_id::varchar as item_id,
            score::double as score, reason::varchar as reason, position::integer as position from pick_items_frame""",
    }
    try:
        for table, rows in into.items():
            if kept is None:
                con.execute(f"create or replace table {table} as {rows}")
            else:
                con.execute(f"delete from {table} where user_id not in (select user_id from pick_kept_frame)")
                con.execute(f"insert into {table} {rows}")
    finally:
        con.unregister("pick_users_frame")
        con.unregister("pick_items_frame")
        if kept is not None:
            con.unregister("pick_kept_frame")
