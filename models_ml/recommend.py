"""Batch top-K scoring: every user against every allowed item, fast.

Scores are blocked matrix products (a block of users times all item vectors, float32) into
a reused buffer, then a vectorised top-k selection per block (see ``_select_top_k``), so
memory stays at one block's score matrix per thread and no Python loop runs per user. Blocks are spread over threads: BLAS and numpy's
partition release the GIL.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from scipy import sparse

NEG_INF = np.float32(-np.inf)


def _set_sparse(scores: np.ndarray, matrix: sparse.csr_matrix, value: np.ndarray | np.float32) -> None:
    rows = np.repeat(np.arange(matrix.shape[0]), np.diff(matrix.indptr))
    scores[rows, matrix.indices] = value


def _select_top_k(scores: np.ndarray, k: int, chunk: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k largest scores (indices and values, best first, ties by lower index).

    A full partial sort touches every score several times; this reads them twice. Columns
    are dealt into ``m`` strided groups of ``chunk``; the k-th largest group maximum is a
    lower bound of the row's k-th largest score, so only groups whose maximum reaches it
    (about k of them) are gathered and sorted.
    """
    n_rows, n_items = scores.shape
    if k == 0:
        return np.empty((n_rows, 0), dtype=np.int32), np.empty((n_rows, 0), dtype=np.float32)
    m = n_items // chunk
    if m < 4 * k:
        if k < n_items:
            part = np.argpartition(scores, n_items - k, axis=1)[:, n_items - k :]
        else:
            part = np.broadcast_to(np.arange(n_items), (n_rows, n_items)).copy()
        part_scores = np.take_along_axis(scores, part, axis=1)
        order = np.lexsort((part, -part_scores), axis=1)
        return np.take_along_axis(part, order, axis=1), np.take_along_axis(part_scores, order, axis=1)
    body = scores[:, : m * chunk].reshape(n_rows, chunk, m)  # group q holds columns q, q + m, q + 2m...
    group_max = body.max(axis=1)
    bound = np.partition(group_max, m - k, axis=1)[:, m - k]
    rows, groups = np.nonzero(group_max >= bound[:, None])
    values = body[rows, :, groups]
    columns = groups[:, None] + m * np.arange(chunk, dtype=np.int64)[None, :]
    keep = values >= bound[rows][:, None]
    rows = np.broadcast_to(rows[:, None], values.shape)[keep]
    columns, values = columns[keep], values[keep]
    if n_items > m * chunk:  # the few columns past the last full group are all candidates
        tail = scores[:, m * chunk :]
        rows = np.concatenate([rows, np.repeat(np.arange(n_rows), tail.shape[1])])
        columns = np.concatenate([columns, np.tile(np.arange(m * chunk, n_items), n_rows)])
        values = np.concatenate([values, tail.ravel()])
    order = np.lexsort((columns, -values, rows))
    rows, columns, values = rows[order], columns[order], values[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, np.arange(n_rows))[rows]
    first = rank < k
    return columns[first].reshape(n_rows, k).astype(np.int32), values[first].reshape(n_rows, k)


def _block_top_k(
    scores: np.ndarray,
    k: int,
    exclude: sparse.csr_matrix | None,
    history: sparse.csr_matrix | None = None,
    history_weight: float = 0.0,
) -> tuple[np.ndarray, np.ndarray]:
    if history is not None and history_weight > 0:
        # Blend with the user's own history: scores scaled to the user's best item first.
        best = np.maximum(scores.max(axis=1, keepdims=True), np.float32(1e-6))
        scores *= np.float32(1 - history_weight) / best
        if history.nnz:
            rows = np.repeat(np.arange(history.shape[0]), np.diff(history.indptr))
            scores[rows, history.indices] += np.float32(history_weight) * history.data
    if exclude is not None and exclude.nnz:
        _set_sparse(scores, exclude, NEG_INF)
    return _select_top_k(scores, k)


def top_k(
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    k: int,
    exclude: sparse.csr_matrix | None = None,
    block_size: int = 64,
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
    return top_k_blends(user_vectors, item_vectors, k, [history_weight], exclude, block_size, threads, history)[0]


def top_k_blends(
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    k: int,
    history_weights: list[float],
    exclude: sparse.csr_matrix | None = None,
    block_size: int = 64,
    threads: int | None = None,
    history: sparse.csr_matrix | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`top_k` for several history weights at once, one (indices, scores) pair per
    weight: each block's matrix product is computed once and blended per weight (the ALS
    search compares five weights per candidate)."""
    user_vectors = np.ascontiguousarray(user_vectors, dtype=np.float32)
    item_vectors_t = np.ascontiguousarray(np.asarray(item_vectors, dtype=np.float32).T)
    n_users = user_vectors.shape[0]
    k = min(k, item_vectors_t.shape[1])
    results = [
        (np.empty((n_users, k), dtype=np.int32), np.empty((n_users, k), dtype=np.float32)) for _ in history_weights
    ]
    if exclude is not None:
        exclude = sparse.csr_matrix(exclude)
    if history is not None:
        history = sparse.csr_matrix(history, dtype=np.float32)

    # One score buffer per thread, reused block after block: a fresh block-sized array
    # would cost as much in page faults as the matrix product itself. Blending works in
    # place, so with several weights each blends a copy of the product.
    buffers = threading.local()

    def run(start: int) -> None:
        stop = min(start + block_size, n_users)
        if getattr(buffers, "scores", None) is None:
            shape = (min(block_size, n_users), item_vectors_t.shape[1])
            buffers.scores = np.empty(shape, dtype=np.float32)
            buffers.work = np.empty(shape, dtype=np.float32) if len(history_weights) > 1 else None
        block = np.matmul(user_vectors[start:stop], item_vectors_t, out=buffers.scores[: stop - start])
        block_exclude = exclude[start:stop] if exclude is not None else None
        block_history = history[start:stop] if history is not None else None
        for (indices, scores), weight in zip(results, history_weights):
            work = block
            if buffers.work is not None:
                work = buffers.work[: stop - start]
                np.copyto(work, block)
            idx, val = _block_top_k(work, k, block_exclude, block_history, weight)
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
    return results


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
