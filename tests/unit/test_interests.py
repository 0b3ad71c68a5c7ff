"""Top interests: the embedding cells pruned before the blend change nothing."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models_ml import interests

LEAVES = [f"Top{t} > Leaf{leaf}" for t in range(4) for leaf in range(6)] + ["Solo"]


def _site(seed: int) -> tuple[tuple[np.ndarray, ...], pd.DataFrame]:
    """Coarse vectors and strengths, so that many cells tie before and after rounding."""
    rng = np.random.default_rng(seed)
    items = 240
    categories = np.array([LEAVES[i % len(LEAVES)] for i in range(items)], dtype=object)
    item_vectors = rng.integers(-1, 3, size=(items, 4)).astype(np.float32)
    users = np.array([f"u{i:03d}" for i in range(150)], dtype=object)
    user_vectors = rng.integers(-2, 3, size=(len(users), 4)).astype(np.float32)
    rows = []
    # behaviour for most warm users and for some users without embeddings
    for user in [*users[:130], "cold1", "cold2"]:
        for _ in range(rng.integers(0, 8)):
            leaf = LEAVES[rng.integers(len(LEAVES))]
            dimension = rng.choice(["category", "category_l1", "brand"])
            value = {"category": leaf, "category_l1": leaf.split(" > ")[0], "brand": f"Brand{rng.integers(5)}"}[
                dimension
            ]
            rows.append((user, dimension, value, float(rng.integers(1, 21)) / 20))
    affinities = pd.DataFrame(rows, columns=["user_id", "dimension", "value", "strength"]).drop_duplicates(
        ["user_id", "dimension", "value"]
    )
    return (users, user_vectors, item_vectors, categories), affinities


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("limit", [1, 3, 5])
def test_pruned_embedding_cells_give_the_same_top_interests(seed: int, limit: int) -> None:
    arrays, affinities = _site(seed)
    everything = interests.embedding_strengths(*arrays)
    pruned = interests.embedding_strengths(*arrays, limit=limit, behaviour=affinities)
    assert len(pruned) < len(everything)
    # every cell kept is one of the full table's, with the same strength
    merged = pruned.merge(everything, on=["user_id", "dimension", "value"], suffixes=("", "_all"))
    assert len(merged) == len(pruned)
    assert (merged["strength"] == merged["strength_all"]).all()
    expected = interests.top_interests(affinities, everything, limit)
    got = interests.top_interests(affinities, pruned, limit)
    pd.testing.assert_frame_equal(got, expected)
    assert expected["rank"].max() == limit


def test_users_with_any_positive_cell_keep_one() -> None:
    """A user is blended (behaviour weighted down) only if they have embedding cells: the
    pruning never takes the last one away."""
    arrays, affinities = _site(0)
    everything = interests.embedding_strengths(*arrays)
    pruned = interests.embedding_strengths(*arrays, limit=1, behaviour=affinities.iloc[0:0])
    assert set(pruned["user_id"]) == set(everything["user_id"])
    assert pruned.groupby("user_id").size().min() >= 1
