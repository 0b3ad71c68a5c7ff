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
    leaves = pd.DataFrame(scaled, columns=centroids.index)
    leaves["user_id"] = user_ids
    long = leaves.melt(id_vars="user_id", var_name="value", value_name="strength")
    long = long[long["strength"] > 0]
    top = (
        long.assign(value=long["value"].str.split(" > ").str[0])
        .groupby(["user_id", "value"], as_index=False)["strength"]
        .max()
    )
    return pd.concat([long.assign(dimension="subcategory"), top.assign(dimension="category")], ignore_index=True)[
        ["user_id", "dimension", "value", "strength"]
    ]


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
