"""Each user's top interests: categories, subcategories and brands with strengths in [0, 1].

The decayed affinities of the warehouse (``fct_user_affinities``) say what the user did; the
ALS embeddings add what users like them do, so a user with little history still gets a
sensible second interest. A strength is a blend of the two, strongest first.
"""

from __future__ import annotations

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from insights.warehouse import query_frame

# Behaviour is the evidence; the embedding only nudges. A quarter keeps a category the user
# never touched below one they interacted with a few times.
EMBEDDING_SHARE = 0.25
MIN_STRENGTH = 0.05
DIMENSIONS = {"category_l1": "category", "category": "subcategory", "brand": "brand"}


def embedding_strengths(
    user_ids: np.ndarray, user_vectors: np.ndarray, item_vectors: np.ndarray, item_categories: np.ndarray
) -> pd.DataFrame:
    """Per user and category path (leaf and top level): the user's score for the category's
    centroid, scaled so the user's best category is 1 and negative scores are 0."""
    frame = pd.DataFrame(item_vectors)
    centroids = frame.groupby(pd.Series(item_categories, name="category")).mean()
    if len(user_ids) == 0 or len(centroids) == 0:
        return pd.DataFrame(columns=["user_id", "dimension", "value", "strength"])
    scores = np.clip(user_vectors @ centroids.to_numpy(dtype=np.float32).T, 0, None)
    best = scores.max(axis=1, keepdims=True)
    scaled = scores / np.where(best == 0, 1, best)
    leaves = centroids.index.to_numpy(dtype=object)
    # A top-level category's strength is its best leaf's; computed on the (users x
    # categories) matrix, not on the long table (263k users x 200 leaves is 50M rows).
    top_of = np.array([str(c).split(" > ")[0] for c in leaves], dtype=object)
    tops = np.array(list(dict.fromkeys(top_of)), dtype=object)
    top_scores = np.column_stack([scaled[:, top_of == t].max(axis=1) for t in tops])
    return pd.concat([_long(user_ids, scaled, leaves, "subcategory"), _long(user_ids, top_scores, tops, "category")])[
        ["user_id", "dimension", "value", "strength"]
    ].reset_index(drop=True)


def _long(user_ids: np.ndarray, strengths: np.ndarray, names: np.ndarray, dimension: str) -> pd.DataFrame:
    """The positive cells of a (users x names) matrix as (user_id, dimension, value, strength) rows."""
    rows, cols = np.nonzero(strengths > 0)
    return pd.DataFrame(
        {
            "user_id": np.asarray(user_ids)[rows],
            "dimension": dimension,
            "value": names[cols],
            "strength": strengths[rows, cols],
        }
    )


_BLEND_SQL = """
with behaviour as (
    select a.user_id, d.dimension, a.value, a.strength
    from affinities as a
    join dimensions as d on d.source = a.dimension
),
joined as (
    select user_id, dimension, value, b.strength as b, e.strength::double as e
    from behaviour as b
    full outer join embedded as e using (user_id, dimension, value)
),
blended as (
    select user_id, dimension, value,
        case when user_id in (select user_id from embedded)
             then (1 - $share) * coalesce(b, 0.0) + $share * coalesce(e, 0.0)
             else coalesce(b, 0.0) end as strength
    from joined
)
select user_id, dimension, value, strength from blended where strength >= $min
"""

_RANK_SQL = """
select user_id,
    row_number() over (partition by user_id order by strength desc, dimension, value) as rank,
    dimension, value, strength
from combined
qualify rank <= $limit
order by user_id, rank
"""


def top_interests(affinities: pd.DataFrame, embedded: pd.DataFrame | None, limit: int) -> pd.DataFrame:
    """(user_id, rank, dimension, value, strength) rows, strongest first per user.

    A user with embedding strengths gets ``(1 - EMBEDDING_SHARE) * behaviour +
    EMBEDDING_SHARE * embedding`` per interest (either missing counts 0); others keep their
    behaviour strength. Strengths below MIN_STRENGTH are dropped, the rest rounded to 4
    places (numpy's rounding), then ranked with ties broken by dimension and value.
    """
    if embedded is None or not len(embedded):
        embedded = pd.DataFrame(
            {
                "user_id": pd.Series(dtype="string"),
                "dimension": pd.Series(dtype="string"),
                "value": pd.Series(dtype="string"),
                "strength": pd.Series(dtype=float),
            }
        )
    con = duckdb.connect()
    try:
        con.execute("set enable_progress_bar = false")
        con.register("affinities", affinities[["user_id", "dimension", "value", "strength"]])
        con.register("embedded", embedded[["user_id", "dimension", "value", "strength"]])
        con.register("dimensions", pd.DataFrame({"source": list(DIMENSIONS), "dimension": list(DIMENSIONS.values())}))
        combined = con.sql(_BLEND_SQL, params={"share": EMBEDDING_SHARE, "min": MIN_STRENGTH}).to_arrow_table()
        strength = np.round(np.clip(combined.column("strength").to_numpy(), 0, 1), 4)
        con.register("combined", combined.set_column(3, "strength", pa.array(strength, pa.float64())))
        return query_frame(con, _RANK_SQL, {"limit": limit})
    finally:
        con.close()
