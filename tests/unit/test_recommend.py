"""Batch top-K, the category cap, and ALS on a checkerboard where the answer is known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from models_ml import als, recommend
from models_ml.metrics import ranking_metrics, ranking_metrics_of_lists
from models_ml.recommend import cap_per_group, similar_items, top_k, top_k_blends


def test_top_k_matches_a_full_sort_and_respects_exclusions() -> None:
    rng = np.random.default_rng(0)
    users, items = rng.normal(size=(300, 8)), rng.normal(size=(120, 8))
    exclude = sparse.random(300, 120, density=0.05, random_state=1, format="csr")
    idx, val = top_k(users, items, 10, exclude=exclude, block_size=64, threads=2)
    scores = (users @ items.T).astype(np.float32)
    scores[exclude.nonzero()] = -np.inf
    expected = np.argsort(-scores, axis=1, kind="stable")[:, :10]
    assert np.array_equal(np.sort(idx, axis=1), np.sort(expected, axis=1))
    assert np.all(np.diff(val, axis=1) <= 0)
    for row in range(300):
        assert not set(idx[row]) & set(exclude[row].indices)


def test_ties_at_the_kth_place_go_to_the_lower_items() -> None:
    # 40 items take the partition path, 20,000 the grouped one; every score ties but item 7's.
    for n_items in (40, 20_000):
        items = np.ones((n_items, 1), dtype=np.float32)
        items[7] = 2.0
        idx, val = top_k(np.ones((3, 1)), items, 5)
        assert idx.tolist() == [[7, 0, 1, 2, 3]] * 3, n_items
        assert val.tolist() == [[2.0, 1.0, 1.0, 1.0, 1.0]] * 3


def test_first_k_per_row_orders_by_value_then_column_in_both_sorts() -> None:
    """The packed-key sort (up to 4,096 rows) and the three-array sort (more rows, or
    columns past 2**20) give a plain sort's answer: larger first, -0.0 equal to 0.0 and
    ties to the lower column, -inf last."""
    rng = np.random.default_rng(3)
    for n_rows, column_base in ((50, 0), (5000, 0), (50, 1 << 20)):
        per_row = 9
        rows = np.repeat(np.arange(n_rows), per_row)
        columns = column_base + np.concatenate([rng.permutation(40)[:per_row] for _ in range(n_rows)])
        values = rng.choice(np.array([-np.inf, -1.5, -0.0, 0.0, 1e-30, 2.0, 3.0], dtype=np.float32), len(rows))
        idx, val = recommend._first_k_per_row(rows, columns, values, n_rows, 4)
        for row in range(0, n_rows, max(1, n_rows // 50)):
            mine = sorted(zip(-values[rows == row], columns[rows == row]))[:4]
            assert idx[row].tolist() == [c for _, c in mine], (n_rows, column_base, row)
            assert val[row].tolist() == [-v for v, _ in mine]


def _blended_directly(users, items, k, exclude, history, weight, block_size=64):
    """The blend read literally, block by block as top_k computes the scores: every score of a
    row scaled by (1 - weight) / (its best score), the history added, the excluded items
    removed, then the k best (recommend._block_top_k)."""
    users = np.ascontiguousarray(users, dtype=np.float32)
    items_t = np.ascontiguousarray(np.asarray(items, dtype=np.float32).T)
    exclude = sparse.csr_matrix(exclude) if exclude is not None else None
    history = sparse.csr_matrix(history, dtype=np.float32)
    history.sum_duplicates()
    parts = []
    for start in range(0, len(users), block_size):
        stop = min(start + block_size, len(users))
        parts.append(
            recommend._block_top_k(
                np.matmul(users[start:stop], items_t),
                min(k, items_t.shape[1]),
                exclude[start:stop] if exclude is not None else None,
                history[start:stop],
                weight,
            )
        )
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def test_history_weight_lifts_items_the_user_came_back_to() -> None:
    users, items = np.array([[1.0, 0.0]]), np.array([[1.0, 0.0], [0.9, 0.0], [0.1, 0.0]])
    history = sparse.csr_matrix(np.array([[0.0, 0.0, 1.0]]))
    plain, _ = top_k(users, items, 3)
    blended, _ = top_k(users, items, 3, history=history, history_weight=0.9)
    assert plain[0].tolist() == [0, 1, 2]
    assert blended[0][0] == 2


def test_one_blend_equals_the_blend_read_literally() -> None:
    rng = np.random.default_rng(9)
    users, items = rng.normal(size=(300, 5)), rng.normal(size=(120, 5))
    exclude = sparse.random(300, 120, density=0.05, random_state=7, format="csr")
    history = sparse.random(300, 120, density=0.1, random_state=8, format="csr", dtype=np.float32)
    for weight in (0.25, 0.75):
        idx, val = top_k(users, items, 9, exclude=exclude, history=history, history_weight=weight)
        one_idx, one_val = _blended_directly(users, items, 9, exclude, history, weight)
        assert np.array_equal(idx, one_idx) and np.array_equal(val, one_val), weight


def test_several_history_weights_at_once_equal_one_at_a_time() -> None:
    rng = np.random.default_rng(5)
    users, items = rng.normal(size=(150, 6)), rng.normal(size=(90, 6))
    exclude = sparse.random(150, 90, density=0.05, random_state=2, format="csr")
    history = sparse.random(150, 90, density=0.1, random_state=3, format="csr", dtype=np.float32)
    weights = [0.0, 0.5, 0.9]
    blends = top_k_blends(users, items, 7, weights, exclude=exclude, block_size=32, threads=2, history=history)
    for weight, (idx, val) in zip(weights, blends):
        one_idx, one_val = _blended_directly(users, items, 7, exclude, history, weight, block_size=32)
        assert np.array_equal(idx, one_idx) and np.array_equal(val, one_val)
    assert not np.array_equal(blends[0][0], blends[2][0])


def test_blends_sharing_one_selection_equal_one_at_a_time_with_ties_and_few_items_left(monkeypatch) -> None:
    """Small integer vectors tie everywhere, and some users have all but a few items
    excluded: the rows where the shared selection cannot be shown exact are recomputed, and
    every blend equals the one computed alone, indices and values."""
    rng = np.random.default_rng(8)
    users = rng.integers(0, 3, size=(200, 3)).astype(np.float32)
    items = rng.integers(0, 3, size=(30, 3)).astype(np.float32)
    exclude = sparse.random(200, 30, density=0.1, random_state=4, format="csr").tolil()
    exclude[:20, :26] = 1.0  # 4 items left for these users, fewer than k
    history = sparse.random(200, 30, density=0.3, random_state=6, format="csr", dtype=np.float32)
    history.data = np.round(history.data * 4) / 4  # ties in the history too
    recomputed = []
    plain = recommend._block_top_k

    def spy(scores, k, exclude, history=None, history_weight=0.0):
        recomputed.append(len(scores))
        return plain(scores, k, exclude, history, history_weight)

    weights = [0.0, 0.25, 0.5, 0.9]
    monkeypatch.setattr(recommend, "_block_top_k", spy)
    blends = top_k_blends(users, items, 7, weights, exclude=exclude.tocsr(), block_size=64, history=history)
    assert recomputed, "no row needed recomputing: the test lost its ties"
    monkeypatch.setattr(recommend, "_block_top_k", plain)
    for weight, (idx, val) in zip(weights, blends):
        one_idx, one_val = _blended_directly(users, items, 7, exclude.tocsr(), history, weight)
        assert np.array_equal(idx, one_idx) and np.array_equal(val, one_val), weight


def test_blends_scale_by_the_best_score_wherever_it_is() -> None:
    """The blend divides by the user's best score over every item: here it is an excluded
    item, a history item, or neither; one user has every item excluded, one no history."""
    rng = np.random.default_rng(11)
    users = rng.standard_normal((40, 4)).astype(np.float32)
    items = rng.standard_normal((50, 4)).astype(np.float32)
    raw = users @ items.T
    top = raw.argmax(axis=1)
    exclude = sparse.lil_matrix((40, 50), dtype=np.float32)
    history = sparse.lil_matrix((40, 50), dtype=np.float32)
    for u in range(2, 40):
        history[u, rng.choice(50, 5, replace=False)] = rng.random(5).astype(np.float32) + 0.1
    exclude[0, :] = 1.0  # nothing left to recommend
    history[1, :] = 0.0  # no history at all
    for u in range(2, 14):
        exclude[u, top[u]] = 1.0  # the best item is excluded
    for u in range(14, 26):
        history[u, top[u]] = 0.5  # the best item is in the history
    exclude, history = exclude.tocsr(), history.tocsr()
    history.eliminate_zeros()
    weights = [0.0, 0.3, 0.8]
    blends = top_k_blends(users, items, 6, weights, exclude=exclude, history=history)
    for weight, (idx, val) in zip(weights, blends):
        one_idx, one_val = _blended_directly(users, items, 6, exclude, history, weight)
        assert np.array_equal(idx, one_idx) and np.array_equal(val, one_val), weight


def test_category_cap_equals_a_row_by_row_count() -> None:
    """Random candidates (some rows cut short by -inf) against the rule read literally:
    walk each row best first, keep a candidate while fewer than ``cap`` of its group are kept."""
    rng = np.random.default_rng(5)
    groups = rng.integers(0, 6, 40)
    idx = np.stack([rng.permutation(40)[:15] for _ in range(300)]).astype(np.int32)
    val = -np.sort(-rng.random((300, 15)).astype(np.float32), axis=1)
    val[::7, 9:] = -np.inf
    for cap, k in ((1, 5), (2, 8), (3, 15), (4, 20)):
        kept, scores = cap_per_group(idx, val, groups, cap=cap, k=k)
        for row in range(300):
            taken: list[int] = []
            for i, v in zip(idx[row], val[row]):
                if np.isfinite(v) and sum(groups[t] == groups[i] for t in taken) < cap and len(taken) < k:
                    taken.append(int(i))
            assert kept[row].tolist() == taken + [-1] * (k - len(taken)), (cap, k, row)
            assert np.isneginf(scores[row, len(taken) :]).all()


def test_category_cap_keeps_the_best_of_each_group() -> None:
    idx = np.array([[0, 1, 2, 3, 4, 5]])
    val = np.array([[6, 5, 4, 3, 2, 1]], dtype=np.float32)
    groups = np.array([0, 0, 0, 1, 1, 2])
    kept, scores = cap_per_group(idx, val, groups, cap=2, k=4)
    assert kept[0].tolist() == [0, 1, 3, 4]
    assert scores[0].tolist() == [6, 5, 3, 2]
    short, _ = cap_per_group(idx, val, groups, cap=1, k=4)
    assert short[0].tolist() == [0, 3, 5, -1]


def test_similar_items_never_returns_the_item_itself() -> None:
    vectors = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    idx, _ = similar_items(vectors, 1)
    assert idx[:, 0].tolist() == [1, 0, 3, 2]


def test_als_on_a_checkerboard_recommends_the_users_own_block() -> None:
    """Users 0-19 like items 0-9, users 20-39 like items 10-19; each user has seen 6 of the
    10 items of their block. The 4 unseen items of their own block must be their top 4."""
    rng = np.random.default_rng(11)
    rows, cols = [], []
    for user in range(40):
        block = 0 if user < 20 else 10
        for item in rng.choice(np.arange(block, block + 10), size=6, replace=False):
            rows.append(user)
            cols.append(int(item))
    matrix = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(40, 20))
    model = als.fit(matrix, als.ALSParams(factors=2, regularization=0.01, alpha=10.0, iterations=20), seed=3)
    idx, _ = top_k(model.user_factors, model.item_factors, 4, exclude=matrix)
    for user in range(40):
        block = range(0, 10) if user < 20 else range(10, 20)
        assert set(idx[user]) == set(block) - set(matrix[user].indices), (user, idx[user])
    folded = als.fold_in(model.item_factors, als.ALSParams(2, 0.01, 10.0, 20), matrix)
    again, _ = top_k(folded, model.item_factors, 4, exclude=matrix)
    assert all(set(again[u]) == set(idx[u]) for u in range(40))


def test_ranking_metrics_on_a_known_answer() -> None:
    recommended = {"a": ["x", "y"], "b": ["z"]}
    relevant = {"a": {"y"}, "b": {"q"}}
    m = ranking_metrics(recommended, relevant, catalog_size=4)
    assert m["hr_at_10"] == 0.5
    assert abs(m["ndcg_at_10"] - 0.5 * (1 / np.log2(3))) < 1e-9
    assert m["recall_at_20"] == 0.5
    assert m["coverage"] == 0.75


def test_ranking_metrics_of_lists_agree_with_a_plain_loop() -> None:
    """Random lists (pads, repeats, items out of range of anyone's truth) and truths (empty
    rows, duplicate entries) scored by the vectorised metrics and by the definitions."""
    rng = np.random.default_rng(5)
    for trial in range(30):
        n_users, n_items, width = int(rng.integers(1, 40)), int(rng.integers(1, 30)), int(rng.integers(1, 25))
        lists = rng.integers(-1, n_items, size=(n_users, width))
        entries = int(rng.integers(0, 3 * n_users))
        truth = sparse.csr_matrix(
            (np.ones(entries), (rng.integers(0, n_users, entries), rng.integers(0, n_items, entries))),
            shape=(n_users, n_items),
        )
        got = ranking_metrics_of_lists(lists, truth, catalog_size=n_items)
        hr, ndcg, recall = [], [], []
        for row in range(n_users):
            relevant = set(truth[row].indices)
            if not relevant:
                continue
            seen: list[int] = []
            for item in lists[row, :20]:
                if item >= 0 and item not in seen:
                    seen.append(int(item))
                else:
                    seen.append(-1)  # a pad or a repeat holds its rank and hits nothing
            hits = [item in relevant for item in seen]
            hr.append(any(hits[:10]))
            dcg = sum(1 / np.log2(rank + 2) for rank, hit in enumerate(hits[:10]) if hit)
            ndcg.append(dcg / sum(1 / np.log2(rank + 2) for rank in range(min(len(relevant), 10))))
            recall.append(sum(hits) / len(relevant))
        shown = {int(i) for i in lists[:, :10].ravel() if i >= 0}
        assert got["users"] == len(hr), trial
        assert got["coverage"] == len(shown) / n_items, trial
        if hr:
            assert got["hr_at_10"] == pytest.approx(np.mean(hr)), trial
            assert got["ndcg_at_10"] == pytest.approx(np.mean(ndcg)), trial
            assert got["recall_at_20"] == pytest.approx(np.mean(recall)), trial


def test_ranking_metrics_of_lists_pads_and_counts_a_repeated_item_once() -> None:
    lists = np.array([[3, 1, 1, -1], [2, -1, -1, -1], [0, 0, 0, 0]])
    truth = sparse.csr_matrix(np.array([[0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]], dtype=np.float32))
    m = ranking_metrics_of_lists(lists, truth, catalog_size=8)
    assert m["users"] == 2 and m["hr_at_10"] == 0.5
    assert abs(m["ndcg_at_10"] - 0.5 * (1 / np.log2(3))) < 1e-12  # the repeat at rank 3 adds nothing
    assert m["recall_at_20"] == 0.5
    assert m["coverage"] == 4 / 8  # items 3, 1, 2 and 0 were shown
    assert m == ranking_metrics({"a": ["3", "1"], "b": ["2"], "c": ["0"]}, {"a": {"1"}, "b": {"3"}}, 8)
