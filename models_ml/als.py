"""Collaborative embeddings: implicit-feedback ALS (Hu, Koren & Volinsky 2008, "Collaborative
Filtering for Implicit Feedback Datasets") from the ``implicit`` package.

The interaction weights of ``fct_interactions`` (event-type weights with time decay) are the
observations r_ui; ALS's confidence is c_ui = 1 + alpha * r_ui. Factors, regularization and
alpha are chosen by a time split (train on what was known a few days ago, score on what the
users did since), never guessed.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, replace
from itertools import product
from multiprocessing import get_context
from typing import Any

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402
from implicit.cpu.als import AlternatingLeastSquares  # noqa: E402
from scipy import sparse  # noqa: E402

from models_ml.metrics import ranking_metrics_of_lists  # noqa: E402
from models_ml.recommend import top_k_blends  # noqa: E402

log = logging.getLogger(__name__)


# Below this many (user, item) pairs a fit takes less time than starting a worker process.
PROCESSES_MIN_INTERACTIONS = 100_000


def worker_processes(configured: int, matrix: sparse.csr_matrix) -> int:
    """The worker processes to fit on ``matrix`` with: the configured number, or none (1)
    when the matrix is too small for a worker to pay for its start."""
    return configured if matrix.nnz >= PROCESSES_MIN_INTERACTIONS else 1


@dataclass(frozen=True)
class ALSParams:
    factors: int
    regularization: float
    alpha: float
    iterations: int
    # Share of the final score that comes from the user's own history (see recommend.top_k).
    history_weight: float = 0.0


def positions(index: dict[Any, int], values: Any) -> np.ndarray:
    """Each value's position in ``index``, -1 for a value not in it (or missing). Arrow
    looks the values up in one hash table: a Python dict lookup per value cost 0.4 s for
    the 1.2M interactions of the 10M-event site, this 0.05 s."""
    count = len(values)
    if not index or not count:
        return np.full(count, -1, dtype=np.int64)
    keys = pa.array(list(index))
    found = pc.index_in(pa.array(values, type=keys.type, from_pandas=True), value_set=keys)
    where = found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    values_at = np.fromiter(index.values(), dtype=np.int64, count=len(index))
    return np.where(where >= 0, values_at[np.maximum(where, 0)], -1)


def sorted_unique(*columns: Any) -> list[Any]:
    """The distinct non-missing values of the columns, sorted (as ``sorted(set(...))``,
    without a Python object per row: 0.05 s instead of 0.7 s for 1.2M interactions)."""
    distinct: set[Any] = set()
    for column in columns:
        distinct.update(pc.unique(pa.array(column, from_pandas=True)).drop_null().to_pylist())
    return sorted(distinct)


def interaction_matrix(
    user_index: dict[str, int], item_index: dict[str, int], users: Any, items: Any, weights: np.ndarray
) -> sparse.csr_matrix:
    """(users, items) CSR matrix of weights; pairs with an unknown user or item are skipped.
    ``users`` and ``items`` may be pandas columns: Arrow-backed ones are looked up as they
    are (``to_numpy()`` first made a Python string of every id: 0.33 -> 0.18 s for 1.2M)."""
    rows = positions(user_index, users)
    cols = positions(item_index, items)
    ok = (rows >= 0) & (cols >= 0) & (np.asarray(weights, dtype=float) > 0)
    return sparse.csr_matrix(
        (np.asarray(weights, dtype=np.float32)[ok], (rows[ok], cols[ok])),
        shape=(len(user_index), len(item_index)),
        dtype=np.float32,
    )


def fit(
    matrix: sparse.csr_matrix, params: ALSParams, seed: int, model: AlternatingLeastSquares | None = None
) -> AlternatingLeastSquares:
    """ALS on a (users, items) weight matrix. Given the ``model`` of a shorter fit with the
    same parameters and seed, it goes on from there to ``params.iterations`` in all: ALS
    iterations are deterministic, so the result is the one a fit from scratch gives."""
    if model is None:
        model = AlternatingLeastSquares(
            factors=params.factors,
            regularization=params.regularization,
            alpha=params.alpha,
            iterations=params.iterations,
            random_state=seed,
            # One thread: on two, implicit's solver took longer (3.6 s against 2.9 s for 5
            # iterations at 240k users, 32 factors) and kept both cores busy. The result is
            # the same for any number of threads (each row is solved by one).
            num_threads=1,
        )
        model.fit(matrix, show_progress=False)
        model.iterations_done = params.iterations
        return model
    remaining = params.iterations - model.iterations_done
    if remaining > 0:
        model.iterations = remaining
        model.fit(matrix, show_progress=False)
        model.iterations = params.iterations
        model.iterations_done = params.iterations
    return model


def fit_warm(
    matrix: sparse.csr_matrix, params: ALSParams, seed: int, item_factors: np.ndarray, iterations: int
) -> AlternatingLeastSquares:
    """ALS on ``matrix`` from the item vectors of an earlier fit with the same parameters
    (the candidate the time split chose, whose items are ``matrix``'s columns): the users'
    vectors are first solved exactly for them (:func:`fold_in`; implicit's conjugate-gradient
    step would start from whatever they held), then ``iterations`` iterations run.

    The published model is fitted this way: at 10M events, backtested a week and two weeks
    back with the chosen parameters, 5 such iterations scored NDCG@10 0.1168 and 0.1190 on
    the following week against 0.1156 and 0.1187 for 15 from scratch (another seed from
    scratch: 0.1151, 0.1175), in 3.6 s against 9.9 s."""
    model = AlternatingLeastSquares(
        factors=params.factors,
        regularization=params.regularization,
        alpha=params.alpha,
        iterations=iterations,
        random_state=seed,
        num_threads=1,  # as in fit
    )
    model.item_factors = np.array(item_factors, dtype=np.float32, order="C")  # a copy: fit updates it in place
    model.user_factors = fold_in(model.item_factors, params, matrix)
    if iterations and matrix.shape[0]:
        model.fit(matrix, show_progress=False)
    return model


def fit_aside(
    matrix: sparse.csr_matrix,
    params: ALSParams,
    seed: int,
    aside: bool,
    start: np.ndarray | None = None,
    warm_iterations: int = 0,
) -> Future[tuple[AlternatingLeastSquares, float]]:
    """:func:`fit` in a worker process of its own, so the caller can go on meanwhile; the
    future gives the model and the seconds the fit took. The fit is memory-bound on one
    thread: at 10M events it took 10 s in which training otherwise kept one core idle.
    Without ``aside`` it fits here and returns the finished future. With ``start`` (item
    vectors) and ``warm_iterations``, it is :func:`fit_warm` from them instead."""
    if not aside:
        done: Future[tuple[AlternatingLeastSquares, float]] = Future()
        done.set_result(_timed_fit(matrix, params, seed, start, warm_iterations))
        return done
    worker = ProcessPoolExecutor(1, mp_context=get_context("spawn"))
    try:
        return worker.submit(_timed_fit, matrix, params, seed, start, warm_iterations)
    finally:
        worker.shutdown(wait=False)  # the worker ends when the fit is done


def _timed_fit(
    matrix: sparse.csr_matrix, params: ALSParams, seed: int, start: np.ndarray | None, warm_iterations: int
) -> tuple[AlternatingLeastSquares, float]:
    started = time.perf_counter()
    if start is None or warm_iterations <= 0:
        model = fit(matrix, params, seed)
    else:
        model = fit_warm(matrix, params, seed, start, warm_iterations)
    return model, round(time.perf_counter() - started, 2)


def fold_in(item_factors: np.ndarray, params: ALSParams, matrix: sparse.csr_matrix) -> np.ndarray:
    """User vectors for the rows of ``matrix`` given fixed item vectors: the exact ALS user
    step, so users of a later refresh are scored with the published item vectors."""
    model = AlternatingLeastSquares(
        factors=item_factors.shape[1],
        regularization=params.regularization,
        alpha=params.alpha,
        iterations=params.iterations,
    )
    model.item_factors = np.ascontiguousarray(item_factors, dtype=np.float32)
    if matrix.shape[0] == 0:
        return np.zeros((0, item_factors.shape[1]), dtype=np.float32)
    return model.recalculate_user(np.arange(matrix.shape[0]), matrix)


def history_matrix(matrix: sparse.csr_matrix) -> sparse.csr_matrix:
    """Each user's interaction weights scaled to [0, 1] by the user's largest."""
    matrix = sparse.csr_matrix(matrix, dtype=np.float32)
    row_max = matrix.max(axis=1).toarray().ravel()
    scale = sparse.diags(1.0 / np.where(row_max > 0, row_max, 1.0).astype(np.float32))
    return sparse.csr_matrix(scale @ matrix)


def _validation_users(train: sparse.csr_matrix, relevant: dict[int, set[int]]) -> tuple[np.ndarray, sparse.csr_matrix]:
    """The users scored on the time split (something relevant after it, history before it)
    and their relevant items, one row per user, as ``ranking_metrics_of_lists`` wants."""
    has_history = np.diff(sparse.csr_matrix(train).indptr) > 0
    users = np.array(sorted(u for u, items in relevant.items() if items and has_history[u]), dtype=np.int64)
    rows = np.repeat(np.arange(len(users)), [len(relevant[u]) for u in users])
    columns = np.fromiter((i for u in users for i in relevant[u]), dtype=np.int64, count=len(rows))
    truth = sparse.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, columns)), shape=(len(users), train.shape[1])
    )
    return users, truth


def tune(
    train: sparse.csr_matrix,
    relevant: dict[int, set[int]],
    exclude: sparse.csr_matrix,
    grid: list[ALSParams],
    history_weights: list[float],
    seed: int,
    screen_iterations: int | None = None,
    finalists: int | None = None,
    processes: int = 1,
    grow_factors: bool = False,
) -> tuple[ALSParams, list[dict[str, object]], AlternatingLeastSquares]:
    """Fit the candidates on ``train`` and score the next period's items (``relevant``:
    user row -> item columns), each with every history weight; the best NDCG@10 wins (HR@10,
    then fewer factors, break ties). Returns the winner, every candidate's metrics and the
    winner's model (fitted on ``train``: :func:`fit_warm` starts the final fit from it).

    With ``screen_iterations`` and ``finalists`` (successive halving, as in Hyperband), every
    candidate is first fitted only ``screen_iterations`` iterations and scored as the finals
    are, with every history weight; the ``finalists`` best are then trained on to their full
    iterations (exactly the fit from scratch) and only they compete. On 18 candidates at 5
    of 15 iterations that is 8 fits' work instead of 18. (Screening on the ALS score alone
    favoured many factors, which the history blend makes up for: at 10M events it sent
    three 32- and 64-factor candidates to the finals, and the best reached NDCG@10 0.1128;
    screened as scored, three 16-factor ones went and the best reached 0.1160.)

    With ``grow_factors`` (when screening), the factor counts are screened smallest first,
    and a larger count only while the count before it beat the one before that: once a
    count's best screened blend (NDCG@10, then HR@10) is no better than the previous
    count's, the larger counts are not fitted. Their fits are the dearest (a 64-factor
    iteration costs 2.4 times a 16-factor one at 10M events), and more factors that did not
    help at one step rarely help at the next. At 10M events the screen's best was 0.1096 at
    16 factors, 0.1087 at 32 and 0.1061 at 64: the 64-factor candidates could not have
    reached the finals, and the search skips them. A larger count is screened only with the
    regularization and alpha of the ``finalists`` best candidates of the count before it
    (coarse to fine): the settings that lost at fewer factors are not tried with more. At
    10M events the 16-factor screen ranked (0.1, 5), (0.01, 5) and (0.01, 20) first (NDCG@10
    0.1107, 0.1106, 0.1104); at 32 factors (0.01, 20) was the best of all six settings
    (0.1103), so the three fits saved changed nothing.

    With ``processes`` > 1 the fits run in that many worker processes, the next ones while
    the parent scores one (in order, so the result is the same). Threads would not do:
    implicit's fit runs no faster beside another in the same process, while two processes
    each keep their speed (5 iterations, 240k users, 32 factors: 2.8 s alone, 3.0 s each
    two at a time).
    """
    users, truth = _validation_users(train, relevant)
    history = history_matrix(train[users])
    excluded = exclude[users]
    trials: list[dict[str, object]] = []

    def evaluate(
        model: AlternatingLeastSquares, base: ALSParams, stage: str, weights: list[float]
    ) -> tuple[tuple[float, float, int], ALSParams]:
        best_key = None
        blends = top_k_blends(
            model.user_factors[users], model.item_factors, 20, weights, exclude=excluded, history=history
        )
        for weight, (idx, _) in zip(weights, blends):
            params = replace(base, history_weight=weight)
            metrics = ranking_metrics_of_lists(idx, truth, train.shape[1])
            trials.append({"params": params.__dict__, "stage": stage, **metrics})
            key = (metrics["ndcg_at_10"], metrics["hr_at_10"], -params.factors)
            log.info("ALS %s %s: ndcg@10 %.4f hr@10 %.4f", stage, params, metrics["ndcg_at_10"], metrics["hr_at_10"])
            if best_key is None or key > best_key[0]:
                best_key = (key, params)
        assert best_key is not None
        return best_key

    screening = (
        screen_iterations is not None
        and finalists is not None
        and len(grid) > finalists
        and any(screen_iterations < p.iterations for p in grid)
    )
    with ExitStack() as stack:
        pool = None
        if processes > 1:
            # The workers load the matrix from a file: sent as the initializer's argument,
            # it made this process wait for each worker to start and import (0.9 s each).
            folder = stack.enter_context(tempfile.TemporaryDirectory(prefix="insights-als-"))
            sparse.save_npz(os.path.join(folder, "train.npz"), sparse.csr_matrix(train), compressed=False)
            pool = stack.enter_context(
                ProcessPoolExecutor(
                    processes,
                    mp_context=get_context("spawn"),
                    initializer=_start_worker,
                    initargs=(os.path.join(folder, "train.npz"),),
                )
            )

        def fitted(
            jobs: list[tuple[ALSParams, AlternatingLeastSquares | None]],
        ) -> Iterator[AlternatingLeastSquares]:
            """The jobs' fits in order; with workers, the next ones run while one is scored."""
            if pool is None:
                return (fit(train, params, seed, model) for params, model in jobs)
            return pool.map(_fit_in_worker, [p for p, _ in jobs], [seed] * len(jobs), [m for _, m in jobs])

        candidates: list[tuple[ALSParams, AlternatingLeastSquares | None]] = [(base, None) for base in grid]
        if screening:
            screened: list[tuple[tuple[float, float, int], int, ALSParams, AlternatingLeastSquares]] = []
            levels: list[int | None] = sorted({p.factors for p in grid}) if grow_factors else [None]
            previous: tuple[float, float] | None = None
            settings: set[tuple[float, float]] | None = None  # what the next count is screened with
            for level in levels:
                group = [
                    (order, base)
                    for order, base in enumerate(grid)
                    if level is None
                    or (base.factors == level and (settings is None or (base.regularization, base.alpha) in settings))
                ]
                if not group:
                    continue
                shorts = [replace(base, iterations=min(screen_iterations, base.iterations)) for _, base in group]
                ranked: list[tuple[tuple[float, float, int], int, ALSParams]] = []
                for (order, base), short, model in zip(group, shorts, fitted([(short, None) for short in shorts])):
                    key, _ = evaluate(model, short, "screen", history_weights)
                    ranked.append((key, -order, base))
                    screened.append((key, -order, base, model))
                    # Keep only the finalists' models in memory.
                    screened = sorted(screened, key=lambda s: (s[0], s[1]), reverse=True)[:finalists]
                ranked.sort(key=lambda r: (r[0], r[1]), reverse=True)
                level_best = ranked[0][0][:2]  # this count's best screened (NDCG@10, HR@10)
                if level is not None and previous is not None and level_best <= previous:
                    larger = sorted({p.factors for p in grid if p.factors > level})
                    if larger:
                        log.info(
                            "ALS screen: %d factors did no better than fewer (ndcg@10 %.4f); %s factors not fitted",
                            level,
                            level_best[0],
                            ", ".join(map(str, larger)),
                        )
                    break
                previous = level_best
                settings = {(base.regularization, base.alpha) for _, _, base in ranked[:finalists]}
            candidates = [(base, model) for _, _, base, model in screened]
        best: tuple[tuple[float, float, int], ALSParams, AlternatingLeastSquares] | None = None
        for (base, _), model in zip(candidates, fitted(candidates)):
            key, params = evaluate(model, base, "final", history_weights)
            if best is None or key > best[0]:
                best = (key, params, model)
    assert best is not None
    return best[1], trials, best[2]


# The time split's matrix in a worker process of ``tune`` (sent once, when it starts).
_worker_train: sparse.csr_matrix | None = None


def _start_worker(path: str) -> None:
    global _worker_train
    _worker_train = sparse.csr_matrix(sparse.load_npz(path))


def _fit_in_worker(params: ALSParams, seed: int, model: AlternatingLeastSquares | None) -> AlternatingLeastSquares:
    assert _worker_train is not None
    return fit(_worker_train, params, seed, model)


def popularity_baseline(
    train: sparse.csr_matrix, relevant: dict[int, set[int]], exclude: sparse.csr_matrix
) -> dict[str, float]:
    """The same split scored by recommending everyone the items most users interacted with
    (less what they bought): the baseline the ALS model must beat, measured as ``tune`` does."""
    users, truth = _validation_users(train, relevant)
    popularity = np.diff(sparse.csc_matrix(train).indptr)
    ranked = np.lexsort((np.arange(len(popularity)), -popularity))
    excluded = sparse.csr_matrix(exclude[users])
    lists = np.full((len(users), 20), -1, dtype=np.int64)
    for row in range(len(users)):
        skip = excluded.indices[excluded.indptr[row] : excluded.indptr[row + 1]]
        top = ranked[: 20 + len(skip)]
        top = top[~np.isin(top, skip)][:20]
        lists[row, : len(top)] = top
    return ranking_metrics_of_lists(lists, truth, train.shape[1])


def grid(factors: list[int], regularization: list[float], alpha: list[float], iterations: int) -> list[ALSParams]:
    return [ALSParams(f, r, a, iterations) for f, r, a in product(factors, regularization, alpha)]
