"""Batch top-K for every user: ``models_ml.recommend.top_k`` against implicit's ``recommend``.

Both get the same float32 vectors (random, like a trained ALS model's in shape and scale)
and the same already-liked items to filter, and must return the same lists. Timed in this
process, one after the other; both may use every core (implicit's ``num_threads=0``, our
thread pool with single-threaded OpenBLAS).

    python bench/batch_scoring.py --users 500000 --items 50000 --factors 64
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from scipy import sparse  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _record import record  # noqa: E402

from models_ml.recommend import top_k  # noqa: E402


def liked_items(users: int, items: int, per_user: int, rng: np.random.Generator) -> sparse.csr_matrix:
    """Each user's history: ``per_user`` items on average, popular items more often."""
    counts = rng.poisson(per_user, size=users).clip(1, items)
    rows = np.repeat(np.arange(users, dtype=np.int32), counts)
    popularity = 1.0 / np.arange(1, items + 1) ** 0.8
    cols = rng.choice(items, size=len(rows), p=popularity / popularity.sum()).astype(np.int32)
    matrix = sparse.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(users, items))
    matrix.sum_duplicates()
    return matrix


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=500_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--factors", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--liked", type=int, default=20, help="mean already-liked items per user (filtered)")
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    from implicit.cpu.als import AlternatingLeastSquares

    rng = np.random.default_rng(args.seed)
    user_vectors = (rng.standard_normal((args.users, args.factors)) * 0.1).astype(np.float32)
    item_vectors = (rng.standard_normal((args.items, args.factors)) * 0.1).astype(np.float32)
    liked = liked_items(args.users, args.items, args.liked, rng)

    model = AlternatingLeastSquares(factors=args.factors, num_threads=0)
    model.user_factors = user_vectors
    model.item_factors = item_vectors

    started = time.perf_counter()
    theirs_idx, theirs_scores = model.recommend(np.arange(args.users), liked, N=args.k, filter_already_liked_items=True)
    implicit_s = time.perf_counter() - started

    started = time.perf_counter()
    ours_idx, ours_scores = top_k(user_vectors, item_vectors, args.k, exclude=liked, block_size=args.block_size)
    ours_s = time.perf_counter() - started

    same_rows = np.all(ours_idx == theirs_idx, axis=1)
    # Rows that differ only where two scores tie to float32 rounding are still the same list.
    near = np.all(np.isclose(ours_scores, theirs_scores, rtol=1e-5, atol=1e-6), axis=1)
    same_sets = np.array([set(a) == set(b) for a, b in zip(ours_idx[~same_rows], theirs_idx[~same_rows])])
    result = {
        "users": args.users,
        "items": args.items,
        "factors": args.factors,
        "k": args.k,
        "liked_per_user": round(liked.nnz / args.users, 1),
        "block_size": args.block_size,
        "implicit_recommend_s": round(implicit_s, 2),
        "top_k_s": round(ours_s, 2),
        "speedup": round(implicit_s / ours_s, 2),
        "identical_lists": round(float(same_rows.mean()), 6),
        "same_items_any_order": round(float(same_rows.mean() + same_sets.sum() / args.users), 6),
        "scores_match": round(float(near.mean()), 6),
        "users_per_s": round(args.users / ours_s),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
    record("batch_scoring", result)
    if not near.all():
        raise SystemExit("top_k and implicit disagree on some users' scores")


if __name__ == "__main__":
    main()
