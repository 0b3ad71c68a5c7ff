"""ALS tuning by successive halving: the short fits are continued exactly, and only the
screened finalists compete at full iterations."""

from __future__ import annotations

import os
from dataclasses import replace

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
from scipy import sparse  # noqa: E402

from models_ml import als  # noqa: E402


def _planted(seed: int = 0, users: int = 600, items: int = 120, groups: int = 6):
    """Users who like one group of items: history before the split, more of it after."""
    rng = np.random.default_rng(seed)
    taste = rng.integers(0, groups, users)
    per_group = items // groups
    rows, cols, later = [], [], {}
    for u in range(users):
        liked = rng.choice(per_group, 8, replace=False) + taste[u] * per_group
        rows += [u] * 5
        cols += list(liked[:5])
        later[u] = set(int(i) for i in liked[5:])
    train = sparse.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(users, items))
    return train, later


def test_a_continued_fit_is_the_fit_from_scratch():
    train, _ = _planted()
    params = als.ALSParams(factors=8, regularization=0.1, alpha=5.0, iterations=9)
    whole = als.fit(train, params, seed=3)
    short = als.fit(train, replace(params, iterations=3), seed=3)
    continued = als.fit(train, params, seed=3, model=short)
    np.testing.assert_array_equal(whole.user_factors, continued.user_factors)
    np.testing.assert_array_equal(whole.item_factors, continued.item_factors)


def test_screening_trains_only_the_finalists_to_full_iterations():
    train, later = _planted()
    exclude = sparse.csr_matrix(train.shape, dtype=np.float32)
    grid = als.grid([4, 8], [0.01, 0.1], [1.0, 10.0], iterations=9)
    best, trials, chosen = als.tune(train, later, exclude, grid, [0.0, 0.5], seed=3, screen_iterations=3, finalists=2)
    screen = [t for t in trials if t["stage"] == "screen"]
    final = [t for t in trials if t["stage"] == "final"]
    # Screened as the finals are scored: every candidate with every history weight.
    assert len(screen) == 2 * len(grid) and all(t["params"]["iterations"] == 3 for t in screen)
    assert sorted(t["params"]["history_weight"] for t in screen) == [0.0] * len(grid) + [0.5] * len(grid)
    assert len(final) == 4 and all(t["params"]["iterations"] == 9 for t in final)

    def candidate(t: dict) -> tuple:
        return (t["params"]["factors"], t["params"]["regularization"], t["params"]["alpha"])

    def key(t: dict) -> tuple:
        return (t["ndcg_at_10"], t["hr_at_10"], -t["params"]["factors"])

    # The finalists are the two candidates with the best screened blend, and the winner is
    # the best final.
    best_screen = {c: max(key(t) for t in screen if candidate(t) == c) for c in map(candidate, screen)}
    finalists = set(sorted(best_screen, key=best_screen.__getitem__, reverse=True)[:2])
    assert {candidate(t) for t in final} == finalists
    winner = max(final, key=lambda t: (t["ndcg_at_10"], t["hr_at_10"], -t["params"]["factors"]))
    assert winner["params"] == best.__dict__
    # The winner's own model comes back (the final fit starts from its item vectors): the
    # fit from scratch with its parameters.
    np.testing.assert_array_equal(chosen.item_factors, als.fit(train, best, seed=3).item_factors)
    # The planted tastes are learnable: the winner beats chance (HR@10 of 10 random items
    # among 120, three of them relevant, is about 0.23) by far.
    assert winner["hr_at_10"] > 0.6


def test_worker_processes_give_the_same_search_as_one_process():
    train, later = _planted(seed=1)
    exclude = sparse.csr_matrix(train.shape, dtype=np.float32)
    grid = als.grid([4, 8], [0.1], [1.0, 10.0], iterations=6)
    for screening in ({"screen_iterations": 2, "finalists": 2}, {}):
        alone = als.tune(train, later, exclude, grid, [0.0, 0.5], seed=3, **screening)
        workers = als.tune(train, later, exclude, grid, [0.0, 0.5], seed=3, processes=2, **screening)
        assert workers[:2] == alone[:2]
        np.testing.assert_array_equal(workers[2].item_factors, alone[2].item_factors)
        assert len(alone[1]) == (2 * len(grid) + 2 * 2 if screening else 2 * len(grid))


def test_without_screening_every_candidate_is_trained_fully():
    train, later = _planted()
    exclude = sparse.csr_matrix(train.shape, dtype=np.float32)
    grid = als.grid([4, 8], [0.1], [5.0], iterations=6)
    _, trials, _ = als.tune(train, later, exclude, grid, [0.0, 0.5], seed=3)
    assert len(trials) == 4 and {t["stage"] for t in trials} == {"final"}


def test_validation_users_are_a_fixed_sample_when_there_are_too_many():
    from models_ml.pipeline import sample_users

    relevant = {u: {u % 7} for u in range(5000)}
    first = sample_users(relevant, 1000, seed=3)
    assert len(first) == 1000 and all(relevant[u] == items for u, items in first.items())
    assert first == sample_users(relevant, 1000, seed=3)
    assert first != sample_users(relevant, 1000, seed=4)
    assert sample_users(relevant, 5000, seed=3) is relevant


def test_the_items_turned_to_after_the_split_are_those_of_a_plain_loop():
    import pandas as pd

    from models_ml.pipeline import _relevant_after

    rng = np.random.default_rng(4)
    users = {f"u{i}": i for i in range(300)}
    items = {f"i{i}": i for i in range(50)}
    exclude = sparse.random(300, 50, density=0.1, random_state=5, format="csr", dtype=np.float32)
    exclude.data[:] = 1.0
    # Pairs after the split: some of unknown users or items, some excluded, some repeated.
    later = pd.DataFrame(
        {
            "user_id": [f"u{i}" for i in rng.integers(0, 330, 4000)],
            "item_id": [f"i{i}" for i in rng.integers(0, 55, 4000)],
        }
    )
    expected: dict[int, set[int]] = {}
    for user, item in zip(later["user_id"], later["item_id"]):
        if user in users and item in items:
            expected.setdefault(users[user], set()).add(items[item])
    for user, found in expected.items():
        found.difference_update(exclude[user].indices)
    expected = {u: found for u, found in expected.items() if found}
    assert _relevant_after(later, users, items, exclude) == expected
    assert len(expected) > 200 and any(exclude[u].nnz for u in expected)
    assert _relevant_after(later.iloc[0:0], users, items, exclude) == {}


def test_a_fit_aside_in_its_own_process_equals_one_here():
    train, _ = _planted(seed=2)
    params = als.ALSParams(8, 0.1, 5.0, 6)
    here = als.fit(train, params, seed=3)
    for aside in (True, False):
        model, seconds = als.fit_aside(train, params, 3, aside).result(timeout=120)
        assert seconds >= 0
        np.testing.assert_array_equal(model.user_factors, here.user_factors)
        np.testing.assert_array_equal(model.item_factors, here.item_factors)


def test_a_warm_fit_aside_equals_one_here_and_starts_from_the_given_items():
    train, _ = _planted(seed=2)
    params = als.ALSParams(8, 0.1, 5.0, 6)
    start = als.fit(train, params, seed=4).item_factors
    here = als.fit_warm(train, params, 3, start, 2)
    for aside in (True, False):
        model, _ = als.fit_aside(train, params, 3, aside, start, 2).result(timeout=120)
        np.testing.assert_array_equal(model.user_factors, here.user_factors)
        np.testing.assert_array_equal(model.item_factors, here.item_factors)
    # No iteration: the given items, the users solved exactly for them.
    still = als.fit_warm(train, params, 3, start, 0)
    np.testing.assert_array_equal(still.item_factors, start)
    np.testing.assert_allclose(still.user_factors, als.fold_in(start, params, train), rtol=1e-5, atol=1e-6)
    # Iterations move them; no start (or no warm iterations) is the fit from scratch.
    assert not np.allclose(here.item_factors, start)
    for start_, iterations in ((None, 2), (start, 0)):
        scratch, _ = als.fit_aside(train, params, 3, False, start_, iterations).result()
        np.testing.assert_array_equal(scratch.item_factors, als.fit(train, params, seed=3).item_factors)


def test_a_warm_fit_from_the_earlier_items_learns_the_later_data_as_well_as_one_from_scratch():
    """The final fit: items fitted on the earlier interactions, then a few iterations on all
    of them (more users, more of each user's items). On planted tastes it ranks the held-back
    items as well as the full fit from scratch, and far better than chance."""
    full, later = _planted(seed=5, users=800)
    earlier = sparse.csr_matrix(full[:500])
    params = als.ALSParams(8, 0.1, 5.0, 12)
    start = als.fit(earlier, params, seed=3).item_factors
    warm = als.fit_warm(full, params, 3, start, 3)
    scratch = als.fit(full, params, seed=3)

    def hit_rate(model) -> float:
        scores = model.user_factors @ model.item_factors.T
        scores[full.nonzero()] = -np.inf
        top = np.argsort(-scores, axis=1)[:, :10]
        return float(np.mean([len(set(top[u]) & later[u]) > 0 for u in range(full.shape[0])]))

    assert hit_rate(warm) >= hit_rate(scratch) - 0.02
    assert hit_rate(warm) > 0.6


def test_growing_factors_stops_once_more_factors_do_no_better(monkeypatch):
    """Screened smallest first, a larger factor count is fitted only while the count before
    it beat the one before that. Here fits of 16 factors and more are spoiled (random user
    factors): 8 beats 2, 16 does worse than 8, so 32 is never fitted, and the search is
    otherwise the one over the grid without 32."""
    train, later = _planted()
    exclude = sparse.csr_matrix(train.shape, dtype=np.float32)
    real_fit = als.fit
    fits: list[int] = []

    def spoiled_fit(matrix, params, seed, model=None):
        fits.append(params.factors)
        fitted = real_fit(matrix, params, seed, model)
        if params.factors >= 16:
            rng = np.random.default_rng(params.factors)
            fitted.user_factors = rng.standard_normal(fitted.user_factors.shape).astype(np.float32)
        return fitted

    monkeypatch.setattr(als, "fit", spoiled_fit)
    screening = {"screen_iterations": 2, "finalists": 2}
    grid = als.grid([32, 2, 16, 8], [0.1], [1.0, 10.0], iterations=6)
    best, trials, _ = als.tune(train, later, exclude, grid, [0.0, 0.5], seed=3, grow_factors=True, **screening)
    screen_fits = fits[: 2 * 3]
    assert screen_fits == [2, 2, 8, 8, 16, 16] and 32 not in fits
    assert all(t["params"]["factors"] != 32 for t in trials)

    def best_at(factors: int) -> tuple:
        return max(
            (t["ndcg_at_10"], t["hr_at_10"])
            for t in trials
            if t["stage"] == "screen" and t["params"]["factors"] == factors
        )

    assert best_at(8) > best_at(2) and best_at(16) <= best_at(8)
    without = [p for p in grid if p.factors != 32]
    best_without, trials_without, _ = als.tune(train, later, exclude, without, [0.0, 0.5], seed=3, **screening)
    assert best_without == best and sorted(map(repr, trials_without)) == sorted(map(repr, trials))

    # While more factors keep helping, every count is screened.
    fits.clear()
    monkeypatch.setattr(als, "fit", real_fit)
    _, grown, _ = als.tune(
        train, later, exclude, als.grid([2, 8], [0.1], [1.0], 6), [0.0], 3, 2, finalists=1, grow_factors=True
    )
    assert sorted({t["params"]["factors"] for t in grown if t["stage"] == "screen"}) == [2, 8]


def test_a_larger_factor_count_is_screened_with_the_best_settings_of_the_count_before(monkeypatch):
    """Coarse to fine: with four (regularization, alpha) settings and two finalists, the
    8-factor screen fits only the two settings that screened best at 2 factors."""
    train, later = _planted()
    exclude = sparse.csr_matrix(train.shape, dtype=np.float32)
    real_fit = als.fit
    fits: list[tuple[int, float, float]] = []

    def counted_fit(matrix, params, seed, model=None):
        fits.append((params.factors, params.regularization, params.alpha))
        return real_fit(matrix, params, seed, model)

    monkeypatch.setattr(als, "fit", counted_fit)
    grid = als.grid([2, 8], [0.1], [0.5, 2.0, 10.0, 40.0], iterations=6)
    screening = {"screen_iterations": 2, "finalists": 2}
    _, trials, _ = als.tune(train, later, exclude, grid, [0.0, 0.5], seed=3, grow_factors=True, **screening)

    def screened_at(factors: int) -> dict[tuple[float, float], tuple[float, float]]:
        best: dict[tuple[float, float], tuple[float, float]] = {}
        for t in trials:
            p = t["params"]
            if t["stage"] == "screen" and p["factors"] == factors:
                setting = (p["regularization"], p["alpha"])
                best[setting] = max(best.get(setting, (-1.0, -1.0)), (t["ndcg_at_10"], t["hr_at_10"]))
        return best

    at_2 = screened_at(2)
    assert len(at_2) == 4
    # The two best at 2 factors (ties go to the earlier setting in the grid).
    order = {(p.regularization, p.alpha): i for i, p in enumerate(grid[:4])}
    top = sorted(at_2, key=lambda s: (at_2[s], -order[s]), reverse=True)[:2]
    assert set(screened_at(8)) == set(top)
    assert [f for f in fits[:6] if f[0] == 8] == [(8, *s) for s in sorted(top, key=order.get)]
    # Without growing, every setting is screened at every count.
    fits.clear()
    _, whole, _ = als.tune(train, later, exclude, grid, [0.0, 0.5], seed=3, **screening)
    assert len({(t["params"]["factors"], t["params"]["alpha"]) for t in whole if t["stage"] == "screen"}) == 8


def test_matrix_positions_are_the_dict_lookups_of_every_id():
    rng = np.random.default_rng(3)
    known = [f"u{i}" for i in rng.permutation(500)]
    # Any positions, not only 0..n-1 in order, as a caller's dict may hold.
    index = {name: int(p) for name, p in zip(known, rng.permutation(1000)[:500])}
    asked = np.array(
        [*rng.choice(known, 2000), "stranger", None, float("nan"), "", "U1", "u1 "],
        dtype=object,
    )
    expected = np.array([index.get(v, -1) if isinstance(v, str) else -1 for v in asked])
    assert np.array_equal(als.positions(index, asked), expected)
    assert np.array_equal(als.positions({}, asked), np.full(len(asked), -1))
    assert als.sorted_unique(asked[:2000], np.array(["zz", None, "a"], dtype=object)) == sorted(
        set(asked[:2000]) | {"zz", "a"}
    )

    users, items = np.array(["b", "a", "b", "c"], dtype=object), np.array(["x", "y", "y", "x"], dtype=object)
    matrix = als.interaction_matrix({"a": 0, "b": 1}, {"x": 0, "y": 1}, users, items, np.array([1.0, 2.0, 0.0, 4.0]))
    # c is unknown and the zero weight is no interaction.
    assert matrix.toarray().tolist() == [[0.0, 2.0], [1.0, 0.0]]
