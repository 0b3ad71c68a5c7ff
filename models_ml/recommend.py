"""Batch top-K scoring: every user against every allowed item, fast.

Scores are blocked matrix products (a block of users times all item vectors, float32) into
a reused buffer, then a vectorised top-k selection per block (see ``_select_top_k``), so
memory stays at one block's score matrix per thread and no Python loop runs per user. Blocks are spread over threads: BLAS and numpy's
partition release the GIL.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
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
        # Every score reaching the row's k-th largest is a candidate, so that ties at the
        # k-th place go to the lower columns here too (a partition would pick any of them).
        if k < n_items:
            kth = np.partition(scores, n_items - k, axis=1)[:, n_items - k]
            rows, columns = np.nonzero(scores >= kth[:, None])
        else:
            rows, columns = np.divmod(np.arange(n_rows * n_items), n_items)
        return _first_k_per_row(rows, columns, scores[rows, columns], n_rows, k)
    body = scores[:, : m * chunk].reshape(n_rows, chunk, m)  # group q holds columns q, q + m, q + 2m...
    group_max = body.max(axis=1)
    bound = np.partition(group_max, m - k, axis=1)[:, m - k]
    rows, groups = np.nonzero(group_max >= bound[:, None])
    values = body[rows, :, groups]
    candidate, offset = np.nonzero(values >= bound[rows][:, None])
    rows, columns, values = rows[candidate], groups[candidate] + m * offset, values[candidate, offset]
    if n_items > m * chunk:  # the few columns past the last full group are all candidates
        tail = scores[:, m * chunk :]
        rows = np.concatenate([rows, np.repeat(np.arange(n_rows), tail.shape[1])])
        columns = np.concatenate([columns, np.tile(np.arange(m * chunk, n_items), n_rows)])
        values = np.concatenate([values, tail.ravel()])
    return _first_k_per_row(rows, columns, values, n_rows, k)


def _first_k_per_row(
    rows: np.ndarray, columns: np.ndarray, values: np.ndarray, n_rows: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k best of each row's candidates (best first, ties by lower column); every row
    must have at least k.

    A block's candidates fit in one 64-bit key each (row, then the value's bits mapped so
    that larger sorts first, then column), and one sort of the keys is about three times
    faster than sorting on the three arrays; larger inputs take the three-array sort."""
    if n_rows > 1 << 12 or (len(columns) and int(columns.max()) >= 1 << 20):
        order = np.lexsort((columns, -values, rows))
        rows, columns, values = rows[order], columns[order], values[order]
    else:
        # Bits of -value as an unsigned integer in float order: flip every bit of a negative,
        # only the sign bit of a positive. Adding 0.0 makes -0.0 equal to 0.0, as it compares.
        bits = (-(values.astype(np.float32) + np.float32(0.0))).view(np.uint32).astype(np.uint64)
        ordered = np.where(bits >> 31 == 1, bits ^ 0xFFFFFFFF, bits | 0x80000000)
        keys = (rows.astype(np.uint64) << 52) | (ordered << 20) | columns.astype(np.uint64)
        keys.sort()
        rows, columns, ordered = (keys >> 52).astype(np.int64), keys & 0xFFFFF, (keys >> 20) & 0xFFFFFFFF
        bits = np.where(ordered >> 31 == 1, ordered ^ 0x80000000, ordered ^ 0xFFFFFFFF).astype(np.uint32)
        values = -bits.view(np.float32)
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


# Candidates kept per row beyond k when blending, so that a blend can be shown to need none
# further (see _block_blends).
BLEND_MARGIN = 4


def _row_max_into(best: np.ndarray, indptr: np.ndarray, values: np.ndarray) -> None:
    """Raise ``best[r]`` to the largest of row r's ``values`` (laid out as a CSR matrix's
    data, by ``indptr``); rows without values keep theirs."""
    filled = np.flatnonzero(np.diff(indptr) > 0)
    if len(filled):
        best[filled] = np.maximum(best[filled], np.maximum.reduceat(values, indptr[:-1][filled]))


def _block_blends(
    scores: np.ndarray,
    k: int,
    history_weights: list[float],
    exclude: sparse.csr_matrix | None,
    history: sparse.csr_matrix,
    raw_scores: Callable[[], np.ndarray],
) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`_block_top_k` for each history weight, from one selection over the block.

    A blend scales every score of a row by the same positive factor and adds to the
    history items only, so apart from the history items a row keeps its order: the k best
    of a blend are among the row's best items outside its history (selected once, with a
    margin) and its history items. That holds exactly, ties included, when the last
    candidate of the margin scores strictly below the k-th pick; a row where it does not
    (a float tie, or fewer than k items left) is recomputed from ``raw_scores`` as
    :func:`_block_top_k` does. Values are those of :func:`_block_top_k`, bit for bit: the
    same float32 operations in the same order. ``scores`` is overwritten.
    """
    n_rows, n_items = scores.shape
    rows = np.repeat(np.arange(n_rows), np.diff(history.indptr))
    seen = scores[rows, history.indices]
    excluded_seen = np.zeros(len(rows), dtype=bool)
    # Each row's best score (the blend's scale) is the best of its history items, of its
    # excluded items and of the rest (the first candidate): read from what is gathered
    # anyway, not from another pass over the block.
    best = np.full(n_rows, NEG_INF, dtype=np.float32)
    _row_max_into(best, history.indptr, seen)
    if exclude is not None and exclude.nnz:
        excluded_rows = np.repeat(np.arange(n_rows), np.diff(exclude.indptr))
        _row_max_into(best, exclude.indptr, scores[excluded_rows, exclude.indices])
        scores[excluded_rows, exclude.indices] = NEG_INF
        excluded_seen = np.isneginf(scores[rows, history.indices])
    scores[rows, history.indices] = NEG_INF
    wide = min(k + BLEND_MARGIN, n_items)
    cand_idx, cand_val = _select_top_k(scores, wide)
    if wide:
        np.maximum(best, cand_val[:, 0], out=best)
    best = np.maximum(best, np.float32(1e-6))
    cand_rows = np.repeat(np.arange(n_rows), wide)
    all_rows = np.concatenate([cand_rows, rows])
    all_columns = np.concatenate([cand_idx.ravel(), history.indices])
    results = []
    for weight in history_weights:
        if weight > 0:
            factor = np.float32(1 - weight) / best
            values = cand_val * factor[:, None]
            seen_values = seen * factor[rows] + np.float32(weight) * history.data
        else:
            values, seen_values = cand_val, seen.copy()
        seen_values[excluded_seen] = NEG_INF
        idx, val = _first_k_per_row(all_rows, all_columns, np.concatenate([values.ravel(), seen_values]), n_rows, k)
        exact = np.isfinite(val[:, -1]) & ((wide == n_items) | (values[:, -1] < val[:, -1]))
        if not exact.all():
            redo = np.flatnonzero(~exact)
            idx[redo], val[redo] = _block_top_k(
                raw_scores()[redo], k, exclude[redo] if exclude is not None else None, history[redo], weight
            )
        results.append((idx, val))
    return results


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
    weight: each block's matrix product is computed once, and so is the selection of its
    best items outside the users' history, which every weight then blends with the history
    items (:func:`_block_blends`; the ALS search compares five weights per candidate)."""
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
        history.sum_duplicates()
    # Blends select from the raw scores once, for every weight (_block_blends): one blend
    # too, as it then skips scaling the whole block (the 10M site's scoring, 263k users of
    # 100 candidates: 9.0 -> 7.9 CPU-s). Without a positive weight and a history to blend,
    # every weight gives the plain top k.
    shared = history is not None and any(weight > 0 for weight in history_weights)

    # One score buffer per thread, reused block after block: a fresh block-sized array
    # would cost as much in page faults as the matrix product itself.
    buffers = threading.local()

    def run(start: int) -> None:
        stop = min(start + block_size, n_users)
        if getattr(buffers, "scores", None) is None:
            buffers.scores = np.empty((min(block_size, n_users), item_vectors_t.shape[1]), dtype=np.float32)
        block = np.matmul(user_vectors[start:stop], item_vectors_t, out=buffers.scores[: stop - start])
        block_exclude = exclude[start:stop] if exclude is not None else None
        block_history = history[start:stop] if history is not None else None
        if shared:
            assert block_history is not None
            picks = _block_blends(
                block,
                k,
                history_weights,
                block_exclude,
                block_history,
                lambda: np.matmul(user_vectors[start:stop], item_vectors_t),
            )
        else:
            picks = [_block_top_k(block, k, block_exclude, block_history, history_weights[0])] * len(history_weights)
        for (indices, scores), (idx, val) in zip(results, picks):
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
    kept_rows_idx = np.full((n, k), -1, dtype=np.int32)
    kept_rows_scores = np.full((n, k), NEG_INF, dtype=np.float32)
    position = np.arange(c)
    step = max(1, 4_000_000 // max(c, 1))
    for start in range(0, n, step):
        # How many earlier candidates of its row share each candidate's group: sorted by
        # (group, position), a candidate's rank within its group's run. (Comparing every
        # pair of a row's candidates took 3.7 s for 263k users of 100 candidates; this 1 s.)
        keys = item_groups[indices[start : start + step]].astype(np.int64) * c + position
        keys.sort(axis=1)
        first = np.ones(keys.shape, dtype=bool)
        first[:, 1:] = keys[:, 1:] // c != keys[:, :-1] // c
        run_start = np.maximum.accumulate(np.where(first, position, 0), axis=1)
        before = np.empty(keys.shape, dtype=np.int64)
        np.put_along_axis(before, keys % c, position - run_start, axis=1)
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
