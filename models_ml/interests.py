"""Each user's top interests: categories, subcategories and brands with strengths in [0, 1].

The decayed affinities of the warehouse (``fct_user_affinities``) say what the user did; the
ALS embeddings add what users like them do, so a user with little history still gets a
sensible second interest. A strength is a blend of the two, strongest first.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

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


def top_interests(affinities: pd.DataFrame, embedded: pd.DataFrame | None, limit: int) -> pd.DataFrame:
    """(user_id, rank, dimension, value, strength) rows, strongest first per user."""
    behaviour = affinities.assign(dimension=affinities["dimension"].map(DIMENSIONS))
    behaviour = behaviour.dropna(subset=["dimension"])[["user_id", "dimension", "value", "strength"]]
    if embedded is not None and len(embedded):
        both = behaviour.merge(
            embedded, on=["user_id", "dimension", "value"], how="outer", suffixes=("_behaviour", "_embedding")
        )
        has_embedding = both["user_id"].isin(set(embedded["user_id"]))
        b = both["strength_behaviour"].fillna(0.0)
        e = both["strength_embedding"].fillna(0.0)
        both["strength"] = np.where(has_embedding, (1 - EMBEDDING_SHARE) * b + EMBEDDING_SHARE * e, b)
        combined = both[["user_id", "dimension", "value", "strength"]]
    else:
        combined = behaviour
    combined = combined[combined["strength"] >= MIN_STRENGTH].copy()
    combined["strength"] = combined["strength"].clip(0, 1).round(4)
    combined = combined.sort_values(["user_id", "strength", "dimension", "value"], ascending=[True, False, True, True])
    combined["rank"] = combined.groupby("user_id").cumcount() + 1
    return combined[combined["rank"] <= limit][["user_id", "rank", "dimension", "value", "strength"]].reset_index(
        drop=True
    )
