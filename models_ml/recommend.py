"""Batch top-K scoring: every user against every allowed item, fast.

Scores are blocked matrix products (a block of users times all item vectors, float32) with
a partial sort (``argpartition``) per block, so memory stays at one block's score matrix
and no Python loop runs per user. Blocks are spread over threads: BLAS and numpy's
partition release the GIL.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import sparse

NEG_INF = np.float32(-np.inf)


def _set_sparse(scores: np.ndarray, matrix: sparse.csr_matrix, value: np.ndarray | np.float32) -> None:
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    scores[rows, matrix.indices] = value


def _block_top_k(
    user_vectors: np.ndarray,
    item_vectors_t: np.ndarray,
    k: int,
    exclude: sparse.csr_matrix | None,
    history: sparse.csr_matrix | None = None,
    history_weight: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    scores = user_vectors @ item_vectors_t
    if history is not None and history_weight > 0:
        # Blend with the user's own history: scores scaled to the user's best item first.
        best = np.maximum(scores.max(axis=1, keepdims=True), np.float32(1e-6))
        scores *= np.float32(1 - history_weight) / best
        if history.nnz:
            rows = np.repeat(np.arange(history.shape[0]), np.diff(history.indptr))
            scores[rows, history.indices] += np.float32(history_weight) * history.data
    if exclude is not None and exclude.nnz:
        _set_sparse(scores, exclude, NEG_INF)
    n_items = scores.shape[1]
    if k < n_items:
        part = np.argpartition(scores, n_items - k, axis=1)[:, n_items - k :]
    else:
        part = np.broadcast_to(np.arange(n_items), (scores.shape[0], n_items)).copy()
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.argsort(-part_scores, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1), np.take_along_axis(part_scores, order, axis=1)


def top_k(
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    k: int,
    exclude: sparse.csr_matrix | None = None,
    block_size: int = 4096,
    threads: int | None = None,
    history: sparse.csr_matrix | None = None,
    history_weight: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    """The k best items for every user, best first.

    Parameters
    ----------
    user_vectors, item_vectors:
        (users, factors) and (items, factors); scores are their dot products.
    exclude:
        (users, items) sparse matrix; a stored entry removes that item for that user
        (its score becomes -inf and it sorts last).
    history, history_weight:
        (users, items) sparse matrix of the user's own interest in items in [0, 1]. With a
        weight w > 0 a score becomes (1 - w) * score / (user's best score) + w * history:
        people come back to what they looked at, and a recommender should know it.
    Returns item indices and scores, both (users, min(k, items)); excluded or missing
    slots have score -inf.
    """
    user_vectors = np.ascontiguousarray(user_vectors, dtype=np.float32)
    item_vectors_t = np.ascontiguousarray(np.asarray(item_vectors, dtype=np.float32).T)
    n_users = user_vectors.shape[0]
    k = min(k, item_vectors_t.shape[1])
    indices = np.empty((n_users, k), dtype=np.int32)
    scores = np.empty((n_users, k), dtype=np.float32)
    if exclude is not None:
        exclude = sparse.csr_matrix(exclude)
    if history is not None:
        history = sparse.csr_matrix(history, dtype=np.float32)

    def run(start: int) -> None:
        stop = min(start + block_size, n_users)
        block_exclude = exclude[start:stop] if exclude is not None else None
        block_history = history[start:stop] if history is not None else None
        idx, val = _block_top_k(
            user_vectors[start:stop], item_vectors_t, k, block_exclude, block_history, history_weight
        )
        indices[start:stop] = idx
        scores[start:stop] = val

    starts = range(0, n_users, block_size)
    workers = threads or min(len(starts), os.cpu_count() or 1) or 1
    if workers <= 1:
        for start in starts:
            run(start)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(run, starts))
    return indices, scores


def cap_per_group(
    indices: np.ndarray, scores: np.ndarray, item_groups: np.ndarray, cap: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Keep, per row, the best k candidates with at most ``cap`` from any one group.

    ``indices``/``scores`` are candidates sorted best first; ``item_groups`` maps an item
    index to a group id (its category). Rows that run out of candidates are padded with
    index -1 and score -inf.
    """
    n, c = indices.shape
    groups = item_groups[indices]
    earlier = np.tril(np.ones((c, c), dtype=bool), k=-1)
    kept_rows_idx = np.full((n, k), -1, dtype=np.int32)
    kept_rows_scores = np.full((n, k), NEG_INF, dtype=np.float32)
    step = max(1, 2_000_000 // (c * c))
    for start in range(0, n, step):
        g = groups[start : start + step]
        same = (g[:, :, None] == g[:, None, :]) & earlier[None, :, :]
        before = same.sum(axis=2)
        keep = (before < cap) & np.isfinite(scores[start : start + step])
        # Kept candidates first, each side in its original (best-first) order.
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        chosen_keep = np.take_along_axis(keep, order, axis=1)
        idx = np.take_along_axis(indices[start : start + step], order, axis=1)
        val = np.take_along_axis(scores[start : start + step], order, axis=1)
        width = idx.shape[1]
        kept_rows_idx[start : start + step, :width] = np.where(chosen_keep, idx, -1)
        kept_rows_scores[start : start + step, :width] = np.where(chosen_keep, val, NEG_INF)
    return kept_rows_idx, kept_rows_scores


def similar_items(
    item_vectors: np.ndarray, k: int, candidates: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The k most similar items of every item by cosine of their vectors, itself excluded.

    ``candidates`` (item indices, e.g. the in-stock ones) limits what may be returned; the
    result's indices point into it. By default every item is a candidate.
    """
    norms = np.linalg.norm(item_vectors, axis=1, keepdims=True)
    unit = (item_vectors / np.where(norms == 0, 1, norms)).astype(np.float32)
    n = unit.shape[0]
    targets = np.arange(n) if candidates is None else np.asarray(candidates)
    itself = sparse.csr_matrix(
        (np.ones(len(targets), dtype=np.float32), (targets, np.arange(len(targets)))), shape=(n, len(targets))
    )
    return top_k(unit, unit[targets], min(k, max(len(targets) - 1, 0)), exclude=itself)
